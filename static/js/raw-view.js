// raw-view.js: the "Raw events" panel: what the reader received, frame by frame, as it arrived.
//
// The readers report each event, heartbeat, `retry:` hint and request through their onRaw
// callback (protocol.js, RawEntry). This view queues them and writes the queue into its list
// when app.js renders a frame, with each row's time since the request. It keeps the newest
// RAW_LIMIT rows only, so a long answer stays cheap. Everything is inserted as text.

import { isAtBottom } from './follow.js';

// The view keeps this many rows; older ones are dropped.
const RAW_LIMIT = 400;

/** The raw events list: rows queued by add(), written by flush(). */
export class RawView {
  /** @param {HTMLOListElement} list */
  constructor(list) {
    this.list = list;
    this.pending = [];
    this.since = performance.now();
  }

  /** Queue one entry (a RawEntry from a reader). */
  add(entry) {
    this.pending.push({ entry, at: performance.now() });
    if (this.pending.length > RAW_LIMIT) this.pending.splice(0, this.pending.length - RAW_LIMIT);
  }

  /** Empty the view and restart its clock (a new request). */
  clear() {
    this.pending.length = 0;
    this.since = performance.now();
    this.list.replaceChildren();
  }

  /** Write the queued rows, following the newest if the list was scrolled to its end. */
  flush() {
    if (this.pending.length === 0) return;
    const rows = this.pending.map(({ entry, at }) => rawRow(entry, at - this.since));
    this.pending.length = 0;
    const list = this.list;
    const atBottom = isAtBottom(list);
    list.append(...rows);
    const extra = list.childElementCount - RAW_LIMIT;
    for (let i = 0; i < extra; i += 1) list.firstElementChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  }
}

/** One row of the raw view: the frame as it looked on the wire, with its time since the request. */
function rawRow(entry, ms) {
  const row = document.createElement('li');
  row.dataset.kind = entry.kind;
  const time = document.createElement('span');
  time.className = 'raw-time';
  time.textContent = `+${(ms / 1000).toFixed(3)}`;
  const text = document.createElement('code');
  switch (entry.kind) {
    case 'event':
      row.dataset.event = entry.event;
      text.textContent = `id: ${entry.id}\nevent: ${entry.event}\ndata: ${entry.data}`;
      break;
    case 'comment':
      text.textContent = `: ${entry.text}`;
      break;
    case 'retry':
      text.textContent = `retry: ${entry.ms}`;
      break;
    default: // 'note': what the reader did, not what it received
      text.textContent = entry.text;
  }
  row.append(time, text);
  return row;
}
