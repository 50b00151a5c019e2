"""Shared pytest fixtures: servers on 127.0.0.1 that tests talk to over real sockets.

Each fixture starts what it needs and always stops it, so no process outlives the test run.
"""

from collections.abc import Iterator

import pytest

from streamchat.fake_upstream import FakeUpstreamProcess

# --- fake upstream (streamchat/fake_upstream.py) --------------------------------------------------------
# One fake OpenAI-compatible server for the whole session, fast by default (8 tokens at 500 per second,
# no wait for the first). Tests that need more put a "[fake ...]" directive in the last user message,
# with a tag of their own so that they find their request in `fake_upstream.requests(tag)`.


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstreamProcess]:
    """Run the fake OpenAI-compatible upstream in a child process for the whole session."""
    with FakeUpstreamProcess(
        "--tokens", "8", "--tokens-per-second", "500", "--first-token-seconds", "0"
    ) as up:
        yield up
