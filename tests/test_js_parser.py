"""Run the page's JavaScript tests (tests/js/) from pytest, and hold protocol.js to protocol.py.

The browser page parses the stream with static/js/sse-parser.js, reads it with the two readers and
renders answers with markdown.js; their tests use Node's built-in runner, so `pytest` alone covers
both sides of the wire. Node is needed: without it the test is skipped locally and fails in CI (when
`CI` is set).

Try it:  node --test tests/js/
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import require

REPO_ROOT = Path(__file__).resolve().parent.parent
# Every *.test.mjs file, named one by one (Node versions differ in how they expand a directory).
NODE_SUITE = sorted(p.relative_to(REPO_ROOT) for p in (REPO_ROOT / "tests" / "js").glob("*.test.mjs"))

# A suite that runs nothing must not pass: the files hold far more tests than this.
MIN_PASSED = 100


def _summary_count(output: str, name: str) -> int:
    """Return N from the TAP summary line `# name N`, failing if it is missing."""
    match = re.search(rf"^# {name} (\d+)$", output, re.MULTILINE)
    if match is None:
        pytest.fail(f"no '# {name} N' summary line in node's output:\n{output}")
    return int(match.group(1))


def test_js_parser_node_suite_passes() -> None:
    """Run the node:test suites of the page's JavaScript and require them to pass in full."""
    node = shutil.which("node")
    require(None if node else "node is not on PATH; install Node.js 20+ to run tests/js/")

    # The TAP reporter is asked for by name: its summary lines are what we parse,
    # and the default reporter depends on whether stdout is a terminal.
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", *map(str, NODE_SUITE)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr

    assert result.returncode == 0, f"node --test exited {result.returncode}:\n{output}"
    assert _summary_count(output, "fail") == 0, output
    passed = _summary_count(output, "pass")
    assert passed >= MIN_PASSED, f"only {passed} tests passed:\n{output}"


def test_js_protocol_words_the_service_failures_as_the_server_does() -> None:
    """The page's fallback messages for the service's own failures are protocol.py's, word for word."""
    from streamchat.protocol import FAIL_CODES

    source = (REPO_ROOT / "static" / "js" / "protocol.js").read_text(encoding="utf-8")
    block = re.search(r"^const SERVICE_FAILURES = \{\n(.*?)^\};", source, re.MULTILINE | re.DOTALL)
    assert block is not None, "protocol.js has no SERVICE_FAILURES table"
    entries = re.findall(r"^  (\w+): \[(true|false), '([^']*)'\],$", block.group(1), re.MULTILINE)
    page = {code: (retryable == "true", message) for code, retryable, message in entries}
    assert page == {
        code: FAIL_CODES[code]
        for code in ("worker_lost", "shutdown", "store_unavailable", "deadline_exceeded")
    }
