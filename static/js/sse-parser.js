// sse-parser.js: the page's incremental Server-Sent Events parser.
//
// Where it sits: the fetch reader calls `reader.read()` in a loop and hands each
// `value` (raw network bytes, cut wherever the network felt like it) to
// `parser.push(value)`; the parser calls `onEvent` once per complete event.
// `EventSource` does all of this inside the browser; we do it by hand because
// `fetch` can POST a prompt and `EventSource` cannot.
//
// It follows the WHATWG rules, step by step, and the comments quote them:
// https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
//
// It works in three small layers:
//   bytes -> text   one TextDecoder with {stream: true}, so a character whose
//                   bytes are split across two chunks is joined, not garbled;
//   text  -> lines  the unfinished last line (and a lone CR) is carried over to
//                   the next push, so a line cut in two is still one line;
//   lines -> events the field rules, applied to one line at a time.
//
// Try it in Node:
//   node -e 'import("./static/js/sse-parser.js").then(({SSEParser}) => {
//     const p = new SSEParser((e) => console.log(e));
//     p.push(new TextEncoder().encode("event: token\ndata: hi\n\n")); })'

/**
 * One dispatched event.
 * @typedef {object} SSEEvent
 * @property {string} type   The `event:` field, or "message" when there was none.
 * @property {string} data   The `data:` lines joined with "\n".
 * @property {string} id     The last event ID: it persists across events until an `id:` changes it.
 * @property {number} [retry] Present only when this event's block carried a valid `retry:`.
 */

/** Incremental parser for one `text/event-stream` response body. */
export class SSEParser {
  // bytes -> text
  #decoder = new TextDecoder('utf-8');
  // text -> lines
  #tail = ''; // the unfinished line carried over from the previous push
  #afterCR = false; // the previous push ended with CR: a leading LF now belongs to it
  // lines -> events (the spec's buffers)
  #data = '';
  #type = '';
  #lastEventId = ''; // the spec's "last event ID buffer": set by `id:` lines as they arrive
  #reconnectId = ''; // the event source's "last event ID string": set only when a block ends
  #retry = undefined; // a valid retry seen in the current block, reported with its event
  // callbacks
  #onEvent;
  #onComment;
  #onRetry;

  /**
   * @param {(event: SSEEvent) => void} onEvent  Called once per dispatched event.
   * @param {object} [options]
   * @param {(text: string) => void} [options.onComment]  Called for each `:` line with the
   *   text after the colon, one leading space removed (": ping" gives "ping"). Servers send
   *   these as heartbeats; the spec says to ignore them, the raw view shows them.
   * @param {(ms: number) => void} [options.onRetry]  Called when a `retry:` field sets a new
   *   reconnection time in milliseconds.
   */
  constructor(onEvent, { onComment, onRetry } = {}) {
    if (typeof onEvent !== 'function') {
      throw new TypeError(`SSEParser needs an onEvent function, got ${typeof onEvent}`);
    }
    this.#onEvent = onEvent;
    this.#onComment = onComment;
    this.#onRetry = onRetry;
  }

  /**
   * What a reconnect should send as `Last-Event-ID`: the id as of the last complete block.
   * An `id:` line of an event that never finished does not count (its data was never seen).
   */
  get lastEventId() {
    return this.#reconnectId;
  }

  /**
   * Feed the next chunk of raw bytes, exactly as `reader.read()` returned it.
   * @param {Uint8Array} chunk
   */
  push(chunk) {
    // {stream: true} keeps an incomplete UTF-8 sequence inside the decoder until
    // the rest of its bytes arrive. Without it, "🚀" cut after two bytes becomes "��".
    // The decoder also drops one leading U+FEFF (BOM) at the start of the stream and
    // no other: exactly the spec's "one leading U+FEFF BYTE ORDER MARK ... is ignored".
    this.#feedText(this.#decoder.decode(chunk, { stream: true }));
  }

  /**
   * Signal the end of the stream: flush the decoder, then drop what is left.
   * Spec: "If the file ends in the middle of an event, before the final empty line,
   * the incomplete event is not dispatched." The same goes for an unterminated last line.
   */
  end() {
    // decode() with no arguments flushes: a truncated character becomes U+FFFD.
    this.#feedText(this.#decoder.decode());
    this.#tail = '';
    this.#afterCR = false;
    this.#data = '';
    this.#type = '';
    this.#retry = undefined;
  }

  // Split text into lines, carrying the unfinished last one over to the next call.
  #feedText(text) {
    if (text === '') return; // e.g. a chunk holding only the first byte of "é"
    if (this.#afterCR) {
      // The last push ended in CR. If this one starts with LF, that CR+LF is ONE line
      // ending that the network happened to cut in two; it must not make a blank line.
      this.#afterCR = false;
      if (text[0] === '\n') text = text.slice(1);
    }
    // A line ends at CRLF, a lone CR or a lone LF, and nowhere else (spec: "end-of-line").
    // U+2028, U+2029 and U+0085 are ordinary characters here, so never split SSE with a
    // "universal newline" helper. (A literal here is a new object per call: its lastIndex
    // stays ours even if a callback pushes more text while we loop.)
    const lineEnd = /\r\n|\r|\n/g;
    let start = 0;
    let match;
    while ((match = lineEnd.exec(text)) !== null) {
      const line = this.#tail + text.slice(start, match.index);
      this.#tail = '';
      start = lineEnd.lastIndex;
      // A CR as the very last character may be the first half of a CRLF.
      this.#afterCR = match[0] === '\r' && start === text.length;
      this.#processLine(line);
    }
    this.#tail += text.slice(start);
  }

  // Apply the spec's rules to one complete line (without its line ending).
  #processLine(line) {
    // "If the line is empty (a blank line): Dispatch the event."
    if (line === '') {
      this.#dispatch();
      return;
    }
    // "If the line starts with a U+003A COLON character (:): Ignore the line."
    if (line[0] === ':') {
      this.#onComment?.(dropOneSpace(line.slice(1)));
      return;
    }
    // "If the line contains a U+003A COLON character: collect the characters on the line
    // before the first colon as field; the rest after it is value, with one leading
    // U+0020 SPACE removed if present." Otherwise the whole line is the field name and
    // the value is the empty string.
    const colon = line.indexOf(':');
    if (colon === -1) {
      this.#processField(line, '');
    } else {
      this.#processField(line.slice(0, colon), dropOneSpace(line.slice(colon + 1)));
    }
  }

  // "Process the field": the four names the spec knows; every other name is ignored.
  #processField(field, value) {
    switch (field) {
      case 'event':
        this.#type = value;
        break;
      case 'data':
        // Each data line adds its value and an LF; dispatch removes the last LF.
        this.#data += value + '\n';
        break;
      case 'id':
        // "If the field value does not contain U+0000 NULL, then set the last event
        // ID buffer to the field value. Otherwise, ignore the field." An empty value
        // is allowed and resets the ID.
        if (!value.includes('\0')) this.#lastEventId = value;
        break;
      case 'retry':
        // "If the field value consists of only ASCII digits, then interpret the field
        // value as an integer in base ten ... Otherwise, ignore the field."
        if (/^[0-9]+$/.test(value)) {
          this.#retry = Number.parseInt(value, 10);
          this.#onRetry?.(this.#retry);
        }
        break;
      default:
        break; // "Otherwise: The field is ignored."
    }
  }

  // "Dispatch the event", on a blank line.
  #dispatch() {
    // Step 1: "Set the last event ID string of the event source to the value of the last
    // event ID buffer." This happens for every blank line, even one that dispatches nothing.
    this.#reconnectId = this.#lastEventId;
    const retry = this.#retry;
    this.#retry = undefined;
    // "If the data buffer is an empty string, set the data buffer and the event type
    // buffer to the empty string and return." (A block of only `event:` or `id:` lines
    // fires nothing, but an `id:` in it still changed the last event ID.)
    if (this.#data === '') {
      this.#type = '';
      return;
    }
    // "If the data buffer's last character is a U+000A LINE FEED (LF) character, then
    // remove the last character from the data buffer." It always is: see `data` above.
    const event = {
      type: this.#type === '' ? 'message' : this.#type,
      data: this.#data.slice(0, -1),
      id: this.#lastEventId,
    };
    if (retry !== undefined) event.retry = retry;
    // Reset before calling out, so a callback that throws cannot leave stale buffers.
    this.#data = '';
    this.#type = '';
    this.#onEvent(event);
  }
}

// The value rule and the comment rule share this: remove ONE leading space, not all.
function dropOneSpace(text) {
  return text[0] === ' ' ? text.slice(1) : text;
}
