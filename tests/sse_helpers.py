"""Helpers shared by tests: parse SSE bodies with a third-party parser, not our own."""

import json
from collections.abc import Iterator

import httpx
from httpx_sse import EventSource


def parse_sse(body: bytes) -> list[dict]:
    """Parse a whole SSE body with httpx-sse; return [{"id", "event", "data"}] with data decoded."""
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)
    return list(iter_events(response))


def iter_events(response: httpx.Response) -> Iterator[dict]:
    """Yield {"id", "event", "data"} from an httpx response (streaming or not) as events arrive."""
    for sse in EventSource(response).iter_sse():
        # httpx-sse also yields the bare `retry:` block, which the spec does not dispatch.
        if sse.data:
            yield {"id": int(sse.id), "event": sse.event, "data": json.loads(sse.data)}


def answer_text(events: list[dict]) -> str:
    """Join the text of the token events."""
    return "".join(e["data"]["text"] for e in events if e["event"] == "token")


def user(content: str) -> dict:
    """A one-message conversation body."""
    return {"messages": [{"role": "user", "content": content}]}
