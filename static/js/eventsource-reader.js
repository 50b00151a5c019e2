// eventsource-reader.js: read a run with the browser's built-in EventSource.
//
// EventSource can only GET, so a run takes two requests: POST /runs with the conversation as
// JSON (the answer is the run's id), then `new EventSource(stream URL)`. The browser parses the
// stream itself and fires one DOM event per SSE event, named by its `event:` field, so we listen
// for `start`, `token`, `done` and `fail`. Put this file beside fetch-reader.js: same function,
// same callbacks, other transport.
//
// What EventSource does by itself: after a dropped connection it waits for the server's `retry:`
// time and GETs the URL again with a `Last-Event-ID` header, so the server replays only what we
// missed. It fires its own `error` event each time it loses the connection (hence the protocol's
// `fail`, not `error`): we show "reconnecting" then, and bound the attempts like the fetch reader.
// What it hides: comments (heartbeats) and `retry:` fields; the raw view shows what it exposes.
// It must be closed on the terminal event: when the server then ends the response, an open
// EventSource would reconnect and ask again. And it sends `Last-Event-ID` only on its own
// reconnects: a reloaded page that picks a run up puts the position in the URL instead
// (`?last_event_id=N`, which the server reads when the header is absent).
//
// MDN, "Using server-sent events":
// https://developer.mozilla.org/en-US/docs/Web/API/Server-sent_events/Using_server-sent_events

import {
  EVENT_NAMES,
  clientFailure,
  deliver,
  failureFromResponse,
  giveUp,
  note,
  onAbort,
  postJson,
  urlFor,
  withDefaults,
} from './protocol.js';

/**
 * Start a run and read it to its end; the browser resumes after network errors.
 * @param {object} options
 * @param {object} options.body  The request body: {messages, model?}.
 * @param {import('./protocol.js').Urls} options.urls
 * @param {AbortSignal} options.signal  Abort it to stop: the EventSource closes, the run is stopped.
 * @param {import('./protocol.js').RunCallbacks} options.callbacks
 * @param {number} [options.maxReconnects]  Failed reconnects in a row before giving up.
 * @param {number|null} [options.silenceMs]  Not used: EventSource hides heartbeats from scripts, so
 *   only the browser can tell a quiet stream from a dead connection (the fetch reader can).
 * @param {{runId: string, lastEventId: string}} [options.resume]  Read this run, already started,
 *   after this event, instead of starting one with `body` (a reloaded page picking its run up).
 * @returns {Promise<'done'|'stopped'|'failed'|'left'>}
 */
export async function readRun({
  body,
  urls,
  signal,
  callbacks,
  maxReconnects = 5,
  silenceMs = null,
  resume = null,
}) {
  const report = withDefaults(callbacks);
  const run = { id: null };
  report.onState('connecting');
  try {
    let url;
    if (resume === null) {
      // Step 1: create the run.
      const response = await postJson(urls.runs, body, signal).catch(unreachable);
      report.onRaw(note(`POST ${urls.runs} → ${response.status}`));
      if (!response.ok) {
        return await giveUp({ urls, runId: null, report, failure: await failureFromResponse(response) });
      }
      run.id = (await response.json()).id;
      url = urlFor(urls, 'runStream', run.id);
    } else {
      // A run already going: EventSource cannot send a Last-Event-ID header on its first request,
      // so the position goes in the query (the server reads the header first, then this).
      run.id = resume.runId;
      const position = new URLSearchParams({ last_event_id: resume.lastEventId });
      url = `${urlFor(urls, 'runStream', run.id)}?${position}`;
    }
    // Step 2: read its events.
    const outcome = await listen(url, { signal, report, maxReconnects });
    if (outcome instanceof GaveUp) return await giveUp({ urls, runId: run.id, report, failure: outcome.failure });
    return outcome;
  } catch (err) {
    if (err instanceof Unreachable) {
      report.onFail(clientFailure('unreachable'));
      return 'failed';
    }
    return await onAbort(err, { signal, urls, runId: run.id, report }); // Stop, or the page going away
  } finally {
    report.onState('done');
  }
}

/** What listen() settles with when it gave up on the run, rather than the run ending. */
class GaveUp {
  constructor(failure) {
    this.failure = failure;
  }
}

// Open an EventSource on `url` and settle with the run's outcome, or a GaveUp; reject if `signal` aborts.
function listen(url, { signal, report, maxReconnects }) {
  return new Promise((resolve, reject) => {
    signal.throwIfAborted();
    const source = new EventSource(url);
    let failures = 0;
    const close = () => {
      source.close();
      signal.removeEventListener('abort', abandon);
    };
    const settle = (outcome) => {
      close();
      resolve(outcome);
    };
    const abandon = () => {
      close();
      reject(signal.reason);
    };
    signal.addEventListener('abort', abandon, { once: true });

    source.addEventListener('open', () => {
      report.onRaw(note(`EventSource open: GET ${url}`));
      report.onState('streaming');
    });
    for (const name of EVENT_NAMES) {
      source.addEventListener(name, (message) => {
        failures = 0;
        // What EventSource exposes of each event: its name, its id and its data.
        report.onRaw({ kind: 'event', id: message.lastEventId, event: message.type, data: message.data });
        const outcome = deliver(name, message.data, report, message.lastEventId);
        if (outcome !== null) settle(outcome); // close before the server's end of stream
      });
    }
    // EventSource's own event: the connection failed or dropped. It carries no detail.
    source.addEventListener('error', () => {
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up for good: the server answered 204 (nothing left to send), an
        // HTTP error, or something that is not an event stream.
        report.onRaw(note('EventSource closed by the browser'));
        settle(new GaveUp(clientFailure('stream_ended')));
        return;
      }
      failures += 1;
      if (failures > maxReconnects) {
        settle(new GaveUp(clientFailure('network_error')));
        return;
      }
      // readyState is CONNECTING: the browser will reconnect on its own, with Last-Event-ID.
      report.onRaw(note('EventSource error: the browser reconnects by itself, sending Last-Event-ID'));
      report.onState('reconnecting');
    });
  });
}

/** The first request could not reach the server at all. */
class Unreachable extends Error {}

// fetch() reports a network error as a TypeError, and an abort as an AbortError.
function unreachable(err) {
  if (err instanceof TypeError) throw new Unreachable(err.message, { cause: err });
  throw err;
}
