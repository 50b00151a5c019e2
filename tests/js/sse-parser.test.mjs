// Tests for static/js/sse-parser.js, the page's incremental SSE parser.
//
// Run from the repository root:   node --test tests/js/
// (pytest runs this file too, via tests/test_js_parser.py.)
//
// What is covered: the shared wire vectors that the Python encoder also uses, the
// WHATWG spec's own examples, and one "tricky stream" cut at every byte offset and at
// hundreds of seeded random places, because a network may cut a stream anywhere.
// Spec: https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { SSEParser } from '../../static/js/sse-parser.js';

const encoder = new TextEncoder();

/** Push each chunk (bytes or a string to encode) then end(); return everything the parser reported. */
function parse(chunks) {
  const events = [];
  const comments = [];
  const retries = [];
  const parser = new SSEParser((event) => events.push(event), {
    onComment: (text) => comments.push(text),
    onRetry: (ms) => retries.push(ms),
  });
  for (const chunk of chunks) {
    parser.push(typeof chunk === 'string' ? encoder.encode(chunk) : chunk);
  }
  parser.end();
  return { events, comments, retries };
}

/** A message event, the shape the parser dispatches. */
function message(data, id = '', type = 'message') {
  return { type, data, id };
}

// ---------------------------------------------------------------------------
// Shared vectors: the bytes the Python encoder must produce, read back here.

const vectorsUrl = new URL('../vectors/sse_vectors.json', import.meta.url);
const { vectors } = JSON.parse(readFileSync(vectorsUrl, 'utf-8'));

test('shared vectors file is not empty', () => {
  assert.ok(vectors.length >= 10, `only ${vectors.length} vectors`);
});

for (const vector of vectors) {
  test(`shared vector: ${vector.name}`, () => {
    const { events } = parse([vector.wire]);
    assert.equal(events.length, 1);
    const [event] = events;
    assert.equal(event.type, vector.event);
    assert.equal(event.id, String(vector.id));
    assert.deepEqual(JSON.parse(event.data), vector.data);
  });
}

test('shared vectors concatenated into one stream, whole and one byte at a time', () => {
  const bytes = encoder.encode(vectors.map((v) => v.wire).join(''));
  const oneByteChunks = Array.from(bytes, (b) => Uint8Array.of(b));
  for (const chunks of [[bytes], oneByteChunks]) {
    const { events } = parse(chunks);
    assert.deepEqual(
      events.map((e) => ({ event: e.type, id: e.id, data: JSON.parse(e.data) })),
      vectors.map((v) => ({ event: v.event, id: String(v.id), data: v.data })),
    );
  }
});

// ---------------------------------------------------------------------------
// The spec's own examples (section "Event stream interpretation"), with the
// results the spec text gives for each.

test('spec example: "data: YHOO" / "+2" / "10" is one message with three lines', () => {
  const { events } = parse(['data: YHOO\ndata: +2\ndata: 10\n\n']);
  assert.deepEqual(events, [message('YHOO\n+2\n10')]);
});

test('spec example: ": test stream" with "id: 1", a bare "id", and "data:  third event"', () => {
  const stream =
    ': test stream\n\n' +
    'data: first event\nid: 1\n\n' +
    'data:second event\nid\n\n' +
    'data:  third event\n\n';
  const { events, comments } = parse([stream]);
  // The comment block fires nothing; "id: 1" sets the last event ID before its event
  // fires; a bare "id" resets it to ""; only ONE leading space is removed.
  assert.deepEqual(events, [
    message('first event', '1'),
    message('second event', ''),
    message(' third event', ''),
  ]);
  assert.deepEqual(comments, ['test stream']);
});

test('spec example: "data" / "data" "data" / "data:" fires "" then "\\n", and drops the last block', () => {
  // Spec: "The first block fires events with the data set to the empty string ... The
  // middle block fires an event with the data set to a single newline character. The
  // last block is discarded because it is not followed by a blank line."
  const { events } = parse(['data\n\ndata\ndata\n\ndata:']);
  assert.deepEqual(events, [message(''), message('\n')]);
});

test('spec example: "data:test" and "data: test" fire two identical events', () => {
  const { events } = parse(['data:test\n\ndata: test\n\n']);
  assert.deepEqual(events, [message('test'), message('test')]);
});

// ---------------------------------------------------------------------------
// Single rules, one test each.

test('U+2028, U+2029 and U+0085 are not line breaks', () => {
  const { events } = parse(['data: a\u2028b\u2029c\u0085d\n\u2028\n\n']);
  // "\u2028" alone on a line is a field named "\u2028", not a blank line: ignored.
  assert.deepEqual(events, [message('a\u2028b\u2029c\u0085d')]);
});

test('comments reach onComment with one leading space removed, and fire no event', () => {
  const { events, comments } = parse([': ping\n:\n:  two spaces\n:no space\n\n']);
  assert.deepEqual(events, []);
  assert.deepEqual(comments, ['ping', '', ' two spaces', 'no space']);
});

test('retry reaches onRetry only for ASCII-digit-only values', () => {
  const stream = [
    'retry: 5000', 'retry: 1a', 'retry: -1', 'retry:', 'retry: 1.5', 'retry:  7',
    'retry: +3', 'retry: 0x10', 'retry: \u0661\u0662', 'retry: 250', 'retry: 007',
  ].join('\n') + '\ndata: x\n\n';
  const { events, retries } = parse([stream]);
  assert.deepEqual(retries, [5000, 250, 7]);
  // The last valid retry of the block travels with its event.
  assert.deepEqual(events, [{ ...message('x'), retry: 7 }]);
});

test('an id containing NUL is ignored and the previous id is kept', () => {
  const { events } = parse(['id: 5\ndata: a\n\nid: 6\0\ndata: b\n\n']);
  assert.deepEqual(events, [message('a', '5'), message('b', '5')]);
});

test('a block without data fires nothing, resets the type, but keeps its id', () => {
  const { events } = parse(['event: ignored\nid: 9\n\ndata: x\n\n']);
  assert.deepEqual(events, [message('x', '9')]);
});

test('unknown fields and a field name without a colon are ignored', () => {
  const { events } = parse(['foo: bar\nnocolon\nDATA: upper\ndata : spaced\ndata: x\n\n']);
  assert.deepEqual(events, [message('x')]);
});

test('one leading BOM is dropped; a second one is kept as text', () => {
  const { events } = parse(['\uFEFF\uFEFFdata: a\n\ndata: \uFEFFb\n\n']);
  // The first line's field name is "\uFEFFdata": unknown, so ignored.
  assert.deepEqual(events, [message('\uFEFFb')]);
});

test('end() discards an event whose blank line never came, and an unterminated line', () => {
  assert.deepEqual(parse(['data: complete\n\ndata: incomplete\n']).events, [message('complete')]);
  assert.deepEqual(parse(['data: incomplete']).events, []);
  assert.deepEqual(parse(['data: incomplete\r']).events, []);
});

test('a CR at the end of one chunk and an LF at the start of the next are ONE line ending', () => {
  // Were they two endings, "data: a" would be followed by a blank line and fire alone.
  assert.deepEqual(parse(['data: a\r', '\ndata: b\n\n']).events, [message('a\nb')]);
  // Empty chunks in between (a read that returned nothing) must not lose the pending CR.
  assert.deepEqual(parse(['data: a\r', '', new Uint8Array(0), '\ndata: b\n\n']).events, [
    message('a\nb'),
  ]);
  // But CR then CR is two endings: a line, then a blank line.
  assert.deepEqual(parse(['data: a\r', '\rdata: b\n\n']).events, [message('a'), message('b')]);
});

test('a 4-byte character pushed one byte at a time arrives whole', () => {
  const bytes = encoder.encode('data: \u{1F680}\n\n');
  const { events } = parse(Array.from(bytes, (b) => Uint8Array.of(b)));
  assert.deepEqual(events, [message('\u{1F680}')]);
});

test('the lastEventId getter changes only when a block ends', () => {
  const parser = new SSEParser(() => {});
  assert.equal(parser.lastEventId, '');
  parser.push(encoder.encode('id: 42\n'));
  assert.equal(parser.lastEventId, '', 'an unfinished block does not count yet');
  parser.push(encoder.encode('\n'));
  assert.equal(parser.lastEventId, '42', 'a blank line sets it, even with no data');
});

test('a resume id never points past the last event received whole', () => {
  const ids = [];
  const parser = new SSEParser((event) => ids.push(event.id));
  parser.push(encoder.encode('id: 2\nevent: token\ndata: {}\n\nid: 3\nevent: tok'));
  parser.end();
  assert.deepEqual(ids, ['2']);
  assert.equal(parser.lastEventId, '2');
});

test('the constructor rejects a missing onEvent callback', () => {
  assert.throws(() => new SSEParser(), { name: 'TypeError', message: /onEvent/ });
});

// ---------------------------------------------------------------------------
// The tricky stream: every rule at once, then cut everywhere.

const TRICKY_TEXT = [
  '\uFEFF', //                                  BOM: dropped once, at the very start
  ': hello, tricky stream\r\n', //              comment, CRLF
  '\r\n', //                                    blank line, empty data: nothing fires
  'id: 1\r', //                                 lone CR
  'event: greet\n', //                          lone LF
  'data: h\u00e9llo \u4f60\u597d \u{1F680}\r\n', // 2-, 3- and 4-byte UTF-8
  'data:no-space\r', //                         no space after the colon
  'data:  two spaces\n', //                     only one of two spaces removed
  '\r\n', //                                    -> event 1
  'retry: 2500\r\n',
  'retry: 25x\n', //                            not digits: ignored
  'data\r', //                                  no colon: "data" with an empty value
  'data: line\u2028same line\n', //             U+2028 is not a line end
  'id: bad\u0000id\r\n', //                     NUL: ignored, id stays "1"
  'nocolon\n', //                               unknown field without a colon
  '\r', //                                      LF then CR: -> event 2
  ': ping\r',
  'event: token\r',
  'data: {"text":"\u{1F680}"}\r',
  'unknown: field\r',
  '\r', //                                      CR then CR: -> event 3
  'id\n', //                                    bare id: resets to ""
  'data: after reset\n',
  '\n', //                                      -> event 4
  'event: lost\r\n',
  'data: never dispatched \u{1F680}', //        no line end, no blank line: discarded
].join('');

const TRICKY_BYTES = encoder.encode(TRICKY_TEXT);

const TRICKY_EXPECTED = {
  events: [
    message('h\u00e9llo \u4f60\u597d \u{1F680}\nno-space\n two spaces', '1', 'greet'),
    { ...message('\nline\u2028same line', '1'), retry: 2500 },
    message('{"text":"\u{1F680}"}', '1', 'token'),
    message('after reset', ''),
  ],
  comments: ['hello, tricky stream', 'ping'],
  retries: [2500],
};

/** Cut bytes at the given sorted offsets; empty pieces are kept on purpose. */
function cutAt(bytes, offsets) {
  const pieces = [];
  let start = 0;
  for (const offset of offsets) {
    pieces.push(bytes.subarray(start, offset));
    start = offset;
  }
  pieces.push(bytes.subarray(start));
  return pieces;
}

/** mulberry32: a tiny seeded PRNG, so the "random" cuts are the same on every run. */
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test('tricky stream pushed whole gives exactly the expected events', () => {
  assert.deepEqual(parse([TRICKY_BYTES]), TRICKY_EXPECTED);
});

test('tricky stream cut once at every byte offset gives the same events', () => {
  for (let cut = 0; cut <= TRICKY_BYTES.length; cut++) {
    assert.deepEqual(parse(cutAt(TRICKY_BYTES, [cut])), TRICKY_EXPECTED, `cut at byte ${cut}`);
  }
});

test('tricky stream cut between CR and LF adds no line and no event', () => {
  const crlfCuts = [];
  for (let i = 0; i + 1 < TRICKY_BYTES.length; i++) {
    if (TRICKY_BYTES[i] === 0x0d && TRICKY_BYTES[i + 1] === 0x0a) crlfCuts.push(i + 1);
  }
  assert.equal(crlfCuts.length, 7, 'the tricky stream should hold seven CRLFs');
  for (const cut of crlfCuts) {
    const [first, second] = cutAt(TRICKY_BYTES, [cut]);
    assert.equal(first.at(-1), 0x0d);
    assert.equal(second[0], 0x0a);
    assert.deepEqual(parse([first, second]), TRICKY_EXPECTED, `cut between CR and LF at ${cut}`);
  }
});

test('tricky stream cut inside a 4-byte character keeps the character', () => {
  const rocketStarts = [];
  TRICKY_BYTES.forEach((b, i) => b === 0xf0 && rocketStarts.push(i));
  assert.equal(rocketStarts.length, 3, 'the tricky stream should hold three rockets');
  for (const start of rocketStarts) {
    for (const inside of [1, 2, 3]) {
      const { events } = parse(cutAt(TRICKY_BYTES, [start + inside]));
      const text = events.map((e) => e.data).join('');
      assert.ok(!text.includes('\uFFFD'), `U+FFFD after a cut at ${start}+${inside}`);
      assert.equal(events[0].data, TRICKY_EXPECTED.events[0].data);
      assert.equal(events[2].data, TRICKY_EXPECTED.events[2].data);
    }
  }
});

test('tricky stream cut at 300 seeded random places, 1-byte chunks included, gives the same events', () => {
  const random = mulberry32(0x55e5eed);
  const maxChunkSizes = [1, 2, 3, 4, 5, 8, 13, 64];
  for (let round = 0; round < 300; round++) {
    const maxChunk = maxChunkSizes[round % maxChunkSizes.length];
    const offsets = [];
    let offset = 0;
    while (true) {
      // Now and then a zero-length chunk: reads may return nothing.
      offset += random() < 0.05 ? 0 : 1 + Math.floor(random() * maxChunk);
      if (offset >= TRICKY_BYTES.length) break;
      offsets.push(offset);
    }
    const chunks = cutAt(TRICKY_BYTES, offsets);
    if (maxChunk === 1) assert.ok(chunks.every((c) => c.length <= 1));
    assert.deepEqual(parse(chunks), TRICKY_EXPECTED, `round ${round}, cuts at ${offsets}`);
  }
});
