"""deploy/nginx.conf in a real nginx, in front of the real service: what a deployment gets.

Debian's nginx (apt-get install nginx) runs the shipped site file with only its two edited lines
pointed at loopback ports (tests/nginx_helpers.py), in front of gunicorn with the openai provider
and the fake upstream (tests/conftest.py), so each test can check what the upstream saw. Without
nginx the tests skip, or fail when CI is set. gunicorn runs with PROXY_HOPS=1, as the deployment doc
says; a second one adds a low RATE_LIMIT and a public name in ALLOWED_HOSTS, and its clients connect
to nginx from their own loopback addresses (127.0.0.2, 127.0.0.3, ...) so that nginx sees several
clients, each with its own limit.

Run them alone with ``python -m pytest tests/test_nginx.py -q -s`` (``-s`` shows the token timings).
"""

from __future__ import annotations

import json
import re
import socket
import statistics
import time
from collections.abc import Iterator

import httpx
import pytest
from helpers import (
    ROOT,
    GunicornProcess,
    answer_text,
    check_stop_closes_the_upstream,
    iter_events,
    parse_sse,
    require,
    tag,
    user,
)
from nginx_helpers import NGINX, SITE, EchoUpstream, NginxProcess, loopback_connections

from fakeupstream import expected_text
from streamchat.config import Settings

# The app's own JSON body for a request body over MAX_REQUEST_BYTES (streamchat/routes.py).
TOO_LARGE = (
    b'{"error":{"code":"request_entity_too_large","message":"The body must be at most 1000000 bytes."}}\n'
)


# The rate limit of the nginx_guarded_app gunicorn, and the public name it serves besides 127.0.0.1.
RATE_LIMIT = "2/minute"
PUBLIC_NAME = "chat.example"


# --- fixtures (named nginx_*: tests/conftest.py marks every test that uses one as `nginx`) ------------------


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    """Debian's nginx, or a skip (a failure in CI) when it is not installed."""
    require(None if NGINX.exists() else f"{NGINX} is missing: apt-get install nginx")
    return str(NGINX)


def behind_nginx(fake_upstream, **extra: str) -> dict[str, str]:
    """Return gunicorn's environment behind nginx (PROXY_HOPS=1), with the fake upstream, plus ``extra``."""
    return {
        "OPENAI_BASE_URL": fake_upstream.base_url,
        "OPENAI_API_KEY": "fake",
        # As the deployment doc says: trust one proxy's X-Forwarded-For and X-Forwarded-Proto.
        "PROXY_HOPS": "1",
        # The per-client limits off, as in the project's other tests: these runs all come from one client.
        "RATE_LIMIT": "0",
        "MAX_RUNS_PER_CLIENT": "0",
        "HEARTBEAT_SECONDS": "0.5",
        "DISCONNECT_GRACE_SECONDS": "1",
        **extra,
    }


@pytest.fixture(scope="module")
def nginx_app(fake_upstream) -> Iterator[GunicornProcess]:
    """gunicorn as behind nginx (PROXY_HOPS=1), with the openai provider and the fake upstream."""
    with GunicornProcess(behind_nginx(fake_upstream)) as server:
        yield server


@pytest.fixture(scope="module")
def nginx_guarded_app(fake_upstream) -> Iterator[GunicornProcess]:
    """The nginx_app gunicorn with a public name in ALLOWED_HOSTS and RATE_LIMIT at 2 runs a minute."""
    # 127.0.0.1 stays listed for GunicornProcess's own readiness probe, which goes straight to gunicorn.
    env = behind_nginx(fake_upstream, RATE_LIMIT=RATE_LIMIT, ALLOWED_HOSTS=f"{PUBLIC_NAME},127.0.0.1")
    with GunicornProcess(env) as server:
        yield server


@pytest.fixture(scope="module")
def nginx(nginx_binary, nginx_app) -> Iterator[NginxProcess]:
    """nginx with deploy/nginx.conf in front of the nginx_app gunicorn."""
    with NginxProcess(nginx_app.port) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def nginx_guarded(nginx_binary, nginx_guarded_app) -> Iterator[NginxProcess]:
    """nginx with deploy/nginx.conf in front of the nginx_guarded_app gunicorn."""
    with NginxProcess(nginx_guarded_app.port) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def nginx_echo(nginx_binary) -> Iterator[NginxProcess]:
    """nginx with deploy/nginx.conf in front of an upstream that echoes the request it got."""
    with EchoUpstream() as upstream, NginxProcess(upstream.port) as proxy:
        yield proxy


# --- helpers ------------------------------------------------------------------------------------------------


def timed_reads(response: httpx.Response) -> list[tuple[float, bytes]]:
    """Read a streaming response to its end; return each network read with the time it arrived."""
    return [(time.monotonic(), chunk) for chunk in response.iter_raw()]


def token_read_gaps(reads: list[tuple[float, bytes]]) -> tuple[int, float]:
    """Return how many reads carried a token, and the median gap between them in milliseconds."""
    times = [at for at, chunk in reads if b"event: token" in chunk]
    gaps = [(b - a) * 1000 for a, b in zip(times, times[1:], strict=False)]
    return len(times), statistics.median(gaps) if gaps else float("nan")


def raw_request(port: int, head: str) -> bytes:
    """Send one request as written, with Connection: close, and return the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(f"{head}\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    return answer


def connected_to(port: int) -> set[int]:
    """Return the local ports of the open connections to ``port`` on 127.0.0.1 (nginx's, here)."""
    return {
        c.local_port for c in loopback_connections(port) if c.remote_port == port and c.state == "ESTABLISHED"
    }


def client_at(address: str) -> httpx.Client:
    """Return a client whose connections leave from ``address`` (any of 127.0.0.0/8) to 127.0.0.1."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


def short_run(
    client: httpx.Client, proxy: NginxProcess, headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST a two-token /stream through ``proxy`` and return the whole response."""
    return client.post(
        f"{proxy.base_url}/stream", json=user(f"x [fake tokens=2 tag={tag()}]"), headers=headers
    )


def padded_body(content: str, size: int) -> bytes:
    """Return a JSON chat body padded with trailing spaces (still valid JSON) to exactly ``size`` bytes."""
    body = json.dumps(user(content)).encode()
    return body + b" " * (size - len(body))


# --- streaming through nginx --------------------------------------------------------------------------------


@pytest.mark.parametrize("app_header", ["heeded", "ignored"])
def test_nginx_relays_tokens_as_they_come(nginx_binary, nginx_app, fake_upstream, app_header):
    # 40 tokens at 40 a second: about 2.5 KB in one second, less than one of nginx's buffers. With
    # nginx's defaults (proxy_buffering on, HTTP/1.0 to gunicorn) all of them came in one read, at the end.
    # "ignored": nginx does not heed the app's X-Accel-Buffering header, so the site file alone decides.
    extra = "proxy_ignore_headers X-Accel-Buffering;" if app_header == "ignored" else ""
    with NginxProcess(nginx_app.port, http_extra=extra) as nginx:
        results = relay_both_ways(nginx, nginx_app, fake_upstream)
    print(
        f"\ntoken reads (app's header {app_header}), inter-arrival p50: "
        + "; ".join(f"{name} {count} reads, {p50:.1f} ms" for name, (count, p50) in results.items())
    )
    assert results["nginx"][0] > 30  # of 40: a few may share a read, never most of them


def relay_both_ways(nginx: NginxProcess, nginx_app, fake_upstream) -> dict[str, tuple[int, float]]:
    """Stream 40 tokens directly and through nginx; return each way's token reads and median gap."""
    results = {}
    for name, base in (("direct", nginx_app.base_url), ("nginx", nginx.base_url)):
        label = tag()
        # Same origin as nginx's address: the app's origin is built from the Host that nginx passes on.
        headers = {"Origin": base}
        with (
            httpx.Client(timeout=30) as client,
            client.stream(
                "POST",
                f"{base}/stream",
                json=user(f"go [fake tokens=40 tps=40 tag={label}]"),
                headers=headers,
            ) as response,
        ):
            reads = timed_reads(response)
        assert response.status_code == 200
        assert answer_text(parse_sse(b"".join(chunk for _, chunk in reads))) == expected_text(40)
        assert fake_upstream.wait_for_outcome(label)["outcome"] == "completed"
        results[name] = token_read_gaps(reads)
    return results


def test_nginx_passes_heartbeats_while_the_first_token_is_slow(nginx):
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", f"{nginx.base_url}/stream", json=user(f"think [fake tokens=2 ttft=2.5 tag={tag()}]")
        ) as response,
    ):
        reads = timed_reads(response)
    first_token_at = next(at for at, chunk in reads if b"event: token" in chunk)
    pings = [at for at, chunk in reads if b": ping\n\n" in chunk and at < first_token_at]
    # HEARTBEAT_SECONDS is 0.5 for this server: about five pings in 2.5 silent seconds, each passed on
    # as it comes, so the first arrives long before the first token.
    assert len(pings) >= 3
    assert first_token_at - pings[0] > 1.0
    assert answer_text(parse_sse(b"".join(chunk for _, chunk in reads))) == expected_text(2)


def test_nginx_resume_with_last_event_id_replays_the_missing_tail(nginx, fake_upstream):
    label = tag()
    base = nginx.base_url
    with httpx.Client(timeout=30) as client:
        created = client.post(f"{base}/runs", json=user(f"go [fake tokens=60 tps=100 tag={label}]")).json()
        with client.stream("GET", f"{base}{created['stream_url']}") as response:
            first = []
            for event in iter_events(response):
                first.append(event)
                if len(first) == 10:
                    break
        with client.stream(
            "GET", f"{base}{created['stream_url']}", headers={"Last-Event-ID": str(first[-1]["id"])}
        ) as response:
            rest = list(iter_events(response))
    ids = [e["id"] for e in first + rest]
    assert ids == list(range(1, len(ids) + 1))
    assert answer_text(first + rest) == expected_text(60)
    assert rest[-1]["event"] == "done"
    assert len(fake_upstream.requests(label)) == 1


def test_nginx_stop_closes_the_upstream(nginx, fake_upstream):
    check_stop_closes_the_upstream(nginx.base_url, fake_upstream)


@pytest.mark.parametrize(
    ("directive", "read"),
    [("tokens=500 tps=20", 3), ("fault=silent", 1)],
    ids=["while-tokens-flow", "before-the-first-token"],
)
def test_nginx_client_that_leaves_is_seen_by_the_app(nginx, nginx_app, fake_upstream, directive, read):
    label = tag()
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", f"{nginx.base_url}/stream", json=user(f"x [fake {directive} tag={label}]")
        ) as response,
    ):
        events = []
        for event in iter_events(response):
            events.append(event)
            if len(events) == read:
                break
    left_at = time.time()  # leaving the block closed the connection to nginx
    record = fake_upstream.wait_for_outcome(label, timeout=10)
    # nginx closed its connection to gunicorn at once, and after DISCONNECT_GRACE_SECONDS (1 s for
    # this server) the app stopped the model. (An nginx that noticed only at its next failed write,
    # with proxy_ignore_client_abort on, made it 2 s.)
    assert record["outcome"] == "client_closed"
    assert 0.9 <= record["closed_by_client_at"] - left_at < 1.5
    status = httpx.get(f"{nginx_app.base_url}/runs/{events[0]['data']['run']}").json()
    assert status["state"] == "stopped"


def test_nginx_gzip_for_everything_leaves_the_stream_alone(nginx_binary, nginx_app):
    # An operator's http block that compresses every type, and more: the stream routes must still go
    # out uncompressed, each token as it comes, while the page is compressed.
    gzip_everything = "gzip on; gzip_types *; gzip_min_length 1; gzip_proxied any;"
    with (
        NginxProcess(nginx_app.port, http_extra=gzip_everything) as proxy,
        httpx.Client(timeout=30, headers={"Accept-Encoding": "gzip"}) as client,
    ):
        page = client.get(f"{proxy.base_url}/")
        with client.stream(
            "POST", f"{proxy.base_url}/stream", json=user(f"go [fake tokens=40 tps=40 tag={tag()}]")
        ) as response:
            reads = timed_reads(response)
        created = client.post(f"{proxy.base_url}/runs", json=user(f"go [fake tokens=5 tag={tag()}]")).json()
        resumed = client.get(f"{proxy.base_url}{created['stream_url']}")
    assert page.headers["content-encoding"] == "gzip"  # gzip is really on in this nginx
    assert "content-encoding" not in response.headers
    assert answer_text(parse_sse(b"".join(chunk for _, chunk in reads))) == expected_text(40)
    assert token_read_gaps(reads)[0] > 1
    assert "content-encoding" not in resumed.headers
    assert answer_text(parse_sse(resumed.content)) == expected_text(5)


# --- what nginx refuses itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_nginx_refuses_a_body_over_the_limit_with_the_apps_json(nginx, nginx_app, chunked):
    body = padded_body(f"x [fake tokens=1 tag={tag()}]", 1_000_001)
    content = iter([body[:500_000], body[500_000:]]) if chunked else body
    headers = {"Content-Type": "application/json"}
    refused = httpx.post(f"{nginx.base_url}/stream", content=content, headers=headers, timeout=30)
    assert refused.status_code == 413
    assert refused.headers["content-type"] == "application/json"
    assert refused.content == TOO_LARGE
    # The same bytes as the app's own answer to a body over its limit, with a length or chunked.
    for direct_content in (body, iter([body[:500_000], body[500_000:]])):
        direct = httpx.post(
            f"{nginx_app.base_url}/stream", content=direct_content, headers=headers, timeout=30
        )
        assert (direct.status_code, direct.content) == (413, TOO_LARGE)


def test_nginx_passes_a_body_of_exactly_the_limit(nginx):
    body = padded_body(f"x [fake tokens=3 tag={tag()}]", 1_000_000)
    response = httpx.post(
        f"{nginx.base_url}/stream", content=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == 200
    assert answer_text(parse_sse(response.content)) == expected_text(3)


@pytest.mark.parametrize("target", ["/metrics", "/metrics?name=x", "//metrics", "/%6Detrics", "/./metrics"])
def test_nginx_refuses_metrics(nginx, target):
    answer = raw_request(nginx.port, f"GET {target} HTTP/1.1")
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n"), answer[:200]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\nContent-Type: application/json\r\n" in head
    assert json.loads(body)["error"]["code"] == "forbidden"  # the app's error shape, not nginx's page


def test_nginx_holds_a_slow_body_until_it_is_complete(nginx_binary, nginx_app):
    # nginx reads the whole body before it opens a connection to gunicorn, so a slow client costs
    # gunicorn nothing: no connection, no greenlet waiting on a half-sent body.
    body = json.dumps(user(f"x [fake tokens=2 tag={tag()}]")).encode()
    before = connected_to(nginx_app.port)
    with NginxProcess(nginx_app.port) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as raw:
        raw.settimeout(10)
        # HTTP/1.0, so that the answer comes back whole, not in chunks, and the connection then closes.
        head = (
            f"POST /stream HTTP/1.0\r\nHost: 127.0.0.1:{proxy.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        raw.sendall(head.encode() + body[:10])
        time.sleep(0.5)
        waiting = connected_to(nginx_app.port) - before
        raw.sendall(body[10:])
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    assert waiting == set()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer_text(parse_sse(answer.split(b"\r\n\r\n", 1)[1])) == expected_text(2)


# --- what nginx sends to gunicorn ---------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [("GET", "/"), ("POST", "/stream"), ("GET", "/runs/abc/stream")])
def test_nginx_passes_host_with_port_and_the_forwarded_headers(nginx_echo, method, path):
    origin = nginx_echo.base_url
    response = httpx.request(
        method,
        f"{nginx_echo.base_url}{path}",
        headers={"X-Forwarded-For": "203.0.113.9", "Origin": origin},
        timeout=10,
    )
    seen = response.json()
    headers = dict(seen["headers"])
    assert (seen["method"], seen["path"], seen["version"]) == (method, path, "HTTP/1.1")
    assert headers["host"] == f"127.0.0.1:{nginx_echo.port}"
    # nginx appends the address it saw: with PROXY_HOPS=1 the app takes that last entry, never the
    # client's own claim before it.
    assert headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["origin"] == origin
    assert "connection" not in headers  # no `Connection: close`: the upstream connection is kept


def test_nginx_closes_idle_upstream_connections_before_gunicorn(nginx_binary, nginx_app):
    # gunicorn closes a connection idle for KEEPALIVE_SECONDS (5 s by default); nginx must close its
    # idle ones first (keepalive_timeout 4s), or a POST sent at the moment gunicorn closes gets a 502.
    # The side that closes a TCP connection first is the one left in TIME_WAIT, so the kernel's table
    # tells who closed it, without waiting for the race itself.
    gunicorn = nginx_app.port

    def post(client: httpx.Client) -> None:
        response = client.post(f"{proxy.base_url}/stream", json=user(f"x [fake tokens=2 tag={tag()}]"))
        assert response.status_code == 200, response.text
        assert answer_text(parse_sse(response.content)) == expected_text(2)

    before = connected_to(gunicorn)  # other nginx instances' pools, left alone
    with NginxProcess(nginx_app.port) as proxy, httpx.Client(timeout=10) as client:
        post(client)
        ended = time.monotonic()
        [pooled] = connected_to(gunicorn) - before
        # Wait (at most 7 s) for the kept connection to close, whoever closes it.
        while time.monotonic() - ended < 7 and any(
            pooled in (c.local_port, c.remote_port) and c.state != "TIME_WAIT"
            for c in loopback_connections(gunicorn)
        ):
            time.sleep(0.02)
        closed_after = time.monotonic() - ended
        states = {
            (c.local_port, c.state)
            for c in loopback_connections(gunicorn)
            if pooled in (c.local_port, c.remote_port)
        }
        print(f"\nthe idle upstream connection closed after {closed_after:.2f} s: {sorted(states)}")
        assert (pooled, "TIME_WAIT") in states  # nginx closed first
        assert (gunicorn, "TIME_WAIT") not in states
        # Sequential POSTs: one after gunicorn's own keep-alive, then back to back on one reused
        # connection. None gets a 502.
        time.sleep(max(0.0, 5.0 - (time.monotonic() - ended)))
        post(client)
        reused = connected_to(gunicorn) - before
        for _ in range(3):
            post(client)
            assert connected_to(gunicorn) - before == reused
        assert len(reused) == 1


# --- the request guards behind nginx (PROXY_HOPS=1) ---------------------------------------------------------

# The app's 403 for a POST from an origin neither its own nor in ALLOWED_ORIGINS (streamchat/guards.py).
CROSS_ORIGIN = (
    b'{"error":{"code":"cross_origin","message":"Requests from another site\'s page are refused here."}}\n'
)
# The app's 429 once a client used up RATE_LIMIT (2/minute for the nginx_guarded_app gunicorn).
TOO_MANY_REQUESTS = (
    b'{"error":{"code":"too_many_requests","message":"At most 2 runs a minute per client."}}\n'
)


def test_nginx_same_origin_post_streams_and_a_cross_origin_one_is_refused(nginx, fake_upstream):
    # The app builds its own origin from the Host that nginx passes on, port included, and the scheme
    # from X-Forwarded-Proto: a page served by this nginx posts with exactly nginx's address as Origin.
    own, other = tag(), tag()
    with httpx.Client(timeout=10) as client:
        same = client.post(
            f"{nginx.base_url}/stream",
            json=user(f"x [fake tokens=3 tag={own}]"),
            headers={"Origin": f"http://127.0.0.1:{nginx.port}"},
        )
        cross = client.post(
            f"{nginx.base_url}/stream",
            json=user(f"x [fake tokens=3 tag={other}]"),
            headers={"Origin": "http://evil.example"},
        )
    assert same.status_code == 200
    assert same.headers["content-type"].startswith("text/event-stream")
    assert answer_text(parse_sse(same.content)) == expected_text(3)
    assert (cross.status_code, cross.content) == (403, CROSS_ORIGIN)
    assert cross.headers["content-type"] == "application/json"
    assert fake_upstream.wait_for_outcome(own)["outcome"] == "completed"
    assert fake_upstream.requests(other) == []  # refused before the model was asked


def test_nginx_two_clients_get_separate_rate_limits(nginx_guarded):
    # Both connect to nginx on 127.0.0.1, from two source addresses; nginx writes each one's address
    # into X-Forwarded-For and the app (PROXY_HOPS=1) counts runs per that address. With PROXY_HOPS=0
    # both would be nginx's own 127.0.0.1, one client, and B's first run would be refused.
    with client_at("127.0.0.2") as a, client_at("127.0.0.3") as b:
        a_runs = [short_run(a, nginx_guarded) for _ in range(3)]
        b_first = short_run(b, nginx_guarded)
    assert [r.status_code for r in a_runs] == [200, 200, 429]
    assert all(answer_text(parse_sse(r.content)) == expected_text(2) for r in a_runs[:2])
    assert a_runs[2].content == TOO_MANY_REQUESTS
    assert 1 <= int(a_runs[2].headers["retry-after"]) <= 60  # until A's first run leaves the window
    assert b_first.status_code == 200
    assert answer_text(parse_sse(b_first.content)) == expected_text(2)


def test_nginx_client_cannot_choose_its_address_with_x_forwarded_for(nginx_guarded):
    # nginx appends the address it saw to any X-Forwarded-For the client sent, and the app trusts only
    # that last entry. C's runs under a made-up address are counted as C's own, the made-up address
    # gets none of them, and D, claiming to be C, is counted as D. (With PROXY_HOPS=2 the app would
    # believe the made-up address: C's plain run would pass and D's first one would be refused.)
    made_up = {"X-Forwarded-For": "198.51.100.7"}
    with client_at("127.0.0.4") as c, client_at("127.0.0.5") as d:
        spoofed = [short_run(c, nginx_guarded, made_up) for _ in range(2)]
        plain = short_run(c, nginx_guarded)
        d_runs = [
            short_run(d, nginx_guarded, made_up),
            short_run(d, nginx_guarded, {"X-Forwarded-For": "127.0.0.4"}),
        ]
    assert [r.status_code for r in spoofed] == [200, 200]
    assert (plain.status_code, plain.content) == (429, TOO_MANY_REQUESTS)
    assert [r.status_code for r in d_runs] == [200, 200]
    assert all(answer_text(parse_sse(r.content)) == expected_text(2) for r in spoofed + d_runs)


def test_nginx_public_name_in_allowed_hosts_passes_and_another_host_is_refused(nginx_guarded):
    public = f"{PUBLIC_NAME}:{nginx_guarded.port}"
    with client_at("127.0.0.6") as client:
        # As a browser on http://chat.example:PORT/ sends it: Host with the port, and the page's origin.
        listed = short_run(client, nginx_guarded, {"Host": public, "Origin": f"http://{public}"})
        unlisted = short_run(client, nginx_guarded, {"Host": f"rebound.example:{nginx_guarded.port}"})
    assert listed.status_code == 200
    assert answer_text(parse_sse(listed.content)) == expected_text(2)
    assert unlisted.status_code == 400
    assert unlisted.content == (
        b'{"error":{"code":"bad_host","message":"Host \'rebound.example\' is not served here '
        b'(add it to ALLOWED_HOSTS)."}}\n'
    )


# --- the file itself ----------------------------------------------------------------------------------------


def site_directive(name: str) -> str:
    """Return the value of the one ``name ...;`` line in deploy/nginx.conf."""
    values = re.findall(rf"^\s*{name}\s+([^;]+);", SITE.read_text(), flags=re.MULTILINE)
    assert len(values) == 1, (name, values)
    return values[0]


def seconds(value: str) -> float:
    """Return an nginx time like ``4s`` or ``60s`` in seconds."""
    match = re.fullmatch(r"(\d+)s", value)
    assert match, value
    return float(match[1])


def test_nginx_conf_numbers_follow_the_apps_defaults():
    defaults = Settings()
    gunicorn_keepalive = re.search(r'"KEEPALIVE_SECONDS", "(\d+)"', (ROOT / "gunicorn.conf.py").read_text())
    assert int(site_directive("client_max_body_size")) == defaults.max_request_bytes
    # The stream routes' own answer to buffering, whatever the app's header says.
    assert site_directive("proxy_buffering") == "off"
    assert seconds(site_directive("proxy_read_timeout")) > defaults.heartbeat_seconds
    assert seconds(site_directive("keepalive_timeout")) < int(gunicorn_keepalive[1])
    assert f"at most {defaults.max_request_bytes} bytes" in TOO_LARGE.decode()
