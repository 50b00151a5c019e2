"""The openai provider's small mapping helpers: numbers from the upstream must be safe to send."""

import httpx2
import pytest

from streamchat.providers.openai_compatible import _retry_after, _usage


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({}, None),
    ],
)
def test_retry_after_reads_only_finite_seconds(headers, seconds):
    assert _retry_after(httpx2.Response(429, headers=headers)) == seconds


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (
            {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8, "extra": 1},
            {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        ),
        ({"prompt_tokens": 3, "completion_tokens": float("inf"), "total_tokens": 8}, None),
        ({"prompt_tokens": 3, "completion_tokens": 5}, None),
        ({"prompt_tokens": True, "completion_tokens": 5, "total_tokens": 8}, None),
        ([3, 5, 8], None),
    ],
)
def test_usage_keeps_only_integer_counts(usage, expected):
    assert _usage(usage) == expected
