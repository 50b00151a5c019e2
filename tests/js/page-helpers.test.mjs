// Tests for the page's pure helpers: protocol.js, metrics.js, conversation.js.
//
// Run from the repository root:   node --test tests/js/
//
// Each is plain arithmetic or data shaping with no DOM, so tables of input and exact output cover them.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { metricsLine, tokenCount } from '../../static/js/answer.js';
import { historyMessages } from '../../static/js/conversation.js';
import { RunMetrics, formatDuration, formatMetrics } from '../../static/js/metrics.js';
import {
  backoffDelay,
  clientFailure,
  deliver,
  failureFromResponse,
  urlFor,
  withDefaults,
} from '../../static/js/protocol.js';

import { URLS } from './urls.mjs';

// ---------------------------------------------------------------------------
// protocol.js

for (const [name, runId, expected] of [
  ['runStream', 'abc', '/runs/abc/stream'],
  ['runStream', 'a_b-C9', '/runs/a_b-C9/stream'],
  ['runStop', 'x/y?z', '/runs/x%2Fy%3Fz/stop'],
]) {
  test(`urlFor(${name}, ${JSON.stringify(runId)}) is ${expected}`, () => {
    assert.equal(urlFor(URLS, name, runId), expected);
  });
}

test('backoffDelay doubles the server hint per failure, up to the cap', () => {
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6].map((attempt) => backoffDelay(attempt, 3000)),
    [3000, 6000, 12000, 24000, 30000, 30000],
  );
  assert.equal(backoffDelay(3, 200, 500), 500);
});

/** Run deliver() and return [outcome, calls] where calls lists [callback, value]. */
function delivered(name, data) {
  const calls = [];
  const record = (callback) => (value) => calls.push([callback, value]);
  const callbacks = withDefaults({
    onStart: record('onStart'),
    onToken: record('onToken'),
    onDone: record('onDone'),
    onFail: record('onFail'),
  });
  return [deliver(name, data, callbacks), calls];
}

for (const [name, data, outcome, callback] of [
  ['start', '{"run":"r1","model":"demo"}', null, 'onStart'],
  ['token', '{"text":"Hi","tokens":2}', null, 'onToken'],
  ['done', '{"finish_reason":"stop"}', 'done', 'onDone'],
  ['done', '{"finish_reason":"length"}', 'done', 'onDone'],
  ['done', '{"finish_reason":"stopped"}', 'stopped', 'onDone'],
  ['fail', '{"code":"stalled","message":"m","retryable":true}', 'failed', 'onFail'],
]) {
  test(`deliver(${name}, ${data}) calls ${callback} and returns ${outcome}`, () => {
    const [result, calls] = delivered(name, data);
    assert.equal(result, outcome);
    assert.deepEqual(calls, [[callback, JSON.parse(data)]]);
  });
}

for (const [data, message, retryable] of [
  // A service failure without a message gets the page's own words for it...
  ['{"code":"worker_lost"}', 'The server process writing this answer stopped. Try again.', true],
  ['{"code":"shutdown","message":""}', 'The server restarted before the answer was finished. Try again.', true],
  ['{"code":"store_unavailable"}', 'The server lost its run store in the middle of the answer. Try again.', true],
  // ...and the server's own message and flag win when it sends them.
  ['{"code":"worker_lost","message":"Gone.","retryable":false}', 'Gone.', false],
]) {
  test(`deliver(fail, ${data}) reports ${JSON.stringify(message)}`, () => {
    const [outcome, calls] = delivered('fail', data);
    assert.equal(outcome, 'failed');
    assert.deepEqual(calls, [['onFail', { ...JSON.parse(data), message, retryable }]]);
  });
}

test('deliver ignores an unknown event name', () => {
  assert.deepEqual(delivered('message', '{}'), [null, []]);
});

test('deliver turns data that is not JSON into a malformed_event failure', () => {
  const [result, calls] = delivered('token', '{"text": oops');
  assert.equal(result, 'failed');
  assert.deepEqual(calls, [['onFail', clientFailure('malformed_event')]]);
});

test('failureFromResponse reads the API error body', async () => {
  const body = { error: { code: 'invalid_field', message: 'messages must hold at least one message.' } };
  const response = new Response(JSON.stringify(body), {
    status: 400,
    headers: { 'Content-Type': 'application/json' },
  });
  assert.deepEqual(await failureFromResponse(response), {
    code: 'invalid_field',
    message: 'messages must hold at least one message.',
    retryable: false,
    status: 400,
  });
});

for (const [status, retryable] of [
  [400, false],
  [404, false],
  [409, true],
  [413, false],
  [429, true],
  [502, true],
  [503, true],
]) {
  test(`failureFromResponse: HTTP ${status} without a JSON body is retryable=${retryable}`, async () => {
    const failure = await failureFromResponse(new Response('<h1>oops</h1>', { status }));
    assert.deepEqual(failure, {
      code: `http_${status}`,
      message: `The server refused the request (HTTP ${status}).`,
      retryable,
      status,
    });
  });
}

test('failureFromResponse keeps the generic message when the JSON body is broken', async () => {
  const response = new Response('{not json', { status: 503, headers: { 'Content-Type': 'application/json' } });
  assert.equal((await failureFromResponse(response)).code, 'http_503');
});

// ---------------------------------------------------------------------------
// metrics.js

test('metrics: TTFT from the request, token count from the tokens fields, rate after the first', () => {
  const metrics = new RunMetrics(1000);
  assert.deepEqual(formatMetrics(metrics, 1000), { ttft: '–', rate: '–', tokens: '0' });
  metrics.addToken(2, 1400); // first event, 400 ms after the request
  metrics.addToken(1, 1450);
  assert.equal(metrics.ttftMs, 400);
  assert.equal(metrics.tokensPerSecond(1450), null); // 50 ms: too short to mean anything
  metrics.addToken(3, 1900);
  // 4 tokens after the first event, over the 0.6 s since it, up to "now" while streaming.
  assert.deepEqual(formatMetrics(metrics, 2000), { ttft: '400 ms', rate: '6.7', tokens: '6' });
  metrics.finish();
  // Finished: measured up to the last token (0.5 s), whatever "now" is.
  assert.equal(metrics.tokensPerSecond(99_999), 8);
});

test('metrics: tokens counted before a resume are in the count, not in the rate', () => {
  const metrics = new RunMetrics(0, { priorTokens: 40 });
  metrics.addToken(1, 1000);
  metrics.addToken(1, 1500);
  metrics.finish();
  assert.equal(metrics.tokens, 42);
  assert.equal(metrics.tokensPerSecond(2000), 2); // one token after the first, in half a second
});

test('metrics: a resumed run has no TTFT of its own, and its summary line says none', () => {
  for (const priorTokens of [0, 40]) {
    const metrics = new RunMetrics(0, { priorTokens });
    metrics.addToken(1, 20); // 20 ms: the resume's round trip, not the model's thinking
    assert.equal(metrics.ttftMs, null);
    assert.equal(formatMetrics(metrics, 20).ttft, '–');
    assert.equal(metricsLine(metrics, 20), tokenCount(priorTokens + 1));
  }
});

test('formatMetrics of no run shows dashes', () => {
  assert.deepEqual(formatMetrics(null, 0), { ttft: '–', rate: '–', tokens: '–' });
});

for (const [ms, text] of [
  [0, '0 ms'],
  [412.4, '412 ms'],
  [999.4, '999 ms'],
  [1000, '1.00 s'],
  [1254, '1.25 s'],
]) {
  test(`formatDuration(${ms}) is ${text}`, () => {
    assert.equal(formatDuration(ms), text);
  });
}

// ---------------------------------------------------------------------------
// conversation.js

test('history: done and stopped answers go in; failed, empty and streaming ones do not', () => {
  const turns = [
    { user: 'one', answer: { state: 'done', text: 'first answer' } },
    { user: 'two', answer: { state: 'stopped', text: 'partial' } },
    { user: 'three', answer: { state: 'failed', text: 'broken' } },
    { user: 'four', answer: { state: 'stopped', text: '' } },
    { user: 'five', answer: { state: 'streaming', text: 'so far' } },
  ];
  assert.deepEqual(historyMessages(turns), [
    { role: 'user', content: 'one' },
    { role: 'assistant', content: 'first answer' },
    { role: 'user', content: 'two' },
    { role: 'assistant', content: 'partial' },
    { role: 'user', content: 'three' },
    { role: 'user', content: 'four' },
    { role: 'user', content: 'five' },
  ]);
});

test('history of a first question is that question alone', () => {
  assert.deepEqual(historyMessages([{ user: 'hello', answer: null }]), [{ role: 'user', content: 'hello' }]);
});
