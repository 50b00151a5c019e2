// Tests for the tutorial's step 3, examples/step3_fetch_reader.mjs: the fetch() reader, layer by
// layer, over a real socket. A node:http server on 127.0.0.1 writes an answer in pieces cut where
// the network may cut it, and each piece arrives in a read of its own: the server writes the next
// one only once the test has read the last (or, for readAnswer, after a pause). The naive layers
// (the tutorials' split-on-newline and decode-each-chunk) break; ours do not.
//
// Run from the repository root:   node --test tests/js/tutorial.test.mjs

import assert from 'node:assert/strict';
import { EventEmitter, once } from 'node:events';
import http from 'node:http';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  chunksOf,
  decode,
  decodeNaive,
  events,
  lines,
  linesNaive,
  readAnswer,
} from '../../examples/step3_fetch_reader.mjs';

const encoder = new TextEncoder();
const PAUSE_MS = 50; // between two writes when nobody says a piece was read

// What the server sends at each path, write by write.
const DONE = 'id: 2\nevent: done\ndata: {"finish_reason":"stop"}\n\n';
const rocket = encoder.encode('id: 1\nevent: token\ndata: {"text":"🚀"}\n\n');
const rocketAt = rocket.indexOf(0xf0); // the first of the rocket's four bytes
const BODIES = {
  // An event cut in the middle of its data line.
  '/cut-line': ['id: 1\nevent: token\ndata: {"text":"Hel', 'lo"}\n\n' + DONE],
  // A line cut between its CR and its LF, and an event cut just before its blank line.
  '/cut-crlf': ['id: 1\r\nevent: token\r', '\ndata: {"text":"Hello"}\r\n', '\r\n' + DONE],
  // A four-byte character cut after its second byte, at the very end of a read.
  '/cut-char': [rocket.slice(0, rocketAt + 2), rocket.slice(rocketAt + 2), DONE],
  // A long answer, for a reader that leaves early.
  '/long': Array.from({ length: 10 }, (_, i) => `id: ${i + 1}\nevent: token\ndata: {"text":"${i}"}\n\n`),
};

let server;
let base;
const closedEarly = []; // the paths whose response the client closed before it ended
const reads = new EventEmitter(); // 'read' each time get() has received a piece

before(async () => {
  server = http.createServer(async (request, response) => {
    const { pathname, searchParams } = new URL(request.url, 'http://127.0.0.1');
    const body = BODIES[pathname];
    response.writeHead(200, { 'Content-Type': 'text/event-stream' });
    response.on('close', () => {
      if (!response.writableFinished) closedEarly.push(pathname);
    });
    for (const piece of body) {
      if (response.destroyed) return;
      const read = searchParams.has('ack') ? once(reads, 'read') : sleep(PAUSE_MS);
      response.write(typeof piece === 'string' ? encoder.encode(piece) : piece);
      await read;
    }
    response.end();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  base = `http://127.0.0.1:${server.address().port}`;
});

after(() => {
  server.closeAllConnections(); // the kept-alive ones too, or close() waits for their timeout
  server.close();
});

/** GET `path` and yield its chunks as the network delivered them, telling the server each time. */
async function* get(path) {
  const response = await fetch(`${base}${path}?ack`);
  for await (const chunk of chunksOf(response.body)) {
    reads.emit('read');
    yield chunk;
  }
}

async function collect(iterable) {
  const all = [];
  for await (const item of iterable) all.push(item);
  return all;
}

test('the server cuts each body where the test says: one read per write', async () => {
  for (const [path, body] of Object.entries(BODIES)) {
    assert.equal((await collect(get(path))).length, body.length, path);
  }
});

test('readAnswer joins a line cut across two reads', async () => {
  assert.deepEqual(await collect(readAnswer(base + '/cut-line', [])), [
    { event: 'token', data: { text: 'Hello' } },
    { event: 'done', data: { finish_reason: 'stop' } },
  ]);
});

test('the mistake: splitting each read on \\n corrupts a line cut across two reads', async () => {
  const seen = await collect(events(linesNaive(decode(get('/cut-line')))));
  // The first half became a whole line, the second half a line of its own (an unknown field).
  assert.deepEqual(seen, [
    { event: 'token', data: '{"text":"Hel' },
    { event: 'done', data: '{"finish_reason":"stop"}' },
  ]);
  assert.throws(() => JSON.parse(seen[0].data), SyntaxError);
});

test('lines joins a CRLF cut between its CR and its LF', async () => {
  assert.deepEqual(await collect(events(lines(decode(get('/cut-crlf'))))), [
    { event: 'token', data: '{"text":"Hello"}' },
    { event: 'done', data: '{"finish_reason":"stop"}' },
  ]);
});

test('readAnswer joins a character cut across two reads', async () => {
  const [token] = await collect(readAnswer(base + '/cut-char', []));
  assert.deepEqual(token, { event: 'token', data: { text: '🚀' } });
});

test('the mistake: decode(chunk) without {stream: true} turns a cut character into U+FFFD', async () => {
  const [token] = await collect(events(lines(decodeNaive(get('/cut-char')))));
  // One U+FFFD for the two bytes before the cut, one for each of the two after it.
  assert.deepEqual(token, { event: 'token', data: '{"text":"\uFFFD\uFFFD\uFFFD"}' });
});

test('a reader that leaves early closes the connection', async () => {
  for await (const event of readAnswer(base + '/long', [])) {
    assert.deepEqual(event, { event: 'token', data: { text: '0' } });
    break;
  }
  await sleep(PAUSE_MS * 2);
  assert.deepEqual(closedEarly, ['/long']);
});
