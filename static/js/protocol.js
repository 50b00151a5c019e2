// protocol.js: what the two stream readers share: the API's URLs, its errors and its four events.
//
// The page reads a run with one of two readers, fetch-reader.js or eventsource-reader.js. They
// differ only in how the bytes arrive. Everything else lives here, so that each reader holds only
// its own transport, and a learner can put the two side by side:
//
//   readRun({body, urls, signal, callbacks, resume?}) -> Promise<'done' | 'stopped' | 'failed' | 'left'>
//
// With `resume: {runId, lastEventId}` instead of a new run, a reader picks up a run that is already
// going (a reloaded page), asking for the events after `lastEventId` only. Aborting `signal` stops
// the run, unless the abort's reason is LEAVE: then the reader only lets go of it ('left'), and the
// run goes on for a reloaded page to pick up.
//
// The wire protocol (docs/protocol.md): events `start`, `token`, then exactly one terminal
// `done` or `fail`, each with an integer id and one line of JSON data; `: ping` comments as
// heartbeats; a `retry:` hint first. Bad requests are refused before any stream starts with a
// JSON body {"error": {"code", "message"}}.

/**
 * The API's URLs, read from the page's data- attributes (app.js). The per-run ones are templates
 * that hold `placeholder` where the run id goes, so no path is written in this JavaScript.
 * @typedef {object} Urls
 * @property {string} stream     POST: start a run and stream it in the response (fetch reader)
 * @property {string} runs       POST: start a run, answer with its id (EventSource reader)
 * @property {string} runStream  GET: a run's events, after Last-Event-ID (template)
 * @property {string} runStop    POST: stop a run (template)
 * @property {string} placeholder  The text in the templates that stands for the run id
 */

/**
 * What a reader reports, in this order: onState('connecting'), onStart, onToken..., then exactly
 * one of onDone or onFail, and onState('done') last. onRaw and further onState calls come
 * in between. Both readers call exactly these, with exactly these shapes. The four event
 * callbacks get the event's id (a string) as a second argument: a page that saves a run keeps
 * the last one, to resume from it.
 * @typedef {object} RunCallbacks
 * @property {(state: 'connecting'|'streaming'|'reconnecting'|'done') => void} [onState]
 * @property {(start: {run: string, model: string}) => void} [onStart]
 * @property {(token: {text: string, tokens: number}) => void} [onToken]
 * @property {(done: {finish_reason: string, usage?: object}) => void} [onDone]
 * @property {(failure: Failure) => void} [onFail]
 * @property {(entry: RawEntry) => void} [onRaw]
 */

/**
 * Why a run failed: a `fail` event's data, or the same shape made here for a refused request
 * (`status` is then the HTTP status) or a connection that could not be resumed.
 * @typedef {object} Failure
 * @property {string} code
 * @property {string} message    Safe to show; the page inserts it as text.
 * @property {boolean} retryable
 * @property {number} [retry_after]  Seconds the server asks us to wait before retrying.
 * @property {number} [status]
 */

/**
 * One line of the raw events view.
 * @typedef {{kind: 'event', id: string, event: string, data: string}
 *   | {kind: 'comment', text: string}
 *   | {kind: 'retry', ms: number}
 *   | {kind: 'note', text: string}} RawEntry
 */

/** The events of the protocol; a reader ignores any other name (the protocol may grow). */
export const EVENT_NAMES = Object.freeze(['start', 'token', 'done', 'fail']);

// The abort reason for "the page is going away": close the connection, do not stop the run.
export const LEAVE = 'leave';

// EventSource's own default reconnection time in Chromium and Firefox, until the server's
// `retry:` hint says otherwise.
export const DEFAULT_RETRY_MS = 3000;

// Failures that happen in the browser, not on the server. Their codes differ from the server's
// `fail` codes (the protocol module on the server) so that a reader of the page can tell them apart.
const CLIENT_FAILURES = {
  network_error: [true, 'The connection to the server was lost and could not be resumed.'],
  unreachable: [true, 'The server could not be reached. Check that it is running.'],
  stream_ended: [true, 'The server ended the stream before the answer was complete.'],
  malformed_event: [false, 'The server sent an event this page could not read.'],
  not_resumable: [true, 'The page was reloaded before the answer started, so it could not be picked up again.'],
};

// The `fail` codes where the service, not the model, failed: the process writing the run died, the
// server stopped, its run store went away (all three retryable), or the run outlived the server's
// MAX_RUN_SECONDS (not retryable: it would run as long again). Their messages are the server's own
// (streamchat/protocol.py FAIL_CODES, checked by tests/test_js_parser.py), so the page can word
// them even when a `fail` event comes without a message.
const SERVICE_FAILURES = {
  worker_lost: [true, 'The server process writing this answer stopped. Try again.'],
  shutdown: [true, 'The server restarted before the answer was finished. Try again.'],
  store_unavailable: [true, 'The server lost its run store in the middle of the answer. Try again.'],
  deadline_exceeded: [false, 'The answer took longer than this server allows and was ended.'],
};

// The HTTP error code (not a `fail` code) of a request that carries neither the access token nor
// the session cookie, when the server has an ACCESS_TOKEN: the page then asks to sign in again.
export const UNAUTHORIZED = 'unauthorized';

/** Complete the callbacks: each one the caller left out becomes a no-op. */
export function withDefaults(callbacks = {}) {
  const ignore = () => {};
  return {
    onState: ignore,
    onStart: ignore,
    onToken: ignore,
    onDone: ignore,
    onFail: ignore,
    onRaw: ignore,
    ...callbacks,
  };
}

/**
 * Return the URL `name` of `urls` with the run id put in place of the placeholder.
 * @param {Urls} urls
 * @param {'runStream'|'runStop'} name
 * @param {string} runId
 */
export function urlFor(urls, name, runId) {
  return urls[name].split(urls.placeholder).join(encodeURIComponent(runId));
}

/**
 * Hand one event's JSON data to its callback. Return the run's outcome if the event ends the
 * run ('done', 'stopped' or 'failed'), else null.
 * @param {string} name  The event name (the SSE `event:` field).
 * @param {string} data  The event's data, one line of JSON.
 * @param {RunCallbacks} callbacks  Complete (see withDefaults).
 * @param {string} [id]  The event's id, passed on to the callback.
 * @returns {'done'|'stopped'|'failed'|null}
 */
export function deliver(name, data, callbacks, id = '') {
  if (!EVENT_NAMES.includes(name)) return null;
  let value;
  try {
    value = JSON.parse(data);
  } catch (err) {
    if (!(err instanceof SyntaxError)) throw err;
    callbacks.onFail(clientFailure('malformed_event'));
    return 'failed';
  }
  switch (name) {
    case 'start':
      callbacks.onStart(value, id);
      return null;
    case 'token':
      callbacks.onToken(value, id);
      return null;
    case 'done':
      callbacks.onDone(value, id);
      // A run stopped on the server (the stop button of another tab, the unread grace period)
      // ends with done + finish_reason "stopped": for the page, that is a stopped answer.
      return value.finish_reason === 'stopped' ? 'stopped' : 'done';
    default: // 'fail'
      callbacks.onFail(worded(value), id);
      return 'failed';
  }
}

/**
 * Return a Failure made in the browser (see CLIENT_FAILURES for the codes).
 * @param {keyof CLIENT_FAILURES} code
 * @returns {Failure}
 */
export function clientFailure(code) {
  const [retryable, message] = CLIENT_FAILURES[code];
  return { code, message, retryable };
}

/** Fill in what a `fail` event left out (message, retryable) for the codes in SERVICE_FAILURES. */
function worded(failure) {
  if (!Object.hasOwn(SERVICE_FAILURES, failure?.code)) return failure;
  const [retryable, message] = SERVICE_FAILURES[failure.code];
  return {
    ...failure,
    message: typeof failure.message === 'string' && failure.message !== '' ? failure.message : message,
    retryable: typeof failure.retryable === 'boolean' ? failure.retryable : retryable,
  };
}

/**
 * Give up on a run: report `failure`, and if the run may still be generating (its id is known),
 * stop it, as Stop would, instead of letting it run for the server's grace period. Stopping a
 * run that has already ended is harmless. Both readers end this way.
 * @param {{urls: Urls, runId: string|null, report: RunCallbacks, failure: Failure}} what
 * @returns {Promise<'failed'>}
 */
export async function giveUp({ urls, runId, report, failure }) {
  report.onFail(failure);
  if (runId !== null) await stopRun(urls, runId, report.onRaw);
  return 'failed';
}

/**
 * End a reader whose reading threw `err`. Aborted by the page: let go of the run ('left': the page
 * is going away, the run goes on for the next page to pick up) or stop it ('stopped'). Anything
 * else is not ours to handle here, and is thrown again. Both readers end this way.
 * @param {unknown} err
 * @param {{signal: AbortSignal, urls: Urls, runId: string|null, report: RunCallbacks}} what
 * @returns {Promise<'left'|'stopped'>}
 */
export async function onAbort(err, { signal, urls, runId, report }) {
  if (!signal.aborted) throw err;
  if (signal.reason === LEAVE) return 'left';
  // Stop: aborting closed our connection (or it was never opened); now tell the server, so that
  // the model stops too. Before the run's id is known (its `start` event, or the answer to
  // POST /runs), we cannot; the server then stops the run once nobody has read it for its grace
  // period.
  if (runId !== null) await stopRun(urls, runId, report.onRaw);
  return 'stopped';
}

/**
 * POST a JSON body (the conversation) and return the Response, whatever its status. Both readers
 * start a run with it (the fetch reader's response is the stream; EventSource's is the run's id).
 * @param {string} url
 * @param {object} body
 * @param {AbortSignal} signal
 */
export function postJson(url, body, signal) {
  return fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
    cache: 'no-store',
    signal,
  });
}

/**
 * Turn a refused request (a non-2xx answer, before any stream) into a Failure, using the API's
 * JSON error body when there is one, and its Retry-After header (a 429's) when it is in seconds.
 * @param {Response} response
 * @returns {Promise<Failure>}
 */
export async function failureFromResponse(response) {
  const failure = {
    code: `http_${response.status}`,
    message: `The server refused the request (HTTP ${response.status}).`,
    // 409: the events to resume from are gone, but starting the answer again works.
    retryable: response.status >= 500 || response.status === 429 || response.status === 409,
    status: response.status,
  };
  // The server sends whole seconds; an HTTP date (which it never sends) is left out.
  const retryAfter = response.headers.get('Retry-After') ?? '';
  if (/^\d+$/.test(retryAfter)) failure.retry_after = Number(retryAfter);
  if (!(response.headers.get('Content-Type') ?? '').startsWith('application/json')) return failure;
  try {
    const { error } = await response.json();
    if (typeof error?.code === 'string') failure.code = error.code;
    if (typeof error?.message === 'string') failure.message = error.message;
  } catch (err) {
    // A body that is not the JSON it claims to be: keep the generic message made above.
    if (!(err instanceof SyntaxError)) throw err;
  }
  return failure;
}

/**
 * Ask the server to stop a run, so the model stops generating (aborting our own connection only
 * ends our reading). Never throws: if the request fails, the server still stops a run that nobody
 * reads after DISCONNECT_GRACE_SECONDS.
 * @param {Urls} urls
 * @param {string} runId
 * @param {(entry: RawEntry) => void} onRaw
 */
export async function stopRun(urls, runId, onRaw) {
  const url = urlFor(urls, 'runStop', runId);
  try {
    const response = await fetch(url, { method: 'POST', signal: AbortSignal.timeout(5000) });
    onRaw(note(`POST ${url} → ${response.status}`));
  } catch (err) {
    // TypeError: a network error. TimeoutError: our own 5 s limit, so Stop never hangs.
    if (!(err instanceof TypeError || err.name === 'TimeoutError')) throw err;
    onRaw(note(`POST ${url} failed (${err.message}); the server's grace period will stop the run`));
  }
}

/**
 * How long to wait before reconnect attempt number `attempt` (1, 2, ...): the server's retry
 * hint, doubled for each failure in a row, at most `capMs`.
 * @param {number} attempt
 * @param {number} baseMs
 * @param {number} [capMs]
 */
export function backoffDelay(attempt, baseMs, capMs = 30_000) {
  return Math.min(capMs, baseMs * 2 ** (attempt - 1));
}

/** A line of commentary for the raw events view (a request, a reconnect). */
export function note(text) {
  return { kind: 'note', text };
}
