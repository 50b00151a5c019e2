// fetch-reader.js: read a run with fetch() and our own incremental SSE parser.
//
// One request does it all: POST /stream with the conversation as JSON, and the response body is
// the event stream. We read the body with `response.body.getReader()`, hand each chunk of bytes
// to SSEParser (sse-parser.js), and turn its events into the callbacks of protocol.js. Put this
// file beside eventsource-reader.js: same function, same callbacks, other transport.
//
// What fetch gives that EventSource cannot: a POST body (the prompt never goes into a URL), our
// own request headers, and the comments (heartbeats) and `retry:` fields, which the raw view shows.
// What EventSource does by itself, we do by hand here: after a network error mid-answer, wait,
// then GET the run's stream URL with a `Last-Event-ID` header, and the server replays only what
// we missed. Attempts back off (the server's retry hint, doubled) and are bounded.
// And because we see the heartbeats, we can tell a live but quiet stream from a dead connection:
// with `silenceMs`, a connection that brings nothing at all for that long is treated as lost.
// A reloaded page picks its run up the same way: `resume` starts with that GET instead of the POST.
//
// MDN, "Using readable streams": https://developer.mozilla.org/en-US/docs/Web/API/Streams_API

import { SSEParser } from './sse-parser.js';
import {
  DEFAULT_RETRY_MS,
  backoffDelay,
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
 * Start a run and read it to its end, resuming after network errors.
 * @param {object} options
 * @param {object} options.body  The request body: {messages, model?}.
 * @param {import('./protocol.js').Urls} options.urls
 * @param {AbortSignal} options.signal  Abort it to stop: the connection closes, the run is stopped.
 * @param {import('./protocol.js').RunCallbacks} options.callbacks
 * @param {number} [options.maxReconnects]  Failed reconnects in a row before giving up.
 * @param {number|null} [options.silenceMs]  No bytes, not even a heartbeat, for this long: the
 *   connection is taken as lost and the run resumed on a new one. Null: wait for the network.
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
  // What survives from one connection to the next.
  const run = { id: null, lastEventId: '', outcome: null, retryMs: DEFAULT_RETRY_MS, progressed: false };
  if (resume !== null) Object.assign(run, { id: resume.runId, lastEventId: resume.lastEventId });
  report.onState('connecting');
  try {
    return await readWithResume({ body, urls, signal, report, run, maxReconnects, silenceMs });
  } catch (err) {
    return await onAbort(err, { signal, urls, runId: run.id, report }); // Stop, or the page going away
  } finally {
    report.onState('done');
  }
}

async function readWithResume({ body, urls, signal, report, run, maxReconnects, silenceMs }) {
  // The first request starts the run (POST), or, for a run already going, resumes it (GET).
  let request = run.id === null ? { method: 'POST', url: urls.stream } : resumeRequest(urls, run);
  let failures = 0;
  let connected = false; // a response arrived, so the server is there
  const fail = (failure) => giveUp({ urls, runId: run.id, report, failure });
  for (;;) {
    try {
      const response = await (request.method === 'POST'
        ? postJson(request.url, body, signal)
        : fetch(request.url, { headers: request.headers, cache: 'no-store', signal })
      ).catch(connectionLost);
      report.onRaw(note(`${request.method} ${request.url} → ${response.status}`));
      // 204 on a resume: nothing more to send, the run is finished or forgotten, and we never
      // saw its terminal event.
      if (response.status === 204) return await fail(clientFailure('stream_ended'));
      if (!response.ok) return await fail(await failureFromResponse(response));
      connected = true;
      report.onState('streaming');
      await readEvents(response.body, run, report, silenceMs);
      if (run.outcome !== null) return run.outcome;
      // The response ended without a terminal event (a server restart, a proxy's time limit).
      report.onRaw(note('the stream ended before the answer did'));
    } catch (err) {
      // Only a network error is ours to retry; an abort (Stop) or a bug goes up to readRun.
      if (!(err instanceof ConnectionLost)) throw err;
      report.onRaw(note(err.message));
    }
    if (run.id === null) {
      // The `start` event never arrived, so there is no run id to resume from.
      report.onFail(clientFailure(connected ? 'network_error' : 'unreachable'));
      return 'failed';
    }
    failures = run.progressed ? 1 : failures + 1;
    run.progressed = false;
    if (failures > maxReconnects) return await fail(clientFailure('network_error'));
    const wait = backoffDelay(failures, run.retryMs);
    report.onState('reconnecting');
    report.onRaw(note(`reconnecting in ${wait} ms with Last-Event-ID: ${run.lastEventId}`));
    await sleep(wait, signal);
    request = resumeRequest(urls, run);
  }
}

// GET the run's events after the last one we dispatched: the server replays only what we missed.
function resumeRequest(urls, run) {
  return { method: 'GET', url: urlFor(urls, 'runStream', run.id), headers: { 'Last-Event-ID': run.lastEventId } };
}

// Read one response body to its end (or to the run's terminal event), feeding the parser.
async function readEvents(responseBody, run, report, silenceMs) {
  const parser = new SSEParser(
    (event) => {
      if (run.outcome !== null) return; // nothing counts after the terminal event
      // The id of the last event we DISPATCHED, which is what a resume must send. Not
      // parser.lastEventId: an `id:` line updates that buffer before its event is complete,
      // so after a cut between `id: 7` and the blank line that ends event 7, it would say 7
      // and the resume would skip a token we never showed. EventSource does the same.
      run.lastEventId = event.id;
      run.progressed = true;
      report.onRaw({ kind: 'event', id: event.id, event: event.type, data: event.data });
      run.outcome = deliver(
        event.type,
        event.data,
        {
          ...report,
          onStart: (start, id) => {
            run.id = start.run;
            report.onStart(start, id);
          },
        },
        event.id,
      );
    },
    {
      onComment: (text) => report.onRaw({ kind: 'comment', text }),
      onRetry: (ms) => {
        run.retryMs = ms;
        report.onRaw({ kind: 'retry', ms });
      },
    },
  );
  const reader = responseBody.getReader();
  let released = false;
  try {
    for (;;) {
      let chunk;
      try {
        chunk = await readWithin(reader, silenceMs);
      } catch (err) {
        if (err instanceof ConnectionLost) throw err; // silence: the finally below cancels the read
        released = true; // a failed read leaves the stream errored: nothing left to release
        connectionLost(err);
      }
      if (chunk.done) {
        released = true;
        break;
      }
      parser.push(chunk.value);
      if (run.outcome !== null) break; // the server closes the stream now anyway
    }
  } finally {
    // Drop a half-received event: a resume asks for it again by its id.
    parser.end();
    // Leaving early (terminal event, or a callback that threw) must still close the connection.
    if (!released) await reader.cancel();
  }
}

/** A network error, as opposed to an abort or a bug: the one failure a resume can mend. */
class ConnectionLost extends Error {}

// Read the next chunk, or throw ConnectionLost if nothing at all arrives within `ms`. A connection
// can die without a word (a phone changing networks, a NAT or proxy forgetting it): read() would
// then wait for the operating system's TCP timeout, many minutes. The server sends a heartbeat
// whenever it has nothing else to send, so silence means the connection is gone.
function readWithin(reader, ms) {
  if (ms === null) return reader.read();
  let timer;
  const silence = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new ConnectionLost(`no data for ${ms / 1000} s: heartbeats stopped`)), ms);
  });
  return Promise.race([reader.read(), silence]).finally(() => clearTimeout(timer));
}

// fetch() and read() report a network error as a TypeError, and an abort as an AbortError.
// A TypeError thrown by a bug in our own code never passes through here, so it is never retried.
function connectionLost(err) {
  if (err instanceof TypeError) throw new ConnectionLost(`network error: ${err.message}`, { cause: err });
  throw err;
}

// Resolve after `ms`, or reject with the abort reason as soon as `signal` aborts.
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    signal.throwIfAborted();
    const wake = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', wake);
      resolve();
    }, ms);
    signal.addEventListener('abort', wake, { once: true });
  });
}
