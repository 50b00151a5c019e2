// Tests for the two stream readers, fetch-reader.js and eventsource-reader.js, in Node with a fake
// `fetch` and a fake `EventSource`: the resume, stop and failure logic, event by event.
//
// Run from the repository root:   node --test tests/js/
//
// The same behaviours run for real in Chromium against gunicorn in tests/test_page.py; these
// tests pin down the cases a browser test cannot aim at, such as a cut between an event's
// `id:` line and the blank line that ends it.

import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';

import { readRun as readWithEventSource } from '../../static/js/eventsource-reader.js';
import { readRun as readWithFetch } from '../../static/js/fetch-reader.js';
import { clientFailure } from '../../static/js/protocol.js';

import { URLS } from './urls.mjs';

const encoder = new TextEncoder();
const BODY = { messages: [{ role: 'user', content: 'hi' }] };
const realFetch = globalThis.fetch;

afterEach(() => {
  globalThis.fetch = realFetch;
  delete globalThis.EventSource;
  FakeEventSource.instances.length = 0;
});

/** One SSE frame as the server writes it. */
function frame(id, event, data) {
  return `id: ${id}\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

/**
 * An event-stream Response whose body yields `chunks` one read at a time, then ends, or fails
 * like a dropped connection (a TypeError, as browsers report it) when `drop` is true, or goes
 * silent for ever, like a connection that died without a word, when `hang` is true.
 */
function streamResponse(chunks, { drop = false, hang = false, onCancel = () => {} } = {}) {
  let next = 0;
  const body = new ReadableStream(
    {
      pull(controller) {
        if (next < chunks.length) controller.enqueue(encoder.encode(chunks[next++]));
        else if (hang) return new Promise(() => {});
        else if (drop) controller.error(new TypeError('network error'));
        else controller.close();
      },
      cancel: onCancel,
    },
    { highWaterMark: 0 }, // one chunk per read, so a drop comes after exactly these chunks
  );
  return new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
}

function jsonResponse(status, body) {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
}

/** Replace fetch: each call is recorded and answered by the next of `answers` (a value or a function). */
function fakeFetch(answers) {
  const requests = [];
  globalThis.fetch = async (url, init = {}) => {
    init.signal?.throwIfAborted();
    requests.push({ url, method: init.method ?? 'GET', headers: init.headers ?? {}, body: init.body });
    const answer = answers.shift();
    if (answer === undefined) throw new Error(`unexpected request ${init.method} ${url}`);
    return typeof answer === 'function' ? answer() : answer;
  };
  return requests;
}

/** Callbacks that record everything, and the text they saw. */
function recorder() {
  const seen = { states: [], text: '', tokens: 0, starts: [], done: [], fails: [], raw: [] };
  const callbacks = {
    onState: (state) => seen.states.push(state),
    onStart: (start) => seen.starts.push(start),
    onToken: (token) => {
      seen.text += token.text;
      seen.tokens += token.tokens;
    },
    onDone: (done) => seen.done.push(done),
    onFail: (failure) => seen.fails.push(failure),
    onRaw: (entry) => seen.raw.push(entry),
  };
  return { seen, callbacks };
}

/** Read a run with the fetch reader, never stopped, with `options` (maxReconnects, silenceMs). */
function fetchRun(callbacks, options = {}) {
  return readWithFetch({ body: BODY, urls: URLS, signal: new AbortController().signal, callbacks, ...options });
}

const START = frame(1, 'start', { run: 'r1', model: 'demo' });
const TOKENS = ['Hel', 'lo, ', 'wor', 'ld'].map((text, i) => frame(i + 2, 'token', { text, tokens: 1 }));
const DONE = frame(6, 'done', { finish_reason: 'stop' });

// ---------------------------------------------------------------------------
// fetch reader

test('fetch reader: POSTs the body, reports the events in order, ends done', async () => {
  let released = false;
  const chunks = ['retry: 5\n\n', START, ...TOKENS, ': ping\n\n', DONE, ': never read\n\n'];
  const requests = fakeFetch([streamResponse(chunks, { onCancel: () => (released = true) })]);
  const { seen, callbacks } = recorder();
  const outcome = await fetchRun(callbacks);
  assert.equal(outcome, 'done');
  assert.deepEqual(requests, [
    { url: '/stream', method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(BODY) },
  ]);
  assert.equal(seen.text, 'Hello, world');
  assert.equal(seen.tokens, 4);
  assert.deepEqual(seen.starts, [{ run: 'r1', model: 'demo' }]);
  assert.deepEqual(seen.done, [{ finish_reason: 'stop' }]);
  assert.deepEqual(seen.states, ['connecting', 'streaming', 'done']);
  assert.ok(released, 'the response was not released after the terminal event');
  // The raw view gets the retry hint and the heartbeat, which only the fetch reader can see.
  assert.deepEqual(
    seen.raw.filter((e) => e.kind !== 'event'),
    [{ kind: 'note', text: 'POST /stream → 200' }, { kind: 'retry', ms: 5 }, { kind: 'comment', text: 'ping' }],
  );
});

test('fetch reader: a cut between "id: 4" and the end of event 4 resumes from 3, no loss, no duplicates', async () => {
  const cutInsideEvent4 = TOKENS[2].slice(0, 'id: 4\nevent: tok'.length);
  const requests = fakeFetch([
    streamResponse(['retry: 1\n\n', START, TOKENS[0], TOKENS[1], cutInsideEvent4], { drop: true }),
    streamResponse(['retry: 1\n\n', TOKENS[2], TOKENS[3], DONE]),
  ]);
  const { seen, callbacks } = recorder();
  const outcome = await fetchRun(callbacks);
  assert.equal(outcome, 'done');
  assert.equal(requests[1].url, '/runs/r1/stream');
  assert.equal(requests[1].method, 'GET');
  assert.deepEqual(requests[1].headers, { 'Last-Event-ID': '3' });
  assert.equal(seen.text, 'Hello, world');
  assert.equal(seen.tokens, 4);
  assert.deepEqual(seen.states, ['connecting', 'streaming', 'reconnecting', 'streaming', 'done']);
});

test('fetch reader: a refused request is a failure with the server message, and no retry', async () => {
  const error = { error: { code: 'too_many_messages', message: 'At most 200 messages are allowed.' } };
  const requests = fakeFetch([jsonResponse(400, error)]);
  const { seen, callbacks } = recorder();
  const outcome = await fetchRun(callbacks);
  assert.equal(outcome, 'failed');
  assert.equal(requests.length, 1);
  assert.deepEqual(seen.fails, [
    { code: 'too_many_messages', message: 'At most 200 messages are allowed.', retryable: false, status: 400 },
  ]);
  assert.deepEqual(seen.states, ['connecting', 'done']);
});

test('fetch reader: no server at all is "unreachable", without a resume', async () => {
  fakeFetch([() => Promise.reject(new TypeError('Failed to fetch'))]);
  const { seen, callbacks } = recorder();
  const outcome = await fetchRun(callbacks);
  assert.equal(outcome, 'failed');
  assert.deepEqual(seen.fails, [clientFailure('unreachable')]);
});

test('fetch reader: a stream that drops before its start event cannot be resumed: network_error', async () => {
  const requests = fakeFetch([streamResponse(['retry: 1\n\n'], { drop: true })]);
  const { seen, callbacks } = recorder();
  const outcome = await fetchRun(callbacks);
  assert.equal(outcome, 'failed');
  assert.equal(requests.length, 1);
  assert.deepEqual(seen.fails, [clientFailure('network_error')]);
});

test('fetch reader: gives up after maxReconnects failed resumes in a row, and stops the run', async () => {
  const down = () => Promise.reject(new TypeError('Failed to fetch'));
  const requests = fakeFetch([
    streamResponse(['retry: 1\n\n', START, TOKENS[0]], { drop: true }),
    down,
    down,
    down,
    down, // the stop request: the server is still away, so the grace period will stop the run
  ]);
  const { seen, callbacks } = recorder();
  const outcome = await fetchRun(callbacks, { maxReconnects: 3 });
  assert.equal(outcome, 'failed');
  assert.equal(requests.length, 5);
  assert.deepEqual(requests.at(-1), { url: '/runs/r1/stop', method: 'POST', headers: {}, body: undefined });
  assert.deepEqual(seen.fails, [clientFailure('network_error')]);
  // Backoff: the server's 1 ms hint, doubled per failure in a row.
  assert.deepEqual(
    seen.raw.filter((e) => e.kind === 'note' && e.text.startsWith('reconnecting')).map((e) => e.text),
    ['reconnecting in 1 ms with Last-Event-ID: 2', 'reconnecting in 2 ms with Last-Event-ID: 2',
      'reconnecting in 4 ms with Last-Event-ID: 2'],
  );
});

test('fetch reader: drops with progress between them are not "in a row": more of them than maxReconnects still finish', async () => {
  // Each connection brings one more token, then drops: four drops, with maxReconnects 2.
  const requests = fakeFetch([
    streamResponse(['retry: 1\n\n', START, TOKENS[0]], { drop: true }),
    streamResponse(['retry: 1\n\n', TOKENS[1]], { drop: true }),
    streamResponse(['retry: 1\n\n', TOKENS[2]], { drop: true }),
    streamResponse(['retry: 1\n\n', TOKENS[3]], { drop: true }),
    streamResponse(['retry: 1\n\n', DONE]),
  ]);
  const { seen, callbacks } = recorder();
  const outcome = await fetchRun(callbacks, { maxReconnects: 2 });
  assert.equal(outcome, 'done');
  assert.equal(seen.text, 'Hello, world');
  assert.deepEqual(requests.slice(1).map((r) => r.headers['Last-Event-ID']), ['2', '3', '4', '5']);
});

// A bounded test: without the watchdog, this read would wait for ever.
test('fetch reader: a connection silent past silenceMs (no heartbeat) is dropped and the run resumed', { timeout: 5000 }, async () => {
  let cancelled = false;
  const requests = fakeFetch([
    streamResponse(['retry: 1\n\n', START, TOKENS[0]], { hang: true, onCancel: () => (cancelled = true) }),
    streamResponse([...TOKENS.slice(1), DONE]),
  ]);
  const { seen, callbacks } = recorder();
  const outcome = await fetchRun(callbacks, { silenceMs: 50 });
  assert.equal(outcome, 'done');
  assert.ok(cancelled, 'the silent connection was not closed');
  assert.equal(seen.text, 'Hello, world');
  assert.deepEqual(requests[1].headers, { 'Last-Event-ID': '2' });
  assert.ok(seen.raw.some((e) => e.kind === 'note' && e.text === 'no data for 0.05 s: heartbeats stopped'));
});

test('fetch reader: heartbeats keep a quiet connection alive past silenceMs', async () => {
  const ping = ': ping\n\n';
  const slowly = (chunks) => {
    let next = 0;
    const body = new ReadableStream(
      {
        async pull(controller) {
          await new Promise((resolve) => setTimeout(resolve, 30)); // far under silenceMs each, 390 ms in all
          if (next < chunks.length) controller.enqueue(encoder.encode(chunks[next++]));
          else controller.close();
        },
      },
      { highWaterMark: 0 },
    );
    return new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
  };
  const requests = fakeFetch([slowly([START, ...Array(10).fill(ping), TOKENS.join(''), DONE])]);
  const { seen, callbacks } = recorder();
  // Silent longer than this: a loaded machine's late timer (170 ms of room per read) is not silence.
  const outcome = await fetchRun(callbacks, { silenceMs: 200 });
  assert.equal(outcome, 'done');
  assert.equal(requests.length, 1);
  assert.equal(seen.text, 'Hello, world');
});

test('fetch reader: a resume answered 204 means the run is gone: stream_ended, then the give-up stop', async () => {
  // Both readers give up the same way (protocol.js giveUp): the stop is harmless on a finished run,
  // and EventSource cannot tell a 204 from other refusals, so neither reader tries to.
  const requests = fakeFetch([
    streamResponse(['retry: 1\n\n', START], { drop: true }),
    new Response(null, { status: 204 }),
    jsonResponse(200, { id: 'r1', state: 'done' }),
  ]);
  const { seen, callbacks } = recorder();
  const outcome = await fetchRun(callbacks);
  assert.equal(outcome, 'failed');
  assert.deepEqual(seen.fails, [clientFailure('stream_ended')]);
  assert.deepEqual(
    requests.map((r) => `${r.method} ${r.url}`),
    ['POST /stream', 'GET /runs/r1/stream', 'POST /runs/r1/stop'],
  );
});

test('fetch reader: a resume refused (409, fell behind the log) fails and stops the run', async () => {
  const requests = fakeFetch([
    streamResponse(['retry: 1\n\n', START, TOKENS[0]], { drop: true }),
    jsonResponse(409, { error: { code: 'events_dropped', message: 'Too far behind.' } }),
    jsonResponse(202, { id: 'r1', state: 'running' }),
  ]);
  const { seen, callbacks } = recorder();
  const outcome = await fetchRun(callbacks);
  assert.equal(outcome, 'failed');
  assert.equal(seen.fails[0].code, 'events_dropped');
  assert.deepEqual(
    requests.map((r) => `${r.method} ${r.url}`),
    ['POST /stream', 'GET /runs/r1/stream', 'POST /runs/r1/stop'],
  );
});

test('fetch reader: a fail event from the server ends the run there: nothing to stop', async () => {
  const failed = frame(3, 'fail', { code: 'stalled', message: 'The model stopped.', retryable: true });
  const requests = fakeFetch([streamResponse([START, TOKENS[0], failed])]);
  const { seen, callbacks } = recorder();
  const outcome = await fetchRun(callbacks);
  assert.equal(outcome, 'failed');
  assert.equal(seen.fails[0].code, 'stalled');
  assert.equal(requests.length, 1);
});

test('fetch reader: abort mid-stream closes the stream, POSTs the stop URL, ends stopped', async () => {
  const controller = new AbortController();
  const body = new ReadableStream({
    start(stream) {
      stream.enqueue(encoder.encode(START + TOKENS[0]));
      // As in a browser: aborting a fetch errors its response body.
      controller.signal.addEventListener('abort', () => stream.error(controller.signal.reason));
    },
  });
  const requests = fakeFetch([
    new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } }),
    jsonResponse(202, { id: 'r1', state: 'running' }),
  ]);
  const { seen, callbacks } = recorder();
  callbacks.onToken = () => controller.abort(); // Stop, as soon as the first token shows
  const outcome = await readWithFetch({ body: BODY, urls: URLS, signal: controller.signal, callbacks });
  assert.equal(outcome, 'stopped');
  assert.deepEqual(requests.map((r) => `${r.method} ${r.url}`), ['POST /stream', 'POST /runs/r1/stop']);
  assert.deepEqual(seen.states, ['connecting', 'streaming', 'done']);
});

// ---------------------------------------------------------------------------
// EventSource reader

/** A stand-in for the browser's EventSource that the test drives by hand. */
class FakeEventSource extends EventTarget {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSED = 2;
  static instances = [];

  constructor(url) {
    super();
    this.url = url;
    this.readyState = FakeEventSource.CONNECTING;
    FakeEventSource.instances.push(this);
  }

  close() {
    this.readyState = FakeEventSource.CLOSED;
  }

  open() {
    this.readyState = FakeEventSource.OPEN;
    this.dispatchEvent(new Event('open'));
  }

  emit(id, name, data) {
    this.dispatchEvent(new MessageEvent(name, { data: JSON.stringify(data), lastEventId: String(id) }));
  }

  /** The connection dropped: the browser will reconnect (readyState CONNECTING) or has given up. */
  error(readyState) {
    this.readyState = readyState;
    this.dispatchEvent(new Event('error'));
  }
}

/** Wait (a bounded number of turns of the event loop) until the reader has opened its EventSource. */
async function openedSource() {
  for (let turn = 0; turn < 100 && FakeEventSource.instances.length === 0; turn += 1) {
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.equal(FakeEventSource.instances.length, 1, 'no EventSource was opened');
  return FakeEventSource.instances[0];
}

function startEventSourceRun(signal = new AbortController().signal, answers = [], options = {}) {
  globalThis.EventSource = FakeEventSource;
  const requests = fakeFetch([
    jsonResponse(201, { id: 'r1', stream_url: '/runs/r1/stream', stop_url: '/runs/r1/stop' }),
    ...answers,
  ]);
  const { seen, callbacks } = recorder();
  const result = readWithEventSource({ body: BODY, urls: URLS, signal, callbacks, ...options });
  return { requests, seen, result };
}

test('EventSource reader: POST /runs, then listens, and closes on the terminal event', async () => {
  const { requests, seen, result } = startEventSourceRun();
  const source = await openedSource();
  assert.equal(source.url, '/runs/r1/stream');
  source.open();
  source.emit(1, 'start', { run: 'r1', model: 'demo' });
  source.emit(2, 'token', { text: 'Hi', tokens: 2 });
  source.emit(3, 'message', { ignored: true }); // not a protocol event: ignored
  source.emit(4, 'done', { finish_reason: 'length' });
  assert.equal(await result, 'done');
  assert.equal(source.readyState, FakeEventSource.CLOSED);
  assert.deepEqual(requests.map((r) => `${r.method} ${r.url}`), ['POST /runs']);
  assert.equal(requests[0].body, JSON.stringify(BODY));
  assert.equal(seen.text, 'Hi');
  assert.equal(seen.tokens, 2);
  assert.deepEqual(seen.done, [{ finish_reason: 'length' }]);
  assert.deepEqual(seen.states, ['connecting', 'streaming', 'done']);
  assert.deepEqual(seen.raw.filter((e) => e.kind === 'event').map((e) => [e.id, e.event]), [
    ['1', 'start'],
    ['2', 'token'],
    ['4', 'done'],
  ]);
});

test('EventSource reader: a dropped connection shows "reconnecting", then goes on', async () => {
  const { seen, result } = startEventSourceRun();
  const source = await openedSource();
  source.open();
  source.emit(1, 'start', { run: 'r1', model: 'demo' });
  source.emit(2, 'token', { text: 'a', tokens: 1 });
  source.error(FakeEventSource.CONNECTING);
  source.open(); // the browser reconnected, with Last-Event-ID: 2
  source.emit(3, 'token', { text: 'b', tokens: 1 });
  source.emit(4, 'fail', { code: 'stalled', message: 'The model stopped.', retryable: true });
  assert.equal(await result, 'failed');
  assert.equal(seen.text, 'ab');
  assert.deepEqual(seen.fails, [{ code: 'stalled', message: 'The model stopped.', retryable: true }]);
  assert.deepEqual(seen.states, ['connecting', 'streaming', 'reconnecting', 'streaming', 'done']);
});

test('EventSource reader: the browser giving up (CLOSED) is stream_ended, and the run is stopped', async () => {
  const { requests, seen, result } = startEventSourceRun(undefined, [jsonResponse(202, { state: 'running' })]);
  const source = await openedSource();
  source.error(FakeEventSource.CLOSED);
  assert.equal(await result, 'failed');
  assert.deepEqual(seen.fails, [clientFailure('stream_ended')]);
  assert.deepEqual(requests.map((r) => `${r.method} ${r.url}`), ['POST /runs', 'POST /runs/r1/stop']);
});

test('EventSource reader: gives up after maxReconnects errors without an event between, and stops the run', async () => {
  const stopped = [jsonResponse(202, { state: 'running' })];
  const { requests, seen, result } = startEventSourceRun(undefined, stopped, { maxReconnects: 2 });
  const source = await openedSource();
  for (let i = 0; i < 3; i += 1) source.error(FakeEventSource.CONNECTING);
  assert.equal(await result, 'failed');
  assert.equal(source.readyState, FakeEventSource.CLOSED);
  assert.deepEqual(seen.fails, [clientFailure('network_error')]);
  assert.deepEqual(requests.map((r) => `${r.method} ${r.url}`), ['POST /runs', 'POST /runs/r1/stop']);
});

test('EventSource reader: errors with an event between them are not "in a row": more of them than maxReconnects still finish', async () => {
  const { requests, seen, result } = startEventSourceRun(undefined, [], { maxReconnects: 2 });
  const source = await openedSource();
  source.open();
  source.emit(1, 'start', { run: 'r1', model: 'demo' });
  for (const [id, text] of [[2, 'a'], [3, 'b'], [4, 'c'], [5, 'd']]) {
    source.error(FakeEventSource.CONNECTING); // four drops in all, each followed by an event
    source.open();
    source.emit(id, 'token', { text, tokens: 1 });
  }
  source.emit(6, 'done', { finish_reason: 'stop' });
  assert.equal(await result, 'done');
  assert.equal(seen.text, 'abcd');
  assert.deepEqual(requests.map((r) => `${r.method} ${r.url}`), ['POST /runs']);
});

test('EventSource reader: abort closes the EventSource, POSTs the stop URL, ends stopped', async () => {
  const controller = new AbortController();
  const { requests, result } = startEventSourceRun(controller.signal, [jsonResponse(202, { state: 'running' })]);
  const source = await openedSource();
  source.open();
  source.emit(1, 'start', { run: 'r1', model: 'demo' });
  controller.abort();
  assert.equal(await result, 'stopped');
  assert.equal(source.readyState, FakeEventSource.CLOSED);
  assert.deepEqual(requests.map((r) => `${r.method} ${r.url}`), ['POST /runs', 'POST /runs/r1/stop']);
});

test('EventSource reader: a refused POST /runs is a failure with the server message', async () => {
  globalThis.EventSource = FakeEventSource;
  const error = { error: { code: 'too_many_runs', message: 'The server is at capacity. Try again shortly.' } };
  fakeFetch([jsonResponse(503, error)]);
  const { seen, callbacks } = recorder();
  const outcome = await readWithEventSource({
    body: BODY,
    urls: URLS,
    signal: new AbortController().signal,
    callbacks,
  });
  assert.equal(outcome, 'failed');
  assert.equal(FakeEventSource.instances.length, 0);
  assert.deepEqual(seen.fails, [
    { code: 'too_many_runs', message: 'The server is at capacity. Try again shortly.', retryable: true, status: 503 },
  ]);
});

// ---------------------------------------------------------------------------
// Both readers: picking up a run already going (a reloaded page), and the event ids they pass on

test('fetch reader: resume GETs the run after lastEventId, with no POST, and reads it to its end', async () => {
  const requests = fakeFetch([streamResponse(['retry: 1\n\n', TOKENS[2], TOKENS[3], DONE])]);
  const ids = [];
  const { seen, callbacks } = recorder();
  const outcome = await fetchRun({ ...callbacks, onToken: (token, id) => ids.push([token.text, id]) }, {
    resume: { runId: 'r1', lastEventId: '3' },
  });
  assert.equal(outcome, 'done');
  assert.deepEqual(requests, [{ url: '/runs/r1/stream', method: 'GET', headers: { 'Last-Event-ID': '3' }, body: undefined }]);
  assert.deepEqual(ids, [['wor', '4'], ['ld', '5']]);
  assert.deepEqual(seen.states, ['connecting', 'streaming', 'done']);
});

test('fetch reader: every event callback gets the event id as its second argument', async () => {
  fakeFetch([streamResponse([START, ...TOKENS, DONE])]);
  const ids = [];
  const record = (name) => (value, id) => ids.push([name, id]);
  await fetchRun({ onStart: record('start'), onToken: record('token'), onDone: record('done') });
  assert.deepEqual(ids, [['start', '1'], ['token', '2'], ['token', '3'], ['token', '4'], ['token', '5'], ['done', '6']]);
});

test('EventSource reader: resume opens the stream URL with ?last_event_id=, and no POST', async () => {
  globalThis.EventSource = FakeEventSource;
  const requests = fakeFetch([]);
  const ids = [];
  const { seen, callbacks } = recorder();
  const result = readWithEventSource({
    body: null,
    urls: URLS,
    signal: new AbortController().signal,
    callbacks: { ...callbacks, onToken: (token, id) => ids.push([token.text, id]) },
    resume: { runId: 'r1', lastEventId: '3' },
  });
  const source = await openedSource();
  assert.equal(source.url, '/runs/r1/stream?last_event_id=3');
  source.open();
  source.emit(4, 'token', { text: 'wor', tokens: 1 });
  source.emit(5, 'token', { text: 'ld', tokens: 1 });
  source.emit(6, 'done', { finish_reason: 'stop' });
  assert.equal(await result, 'done');
  assert.deepEqual(requests, []);
  assert.deepEqual(ids, [['wor', '4'], ['ld', '5']]);
  assert.deepEqual(seen.done, [{ finish_reason: 'stop' }]);
});

test('EventSource reader: resume of a run the server no longer has (CLOSED) gives up like the fetch reader', async () => {
  globalThis.EventSource = FakeEventSource;
  const requests = fakeFetch([jsonResponse(404, { error: { code: 'unknown_run', message: 'No such run.' } })]);
  const { seen, callbacks } = recorder();
  const result = readWithEventSource({
    body: null,
    urls: URLS,
    signal: new AbortController().signal,
    callbacks,
    resume: { runId: 'r1', lastEventId: '3' },
  });
  (await openedSource()).error(FakeEventSource.CLOSED);
  assert.equal(await result, 'failed');
  assert.deepEqual(seen.fails, [clientFailure('stream_ended')]);
  assert.deepEqual(requests.map((r) => `${r.method} ${r.url}`), ['POST /runs/r1/stop']);
});
