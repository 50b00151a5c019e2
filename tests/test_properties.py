"""Property tests (hypothesis): the request validator never errs, and SSE survives any byte split.

- The validator: any JSON value as a body is either a ChatRequest or an ApiError with a 4xx, never
  another exception; over HTTP, any body is answered 2xx or 4xx, never 5xx.
- SSE round trips: any text, encoded as our frames and cut into two pieces at every position, is read
  back by httpx-sse (not our parser) as exactly the events that were written.
"""

from __future__ import annotations

import json

import httpx
import pytest
from helpers import FAST_DEMO, iter_events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import create_app
from streamchat.api_errors import ApiError
from streamchat.chat_request import ChatRequest, parse_chat_request
from streamchat.config import Settings
from streamchat.sse import HEARTBEAT, encode_event, encode_retry, encode_token

# Every code point, lone surrogates included (JSON can carry them; UTF-8 cannot).
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", 1]), "content": ANY_TEXT | st.integers()}
)
# Bodies near the schema, so that the deeper checks are reached too, and anything at all.
CHAT_BODIES = (
    st.fixed_dictionaries(
        {"messages": st.lists(MESSAGE, max_size=4)},
        optional={
            "model": st.sampled_from(["demo", "other"]) | JSON_VALUES,
            "max_tokens": st.integers(-5, 5000) | JSON_VALUES,
            "temperature": st.floats(-1, 3, allow_nan=False) | JSON_VALUES,
        },
    )
    | JSON_VALUES
)
SETTINGS = Settings.from_env({}).with_overrides(max_messages=3, max_message_chars=30)


@given(body=CHAT_BODIES)
@settings(max_examples=300, deadline=None)
def test_validator_answers_a_request_or_a_4xx_never_anything_else(body):
    try:
        parsed = parse_chat_request(body, SETTINGS)
    except ApiError as err:
        assert 400 <= err.status < 500
        assert err.body()["error"]["code"]
        return
    assert isinstance(parsed, ChatRequest)
    assert parsed.messages[-1]["role"] == "user"
    assert 1 <= parsed.max_tokens <= SETTINGS.max_tokens_limit


@pytest.fixture(scope="module")
def client():
    """A test client of the app with the fast demo model, limits off."""
    return create_app(FAST_DEMO).test_client()


@given(raw=st.binary(max_size=200) | CHAT_BODIES.map(lambda body: json.dumps(body).encode()))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_http_any_body_is_answered_2xx_or_4xx(client, raw):
    response = client.post("/runs", data=raw, content_type="application/json")
    assert response.status_code in (201, 400, 413), response.get_data()
    if response.status_code != 201:
        assert response.get_json()["error"]["code"]


def read_split(frames: bytes, cut: int) -> list[dict]:
    """Parse ``frames`` with httpx-sse, delivered in two pieces cut at ``cut``."""
    response = httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=iter([frames[:cut], frames[cut:]])
    )
    return list(iter_events(response))


@given(texts=st.lists(ANY_TEXT, min_size=1, max_size=3))
@settings(max_examples=60, deadline=None)
def test_sse_any_text_round_trips_through_httpx_sse_at_every_split(texts):
    frames = encode_retry(3000) + encode_event("start", {"run": "r", "model": "m"}, 1)
    expected = [{"id": 1, "event": "start", "data": {"run": "r", "model": "m"}}]
    for index, text in enumerate(texts, start=2):
        frames += encode_token(text, 1, index) + HEARTBEAT
        expected.append({"id": index, "event": "token", "data": {"text": text, "tokens": 1}})
    frames += encode_event("done", {"finish_reason": "stop"}, len(texts) + 2)
    expected.append({"id": len(texts) + 2, "event": "done", "data": {"finish_reason": "stop"}})
    for cut in range(len(frames) + 1):
        assert read_split(frames, cut) == expected, cut


@given(text=ANY_TEXT, event_id=st.integers(0, 10**12))
@settings(max_examples=100, deadline=None)
def test_sse_token_encoder_and_event_encoder_agree(text, event_id):
    assert encode_token(text, 3, event_id) == encode_event("token", {"text": text, "tokens": 3}, event_id)
