// Step 3: read the stream in the browser with fetch(), in small layers (docs/tutorial.md, step 3).
//
// fetch() can POST the prompt, and hands the body over in chunks cut wherever the network cut it:
// inside a line, inside a character. Each layer takes the chunks one step further, bytes -> text ->
// lines -> events, and each fix has its naive twin beside it, the version tutorials write, kept to
// show what it breaks (tests/js/tutorial.test.mjs). The page's own parser, static/js/sse-parser.js,
// is the same idea with the rest of the spec (ids, retry, comments).
//
// Try it in Node 20 (it has fetch) against step 2:
//   node -e 'import("./examples/step3_fetch_reader.mjs").then(async (m) => { for await (const e of
//     m.readAnswer("http://127.0.0.1:8002/stream", [{role: "user", content: "hi"}])) console.log(e); })'

/** Yield the body's chunks of bytes, with getReader(); leaving early cancels the request. */
export async function* chunksOf(body) {
  const reader = body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      yield value;
    }
  } finally {
    await reader.cancel();
  }
}

/** Decode bytes to text. {stream: true} keeps a character cut in two until its other half comes. */
export async function* decode(chunks) {
  const decoder = new TextDecoder();
  for await (const chunk of chunks) yield decoder.decode(chunk, { stream: true });
}

/** The mistake: decoding each chunk on its own turns a character cut in two into U+FFFD. */
export async function* decodeNaive(chunks) {
  for await (const chunk of chunks) yield new TextDecoder().decode(chunk);
}

/** Split text into lines at CRLF, CR or LF, carrying the unfinished last line to the next chunk. */
export async function* lines(texts) {
  let tail = '';
  let crLast = false;
  for await (let text of texts) {
    if (text === '') continue; // the chunk held only part of a character
    if (crLast && text[0] === '\n') text = text.slice(1); // the LF of a CRLF cut in two
    crLast = text.endsWith('\r');
    const parts = (tail + text).split(/\r\n|\r|\n/);
    tail = parts.pop(); // the unfinished line waits for the next chunk
    yield* parts;
  }
}

/** The mistake: splitting each chunk on its own makes a line cut in two into two broken lines. */
export async function* linesNaive(texts) {
  for await (const text of texts) yield* text.split('\n');
}

/** Group lines into events, {event, data}, each ended by a blank line. */
export async function* events(lines) {
  let event = 'message';
  let data = [];
  for await (const line of lines) {
    if (line === '') {
      if (data.length > 0) yield { event, data: data.join('\n') };
      [event, data] = ['message', []];
      continue;
    }
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    const value = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
  }
}

/** POST the messages to `url` and yield the answer's events, {event, data}, with data parsed. */
export async function* readAnswer(url, messages, { signal } = {}) {
  const headers = { 'Content-Type': 'application/json' };
  const response = await fetch(url, { method: 'POST', headers, body: JSON.stringify({ messages }), signal });
  if (!response.ok) throw new Error(`POST ${url} answered ${response.status}`);
  for await (const { event, data } of events(lines(decode(chunksOf(response.body))))) {
    yield { event, data: JSON.parse(data) };
  }
}
