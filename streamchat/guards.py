"""What the service refuses, in one place: the request guards, wired into the app by create_app.

A self-hosted chat service gets found by scanners, and its model key pays for whoever finds it. Every
request passes these checks, always in this order, so that the first thing wrong is the thing said
(docs/deployment.md, "Putting it on the internet"):

1. **host**   ``Host`` not in ALLOWED_HOSTS: 400 ``bad_host`` (a DNS-rebinding page cannot reach a
              service on someone's own machine). ``GET /healthz`` is exempt: balancers probe by address.
2. **origin** a ``POST`` or ``DELETE`` from another origin (``Origin`` not the app's own nor listed in
              ALLOWED_ORIGINS, or ``Sec-Fetch-Site: cross-site``): 403 ``cross_origin``. A preflight
              from a listed origin is answered here.
3. **auth**   ACCESS_TOKEN set, and neither ``Authorization: Bearer`` nor the session cookie: 401
              ``unauthorized``. The page, its static files, ``/healthz``, ``/openapi.json`` and
              ``/session`` itself load without it.
4. **body**   read within BODY_TIMEOUT_SECONDS (else 408 ``request_timeout``, and the connection is
              closed); a broken chunked framing is a 400 ``malformed_body``, one log line. The view then
              validates what it read (streamchat/chat_request.py).
5. **limits** ``admit_run``, called by the view once the body is valid: RATE_LIMIT, DAILY_TOKEN_BUDGET
              and MAX_RUNS_PER_CLIENT, each a 429 with its own code (and ``Retry-After`` where a time is
              known). Failed sign-ins have their own limit (SESSION_RATE_LIMIT).
6. **store**  the run store may still refuse (503 ``too_many_runs``, ``store_unavailable``) when the
              view starts the run.

Only a run that really starts uses up rate quota: the quota is tested before, and charged after the
response says the run started (the "deduct when" idea of Flask-Limiter). The client is
``request.remote_addr``: ProxyFix makes it the real client's behind PROXY_HOPS trusted proxies, and
with PROXY_HOPS=0 nobody can choose theirs with ``X-Forwarded-For``.

Try it::

    curl -i localhost:8000/runs -H 'Host: rebound.example' -d '{}'     # 400 bad_host
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import gevent
from flask import Flask, Response, current_app, g, request
from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from werkzeug.middleware.proxy_fix import ProxyFix

from streamchat.api_errors import ApiError
from streamchat.config import Settings, rate_is_off
from streamchat.quotas import ClientSlots, TokenBudget, make_book
from streamchat.runs import RunStore, StoreUnavailable
from streamchat.session import has_credentials

try:  # gunicorn's own error for a broken body (a bad chunk size line); absent under other servers
    from gunicorn.http.errors import ParseException as _BodyParseError
except ImportError:  # pragma: no cover
    _BodyParseError = ValueError

log = logging.getLogger(__name__)

# Endpoints that load without the access token: the page (it shows the sign-in form), what it needs to
# load, the health probe, the API's description, and signing in and out. The metrics have their own
# rule in their view: loopback clients, or any client that carries the token (carries_access_token).
PUBLIC_ENDPOINTS = frozenset(
    {
        "chat.index",
        "static",
        "chat.healthz",
        "openapi.document",
        "session.sign_in",
        "session.sign_out",
        "chat.metrics_page",
    }
)
HOST_EXEMPT_ENDPOINTS = frozenset({"chat.healthz"})
SIGN_IN_ENDPOINT = "session.sign_in"
# Methods that change something or cost money: their Origin is checked, their body read here.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# What a listed cross-origin page may send and read (CORS).
_CORS_ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID"
_CORS_EXPOSE_HEADERS = "Location, Retry-After"


class _BodyTimeout(Exception):
    """Raised into a body read that ran out of time.

    An Exception, not a BaseException like gevent.Timeout, so that gunicorn marks the body as failed
    and closes the connection after the 408.
    """


def host_name(host: str) -> str:
    """Return a Host header's name without its port, lower-cased ("[::1]:8000" gives "[::1]")."""
    host = host.lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] or host
    return host.rpartition(":")[0] if ":" in host else host


def client_key() -> str:
    """Return the client that limits count: its address, as ProxyFix made it."""
    return request.remote_addr or "unknown"


@dataclass(eq=False)
class Admission:
    """One run's place within its client's limits: started, then ended exactly once."""

    guards: Guards
    client: str
    slot: str | None
    run_id: str | None = None
    ended: bool = False

    def started(self, run_id: str) -> None:
        """Note the run that this admission let start (its slot is now vouched for by the run store)."""
        self.run_id = run_id
        if self.slot is not None and not self.ended:
            self.guards.slots.started(self.client, self.slot, run_id)

    def run_ended(self, tokens: int) -> None:
        """Release the slot and charge the budget (the producer calls this, however the run ended)."""
        self.ended = True
        try:
            if self.slot is not None:
                self.guards.slots.release(self.client, self.slot, self.run_id)
            self.guards.budget.spend(tokens)
        except StoreUnavailable as err:
            # The slot lease and the store check free it later; the budget misses these tokens.
            log.warning("run %s: slot or budget not updated (%d tokens): %s", self.run_id, tokens, err)

    def abandon(self) -> None:
        """Give the slot back when the run never started (the request failed after admission)."""
        if self.run_id is None and not self.ended:
            self.run_ended(0)


class Guards:
    """The checks of one app, with the limiter and the quotas they keep."""

    def __init__(self, settings: Settings, store: RunStore) -> None:
        self.settings = settings
        # Parsed once: every request asks.
        self.host_names = settings.host_names
        self.origins = settings.origins
        storage_uri, storage_options = _limiter_storage(store)
        # The `limits` library keeps the counts (a moving window: exact at N+1 whenever the N came):
        # the engine under Flask-Limiter, used directly. The guards test and charge the limits in
        # their place in the order, so Flask-Limiter's own per-request check, which looks for
        # limits declared on routes (there are none), would only add its cost to every request:
        # 69 us, as much as the rest of a bare Flask request (docs/performance.md, start cost).
        self.rate_limiter = MovingWindowRateLimiter(storage_from_string(storage_uri, **storage_options))
        self.run_rate = None if rate_is_off(settings.rate_limit) else _parse_rate(settings.rate_limit)
        self.run_rate_message = f"At most {_per_period(settings.rate_limit)} per client."
        self.sign_in_rate = (
            None if rate_is_off(settings.session_rate_limit) else _parse_rate(settings.session_rate_limit)
        )
        book = make_book(store)
        self.slots = ClientSlots(settings.max_runs_per_client, book, store)
        self.budget = TokenBudget(settings.daily_token_budget, book)

    def install(self, app: Flask) -> None:
        """Wire the guards into ``app``: ProxyFix, the checks before each request, the counts after."""
        if self.settings.proxy_hops:
            hops = self.settings.proxy_hops
            app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
        app.before_request(self.check_request)
        app.after_request(self.after_request)
        app.teardown_request(_abandon_unstarted)
        app.extensions["streamchat.guards"] = self

    # --- before the view: host, origin, auth, body ------------------------------------------------

    def check_request(self) -> Response | None:
        """Refuse the request at the first check it fails, in the fixed order; else let it through."""
        endpoint = request.endpoint
        if endpoint not in HOST_EXEMPT_ENDPOINTS:
            self._check_host()
        if request.method == "OPTIONS" and self._listed_origin():
            return self._preflight()
        if request.method in UNSAFE_METHODS:
            self._check_origin()
        token = self.settings.access_token
        if token and endpoint not in PUBLIC_ENDPOINTS and not has_credentials(request, token):
            raise ApiError(401, "unauthorized", "Sign in, or send Authorization: Bearer <ACCESS_TOKEN>.")
        if request.method in UNSAFE_METHODS:
            self._read_body()
        if endpoint == SIGN_IN_ENDPOINT and self.sign_in_rate is not None:
            self._check_rate(self.sign_in_rate, "sign-in", "Too many failed sign-ins. Try again later.")
        return None

    def _check_host(self) -> None:
        name = host_name(request.host)
        if "*" not in self.host_names and name not in self.host_names:
            raise ApiError(
                400, "bad_host", f"Host {name[:100]!r} is not served here (add it to ALLOWED_HOSTS)."
            )

    def _own_origin(self) -> str:
        """The app's own origin: the scheme (the proxy's, with PROXY_HOPS) and Host as received."""
        return f"{request.scheme}://{request.host}".lower()

    def _listed_origin(self) -> bool:
        origin = request.headers.get("Origin", "").lower()
        return bool(origin) and origin in self.origins

    def _check_origin(self) -> None:
        origin = (request.headers.get("Origin") or "").lower()
        listed = origin in self.origins
        foreign = bool(origin) and origin != self._own_origin() and not listed
        # The browser's own word that another site's page sent this (with or without an Origin).
        cross_site = request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site" and not listed
        if foreign or cross_site:
            raise ApiError(403, "cross_origin", "Requests from another site's page are refused here.")

    def _preflight(self) -> Response:
        """Answer a CORS preflight from a listed origin (after_request adds the origin's headers)."""
        response = Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE"
        response.headers["Access-Control-Allow-Headers"] = _CORS_ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
        return response

    def _read_body(self) -> None:
        """Read the whole body now, within BODY_TIMEOUT_SECONDS; the view gets it from the cache."""
        try:
            with gevent.Timeout(self.settings.body_timeout_seconds, _BodyTimeout):
                request.get_data(cache=True)
        except _BodyTimeout:
            raise ApiError(
                408,
                "request_timeout",
                f"The body did not arrive within {self.settings.body_timeout_seconds:g} seconds.",
            ) from None
        except _BodyParseError as err:
            log.warning("refused a malformed request body from %s: %s", client_key(), str(err)[:200])
            raise ApiError(400, "malformed_body", "The body's chunked framing is broken.") from None

    # --- the limits: the view calls admit_run once the body is valid -----------------------------

    def admit(self) -> Admission:
        """Check the client's rate, the day's budget and the client's live runs; take a slot."""
        client = client_key()
        if self.run_rate is not None:
            self._check_rate(self.run_rate, "runs", self.run_rate_message)
        retry_after = self.budget.retry_after()
        if retry_after is not None:
            raise ApiError(
                429,
                "budget_exhausted",
                "Today's token budget is spent. It renews at midnight UTC.",
                retry_after=math.ceil(retry_after),
            )
        slot = None
        if self.settings.max_runs_per_client:
            slot = self.slots.reserve(client)
            if slot is None:
                raise ApiError(
                    429,
                    "too_many_active_runs",
                    f"This client already has {self.settings.max_runs_per_client} live answers, the most "
                    "it may have at once. Stop one, or wait for one to finish.",
                )
        admission = Admission(self, client, slot)
        g.streamchat_admission = admission
        return admission

    def _check_rate(self, item: RateLimitItem, scope: str, message: str) -> None:
        """Refuse with 429 ``too_many_requests`` and Retry-After when ``scope``'s quota is used up."""
        client = client_key()
        try:
            if self.rate_limiter.test(item, scope, client):
                return
            reset_at = self.rate_limiter.get_window_stats(item, scope, client).reset_time
        except StorageError as err:
            failure = type(err.storage_error).__name__
            raise StoreUnavailable(f"the rate limiter's storage failed: {failure}") from None
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise ApiError(429, "too_many_requests", message, retry_after=retry_after)

    def _charge(self, item: RateLimitItem, scope: str) -> None:
        """Use up one of the client's ``scope`` quota (the request has earned it)."""
        try:
            self.rate_limiter.hit(item, scope, client_key())
        except StorageError as err:  # the answer is already decided: say it, and let it go out
            log.warning(
                "a %s was not counted for its rate limit: %s", scope, type(err.storage_error).__name__
            )

    # --- after the view: charge the quotas that were earned, CORS headers for listed origins ---------

    def after_request(self, response: Response) -> Response:
        """Charge the rate quota of a run that started or a sign-in that failed; add CORS headers."""
        admission = g.get("streamchat_admission")
        if self.run_rate is not None and admission is not None and admission.run_id is not None:
            self._charge(self.run_rate, "runs")
        if request.endpoint == SIGN_IN_ENDPOINT and response.status_code == 401 and self.sign_in_rate:
            self._charge(self.sign_in_rate, "sign-in")
        if self._listed_origin():
            response.headers["Access-Control-Allow-Origin"] = request.headers["Origin"]
            response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE_HEADERS
            response.vary.add("Origin")
        return response


def carries_access_token() -> bool:
    """Tell whether ACCESS_TOKEN is set and this request carries it (header or session cookie)."""
    token = current_app.extensions["streamchat.guards"].settings.access_token
    return bool(token) and has_credentials(request, token)


def sign_in_state() -> str:
    """Tell the page about signing in: "off" (no ACCESS_TOKEN), "needed", or "done" (signed in)."""
    if not current_app.extensions["streamchat.guards"].settings.access_token:
        return "off"
    return "done" if carries_access_token() else "needed"


def admit_run() -> Admission:
    """Let a run start within the client's limits, or raise the 429 that says which limit it met."""
    return current_app.extensions["streamchat.guards"].admit()


def _abandon_unstarted(_error: BaseException | None) -> None:
    """Give back the slot of an admitted request whose run never started (teardown)."""
    admission = g.pop("streamchat_admission", None)
    if admission is not None:
        admission.abandon()


def _parse_rate(rate: str) -> RateLimitItem:
    return parse(rate.strip())


def _per_period(rate: str) -> str:
    """Say a rate the way people do: "30/minute" is "30 runs a minute" ("1 run a minute")."""
    count, _, period = rate.strip().partition("/")
    return f"{count} {'run' if count == '1' else 'runs'} a {period}"


def _limiter_storage(store: RunStore) -> tuple[str, dict]:
    """Keep rate counts beside the runs: Redis through the run store's own pool, else memory.

    ``wrap_exceptions``: a storage failure is the library's StorageError, whatever the storage.
    """
    client = getattr(store, "client", None)
    if store.kind == "redis" and client is not None:
        # The URI only names the kind of storage here: the connections come from the pool given.
        return "redis://", {"connection_pool": client.connection_pool, "wrap_exceptions": True}
    return "memory://", {"wrap_exceptions": True}
