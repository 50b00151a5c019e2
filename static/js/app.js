// app.js: wires the page. It keeps the conversation, builds its DOM and hands each answer to one
// of the two readers, fetch-reader.js or eventsource-reader.js, which share one signature
// (protocol.js). It knows nothing about SSE.
//
// Three rules it keeps:
// - Model text and error messages enter the page as text (Text nodes, textContent), never as
//   HTML, so an answer holding `<img src=x onerror=...>` shows those characters and runs nothing.
// - DOM updates are batched: the readers' callbacks only record what changed, and one
//   requestAnimationFrame callback writes it all, so a stream of thousands of tokens a second
//   costs one DOM update per frame, not one per token.
// - URLs come from the server (url_for, rendered into data- attributes), never from this file.

import { historyMessages } from './conversation.js';
import { readRun as readWithEventSource } from './eventsource-reader.js';
import { readRun as readWithFetch } from './fetch-reader.js';
import { RunMetrics, formatMetrics } from './metrics.js';

const READERS = { fetch: readWithFetch, eventsource: readWithEventSource };
const MODE_KEY = 'streamchat.mode';
// The raw view keeps this many rows; older ones are dropped, so a long answer stays cheap.
const RAW_LIMIT = 400;
// What a finish reason other than a plain "stop" means for the reader of the answer.
const FINISH_NOTES = {
  length: 'Cut off at the token limit (max_tokens).',
  content_filter: 'Stopped by the model server’s content filter.',
};

const page = document.getElementById('app');
/** @type {import('./protocol.js').Urls} */
const urls = {
  stream: page.dataset.urlStream,
  runs: page.dataset.urlRuns,
  run: page.dataset.urlRun,
  runStream: page.dataset.urlRunStream,
  runStop: page.dataset.urlRunStop,
  placeholder: page.dataset.runIdPlaceholder,
};
// The server sends a heartbeat whenever it has been quiet this long. No bytes at all for two of
// them and a second more: the fetch reader takes the connection as dead and resumes on a new one.
// (EventSource hides heartbeats from scripts, so it waits for the browser to notice instead.)
const heartbeatSeconds = Number(page.dataset.heartbeatSeconds);
const silenceMs = heartbeatSeconds > 0 ? (2 * heartbeatSeconds + 1) * 1000 : null;
const els = {
  form: document.getElementById('composer'),
  message: document.getElementById('message'),
  send: document.getElementById('send'),
  log: document.getElementById('log'),
  empty: document.getElementById('empty-hint'),
  regenerate: document.getElementById('regenerate'),
  newConversation: document.getElementById('new-conversation'),
  model: document.getElementById('model'), // null when the server offers one model
  connection: document.getElementById('connection'),
  metrics: {
    ttft: page.querySelector('[data-metric="ttft"]'),
    rate: page.querySelector('[data-metric="rate"]'),
    tokens: page.querySelector('[data-metric="tokens"]'),
  },
  raw: document.getElementById('raw'),
  rawHints: document.querySelectorAll('.raw-hint[data-for-mode]'),
  rawList: document.getElementById('raw-list'),
  modes: document.querySelectorAll('input[name="mode"]'),
};

// --- state ---------------------------------------------------------------------------------------

/** The conversation: each turn is a user message and its answer (see conversation.js). */
const turns = [];
/** The run being read: {answer, controller, metrics}; null when idle. */
let active = null;
/** What the status bar shows. */
const status = { connection: 'idle', metrics: null };
/** Raw view rows not yet in the DOM, and the clock their times are shown against. */
const raw = { pending: [], since: performance.now() };

/** One assistant answer: its data and its element (cloned from the page's template). */
class Answer {
  constructor() {
    this.element = cloneTemplate('assistant-template');
    // One Text node that grows: its textContent is exactly the streamed text, and newlines are
    // kept as newlines (CSS white-space: pre-wrap shows them), never turned into <br>.
    this.textNode = document.createTextNode('');
    this.element.querySelector('[data-role="text"]').append(this.textNode);
    this.text = '';
    this.pending = ''; // received, not yet in the DOM
    this.state = 'streaming';
    this.finishReason = null;
    this.failure = null;
    this.stoppedByUser = false;
  }

  receive(text) {
    this.text += text;
    this.pending += text;
  }

  flush() {
    if (this.pending === '') return;
    this.textNode.appendData(this.pending);
    this.pending = '';
  }
}

// --- asking, stopping, regenerating --------------------------------------------------------------

function send() {
  const text = els.message.value;
  if (active !== null || text.trim() === '') return;
  els.message.value = '';
  const element = cloneTemplate('user-template');
  element.querySelector('.bubble').textContent = text;
  els.log.append(element);
  turns.push({ user: text, answer: null });
  ask(turns.at(-1));
}

/** Stream a new answer for `turn` (the last turn) with the chosen reader. */
function ask(turn) {
  // Only the newest answer can be retried: older Retry buttons would rewrite history.
  for (const button of els.log.querySelectorAll('[data-action="retry"]')) button.hidden = true;
  const answer = new Answer();
  turn.answer = answer;
  els.log.append(answer.element);
  els.empty.hidden = true;
  els.log.scrollTop = els.log.scrollHeight; // the reader asked: show where the answer will grow

  const run = { answer, controller: new AbortController(), metrics: new RunMetrics(performance.now()) };
  // Redraw the metrics each second even when nothing arrives: a stalled model shows as a falling rate.
  run.ticker = setInterval(schedule, 1000);
  active = run;
  status.metrics = run.metrics;
  const mode = currentMode();
  clearRaw();
  setBusy(true);

  const body = { messages: historyMessages(turns) };
  if (els.model) body.model = els.model.value;
  // A run we let go of (New conversation) may still report; only the active one may touch the page.
  const current = () => active === run;
  const callbacks = {
    onState: (state) => {
      if (current()) status.connection = state;
      schedule();
    },
    onStart: (start) => {
      answer.element.dataset.runId = start.run;
    },
    onToken: (token) => {
      answer.receive(token.text);
      run.metrics.addToken(token.tokens ?? 1, performance.now());
      schedule();
    },
    onDone: (done) => {
      answer.finishReason = done.finish_reason;
    },
    onFail: (failure) => {
      answer.failure = failure;
    },
    onRaw: (entry) => {
      if (current()) addRaw(entry);
    },
  };
  READERS[mode]({ body, urls, signal: run.controller.signal, callbacks, silenceMs }).then(
    (outcome) => finish(run, outcome),
    (err) => {
      // A bug of ours: say so in the answer rather than leave it "streaming" forever.
      console.error(err);
      answer.failure = { code: 'page_error', message: `This page failed: ${err}`, retryable: true };
      finish(run, 'failed');
    },
  );
}

/** Show how a run ended: text first, then its state, note, buttons and metrics. */
function finish(run, outcome) {
  const { answer, metrics } = run;
  clearInterval(run.ticker);
  answer.flush(); // every received character is in the DOM before data-state says "done"
  answer.state = outcome;
  const element = answer.element;
  element.dataset.state = outcome;
  element.setAttribute('aria-busy', 'false');
  metrics.finish();
  showNote(answer, outcome);
  element.querySelector('[data-action="retry"]').hidden = !(outcome === 'failed' && answer.failure?.retryable);
  element.querySelector('[data-role="metrics"]').textContent = answerMetrics(metrics);
  if (active !== run) return;
  active = null;
  setBusy(false);
  render();
}

function showNote(answer, outcome) {
  const note = answer.element.querySelector('[data-role="note"]');
  const parts = [];
  if (outcome === 'failed' && answer.failure !== null) {
    const { message, code, retry_after: retryAfter } = answer.failure;
    parts.push(message);
    if (typeof retryAfter === 'number') parts.push(`The server asks to wait ${retryAfter} s before retrying.`);
    note.dataset.code = code;
  } else if (outcome === 'stopped') {
    parts.push(answer.stoppedByUser ? 'Stopped by you.' : 'Stopped by the server.');
  } else if (outcome === 'done' && answer.finishReason !== 'stop') {
    parts.push(FINISH_NOTES[answer.finishReason] ?? `Finished: ${answer.finishReason}.`);
  }
  note.dataset.kind = outcome;
  note.textContent = parts.join(' ');
  note.hidden = parts.length === 0;
}

function answerMetrics(metrics) {
  if (metrics.tokens === 0) return '';
  const shown = formatMetrics(metrics, performance.now());
  const parts = [`${shown.tokens} tokens`, `first token ${shown.ttft}`];
  if (shown.rate !== '–') parts.push(`${shown.rate} tokens/s`);
  return parts.join(' · ');
}

/** Stop: the reader closes its connection and POSTs the run's stop URL. */
function stop() {
  if (active === null) return;
  active.answer.stoppedByUser = true;
  active.controller.abort();
}

/** Replace the last answer with a new one (also what Retry does). */
function regenerate() {
  const turn = turns.at(-1);
  if (active !== null || turn === undefined) return;
  turn.answer?.element.remove();
  turn.answer = null;
  ask(turn);
}

function newConversation() {
  // Stop the answer being streamed (its reader still POSTs the stop URL) and let go of it.
  stop();
  active = null;
  turns.length = 0;
  setBusy(false);
  els.log.replaceChildren();
  els.empty.hidden = false;
  clearRaw();
  status.connection = 'idle';
  status.metrics = null;
  render();
  els.message.focus();
}

async function copyAnswer(article, button) {
  const textElement = article.querySelector('[data-role="text"]');
  // The Clipboard API exists only in secure contexts (https, or localhost).
  if (navigator.clipboard === undefined) {
    window.getSelection().selectAllChildren(textElement);
    flash(button, 'Selected: press Ctrl+C');
    return;
  }
  try {
    await navigator.clipboard.writeText(textElement.textContent);
    flash(button, 'Copied');
  } catch (err) {
    // NotAllowedError: the browser refused (no permission, or the page lost focus).
    if (!(err instanceof DOMException)) throw err;
    window.getSelection().selectAllChildren(textElement);
    flash(button, 'Selected: press Ctrl+C');
  }
}

function flash(button, label) {
  const original = button.dataset.label ?? button.textContent;
  button.dataset.label = original;
  button.textContent = label;
  setTimeout(() => {
    button.textContent = original;
  }, 1500);
}

function setBusy(busy) {
  // The send button becomes Stop while a run streams: its accessible name is its text.
  els.send.textContent = busy ? 'Stop' : 'Send';
  els.send.classList.toggle('danger', busy);
  els.regenerate.disabled = busy || turns.length === 0;
}

// --- rendering, once per animation frame ---------------------------------------------------------

let frame = 0;

/** Ask for one render in the next animation frame (several calls before it cost one render). */
function schedule() {
  if (frame === 0) frame = requestAnimationFrame(render);
}

/** Write everything pending into the DOM. */
function render() {
  cancelAnimationFrame(frame);
  frame = 0;
  // Follow the stream only if the reader is at the bottom: never yank them away from older text.
  const log = els.log;
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 48;
  active?.answer.flush();
  flushRaw();
  renderStatus();
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function renderStatus() {
  if (els.connection.dataset.connection !== status.connection) {
    // Written only on change: it is a live region, and a screen reader announces each write.
    els.connection.dataset.connection = status.connection;
    els.connection.textContent = status.connection;
  }
  const shown = formatMetrics(status.metrics, performance.now());
  for (const [name, element] of Object.entries(els.metrics)) element.textContent = shown[name];
}

// --- the raw events view -------------------------------------------------------------------------

function addRaw(entry) {
  raw.pending.push({ entry, at: performance.now() });
  if (raw.pending.length > RAW_LIMIT) raw.pending.splice(0, raw.pending.length - RAW_LIMIT);
  schedule();
}

function clearRaw() {
  raw.pending.length = 0;
  raw.since = performance.now();
  els.rawList.replaceChildren();
}

function flushRaw() {
  if (raw.pending.length === 0) return;
  const rows = raw.pending.map(({ entry, at }) => rawRow(entry, at - raw.since));
  raw.pending.length = 0;
  const list = els.rawList;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 48;
  list.append(...rows);
  const extra = list.childElementCount - RAW_LIMIT;
  for (let i = 0; i < extra; i += 1) list.firstElementChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
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

// --- the reader switch ---------------------------------------------------------------------------

function currentMode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

/** ?mode= forces the mode for this page; else the saved choice; else the fetch reader. */
function initialMode() {
  const forced = new URLSearchParams(window.location.search).get('mode');
  if (Object.hasOwn(READERS, forced)) return forced;
  const saved = storage('get');
  return Object.hasOwn(READERS, saved) ? saved : 'fetch';
}

function chooseMode(mode) {
  for (const radio of els.modes) radio.checked = radio.value === mode;
  for (const hint of els.rawHints) hint.hidden = hint.dataset.forMode !== mode;
}

function onModeChange(mode) {
  chooseMode(mode);
  storage('set', mode);
  // A ?mode= in the address would undo the choice at the next reload: keep it in step.
  const url = new URL(window.location.href);
  if (url.searchParams.has('mode')) {
    url.searchParams.set('mode', mode);
    window.history.replaceState(null, '', url);
  }
}

// localStorage throws when storage is disabled (a privacy setting): the page then works without.
function storage(action, value) {
  try {
    if (action === 'get') return window.localStorage.getItem(MODE_KEY);
    window.localStorage.setItem(MODE_KEY, value);
  } catch (err) {
    if (!(err instanceof DOMException)) throw err;
    console.warn(`the reader choice is not saved: ${err.message}`);
  }
  return null;
}

// --- helpers and event wiring ------------------------------------------------------------------------

function cloneTemplate(id) {
  return document.getElementById(id).content.firstElementChild.cloneNode(true);
}

els.form.addEventListener('submit', (event) => {
  event.preventDefault();
  if (active === null) send();
  else stop();
});

els.message.addEventListener('keydown', (event) => {
  // isComposing: Enter also confirms a word in an input method (Japanese, Chinese); let it.
  if (event.key !== 'Enter' || event.shiftKey || event.isComposing) return;
  event.preventDefault();
  // While an answer streams, Enter does nothing: stopping takes a deliberate click.
  if (active === null) els.form.requestSubmit();
});

els.log.addEventListener('click', (event) => {
  const button = event.target.closest('button[data-action]');
  if (button === null) return;
  if (button.dataset.action === 'retry') regenerate();
  if (button.dataset.action === 'copy') copyAnswer(button.closest('[data-role="assistant"]'), button);
});

els.regenerate.addEventListener('click', regenerate);
els.newConversation.addEventListener('click', newConversation);
for (const radio of els.modes) radio.addEventListener('change', () => onModeChange(radio.value));

chooseMode(initialMode());
// On a wide screen the raw view has its own column: open it there, keep it folded on a phone.
els.raw.open = window.matchMedia('(min-width: 64rem)').matches;
renderStatus();
page.dataset.ready = 'true'; // for tests: the handlers above are attached
