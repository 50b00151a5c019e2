// app.js: wires the page. It keeps the conversation, hands each answer to one of the two readers,
// fetch-reader.js or eventsource-reader.js, which share one signature (protocol.js), and renders
// what they report. It knows nothing about SSE. Its neighbours each do one job: answer.js is one
// answer bubble (with markdown.js), raw-view.js the raw events panel, saved-conversation.js what
// survives a reload, conversation.js what the server is sent, metrics.js the numbers,
// reader-mode.js the reader switch, clipboard.js the Copy buttons, sign-in.js the access token form.
//
// Rules it keeps:
// - Model text and error messages enter the page as text (Text nodes, textContent), or through
//   markdown.js, which escapes the model's own markup and sanitizes the rest: an answer holding
//   `<img src=x onerror=...>` shows those characters and runs nothing.
// - DOM updates are batched: the readers' callbacks only record what changed, and one
//   requestAnimationFrame callback writes it all, so a stream of thousands of tokens a second
//   costs one DOM update per frame, not one per token.
// - Every outcome leaves the newest content in view if the user was at the bottom: whether they
//   were is read BEFORE the DOM changes, then the log is scrolled after.
// - Screen readers hear an answer once, when it has finished (the log itself is not live: it
//   would read every token), and hear a failure at once.
// - URLs come from the server (url_for, rendered into data- attributes), never from this file.

import { Answer, cloneTemplate, metricsLine } from './answer.js';
import { copyText } from './clipboard.js';
import { historyMessages } from './conversation.js';
import { isAtBottom as isScrolledToEnd } from './follow.js';
import { readRun as readWithEventSource } from './eventsource-reader.js';
import { readRun as readWithFetch } from './fetch-reader.js';
import { RunMetrics, formatMetrics } from './metrics.js';
import { LEAVE, UNAUTHORIZED, clientFailure } from './protocol.js';
import { RawView } from './raw-view.js';
import { chooseMode, currentMode, initialMode, onModeChange } from './reader-mode.js';
import { clearTurns, loadTurns, saveTurns } from './saved-conversation.js';
import { SignIn } from './sign-in.js';

const READERS = { fetch: readWithFetch, eventsource: readWithEventSource };

const page = document.getElementById('app');
/** @type {import('./protocol.js').Urls} */
const urls = {
  stream: page.dataset.urlStream,
  runs: page.dataset.urlRuns,
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
  announce: document.getElementById('announce'),
  alert: document.getElementById('alert'),
  metrics: {
    ttft: page.querySelector('[data-metric="ttft"]'),
    rate: page.querySelector('[data-metric="rate"]'),
    tokens: page.querySelector('[data-metric="tokens"]'),
  },
  raw: document.getElementById('raw'),
  modes: document.querySelectorAll('input[name="mode"]'),
};

// --- state ---------------------------------------------------------------------------------------

/** The conversation: each turn is a user message and its Answer (see conversation.js). */
const turns = [];
/** The run being read: {answer, controller, metrics, ticker, ended}; null when idle. */
let active = null;
/** What the status bar shows: the reader's state while a run streams, then how it ended. */
const status = { connection: 'idle', metrics: null };
const rawView = new RawView(document.getElementById('raw-list'));

// --- asking, stopping, regenerating --------------------------------------------------------------

function send() {
  const text = els.message.value;
  if (active !== null || !signIn.signedIn || text.trim() === '') return;
  els.message.value = '';
  const atBottom = isAtBottom();
  els.log.append(userBubble(text));
  turns.push({ user: text, answer: null });
  ask(turns.at(-1), atBottom);
}

function userBubble(text) {
  const element = cloneTemplate('user-template');
  element.querySelector('.bubble').textContent = text;
  return element;
}

/** Stream a new answer for `turn` (the last turn) with the chosen reader. */
function ask(turn, atBottom = true) {
  const answer = new Answer();
  turn.answer = answer;
  els.log.append(answer.element);
  // The user asked: show where the answer will grow (unless they had scrolled up to read).
  if (atBottom) scrollToEnd();
  // The new answer is streaming and empty, so the history rule leaves it out.
  const body = { messages: historyMessages(turns) };
  if (els.model) body.model = els.model.value;
  read(answer, { body });
}

/** Read a run into `answer`: a new one (`body`), or one already going (`resume`, after a reload). */
function read(answer, { body = null, resume = null }) {
  // Only the newest answer can be retried: older Retry buttons would rewrite history.
  for (const button of els.log.querySelectorAll('[data-action="retry"]')) button.hidden = true;
  els.empty.hidden = true;
  const metrics = new RunMetrics(performance.now(), resume && { priorTokens: answer.tokens });
  const run = { answer, controller: new AbortController(), metrics };
  // Redraw the metrics each second even when nothing arrives: a stalled model shows as a falling rate.
  run.ticker = setInterval(schedule, 1000);
  active = run;
  status.metrics = metrics;
  rawView.clear();
  setBusy(true);
  save();

  // A run we let go of (New conversation) may still report; only the active one may touch the page.
  const current = () => active === run;
  const callbacks = {
    onState: (state) => {
      if (current()) status.connection = state;
      schedule();
    },
    onStart: (start, id) => {
      answer.runId = start.run;
      answer.lastEventId = id;
      answer.element.dataset.runId = start.run;
      save(); // from now on, even a crashed tab's answer can be picked up again
    },
    onToken: (token, id) => {
      const count = token.tokens ?? 1;
      answer.receive(token.text, count, id);
      metrics.addToken(count, performance.now());
      schedule();
    },
    onDone: (done) => {
      answer.finishReason = done.finish_reason;
    },
    onFail: (failure) => {
      answer.failure = failure;
    },
    onRaw: (entry) => {
      if (current()) {
        rawView.add(entry);
        schedule();
      }
    },
  };
  const reader = READERS[currentMode()];
  // Settles once the run is shown as ended (and, after Stop, the server was told): sign out waits for it.
  run.ended = reader({ body, resume, urls, signal: run.controller.signal, callbacks, silenceMs }).then(
    (outcome) => finish(run, outcome),
    (err) => {
      // A bug of ours: say so in the answer rather than leave it "streaming" forever.
      console.error(err);
      answer.failure = { code: 'page_error', message: `This page failed: ${err}`, retryable: true };
      finish(run, 'failed');
    },
  );
}

/** Show how a run ended: text first, then its state, note, buttons and metrics; then announce it. */
function finish(run, outcome) {
  clearInterval(run.ticker);
  if (outcome === 'left') {
    // We let go of the run because the page is going away (see leave()): it stays "streaming".
    if (active === run) active = null;
    return;
  }
  const { answer, metrics } = run;
  const atBottom = isAtBottom(); // before the note and buttons make the log taller
  metrics.finish();
  answer.finish(outcome, metricsLine(metrics, performance.now()));
  if (active !== run) return; // let go of (New conversation): nothing else is its business
  active = null;
  status.connection = outcome; // the pill says "done", "stopped" or "failed"
  setBusy(false);
  save();
  render();
  if (atBottom) scrollToEnd();
  announce(answer);
  // Refused for want of a session: the token was changed on the server (or the cookie expired).
  if (answer.failure?.code === UNAUTHORIZED) signIn.required();
}

/** Tell screen readers how the answer ended: its text when it finished, a failure at once. */
function announce(answer) {
  if (answer.state === 'failed') {
    // role="alert": read at once, interrupting. Cleared first so the same message is read again.
    els.alert.textContent = '';
    els.alert.textContent = answer.noteText();
    return;
  }
  // The rendered text, as it reads: not the source's # and ** marks.
  const spoken = answer.markdown.element.textContent.trim();
  els.announce.textContent = [spoken, answer.noteText()].filter((part) => part !== '').join(' ');
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
  if (active !== null || !signIn.signedIn || turn === undefined) return;
  turn.answer?.element.remove();
  turn.answer = null;
  ask(turn);
}

function newConversation() {
  forgetConversation();
  els.message.focus();
}

/** Stop the answer being streamed (its reader still POSTs the stop URL), let go of it, forget it all. */
function forgetConversation() {
  stop();
  active = null;
  turns.length = 0;
  clearTurns();
  setBusy(false);
  els.log.replaceChildren();
  els.empty.hidden = false;
  rawView.clear();
  status.connection = 'idle';
  status.metrics = null;
  render();
}

/** Before the session is cleared: stop a streaming answer while the cookie still works, forget the rest. */
async function beforeSignOut() {
  const run = active;
  stop();
  if (run !== null) await run.ended;
  forgetConversation();
}

function setBusy(busy) {
  // The send button becomes Stop while a run streams: its accessible name is its text.
  els.send.textContent = busy ? 'Stop' : 'Send';
  els.send.classList.toggle('danger', busy);
  els.regenerate.disabled = busy || turns.length === 0;
}

// --- the answers' buttons ------------------------------------------------------------------------

function onAnswerAction(button) {
  const element = button.closest('[data-role="assistant"]');
  const answer = turns.find((turn) => turn.answer?.element === element)?.answer;
  switch (button.dataset.action) {
    case 'retry':
      regenerate();
      els.message.focus();
      break;
    case 'copy': // the Markdown source, exactly as received
      if (answer !== undefined) copyText(answer.text, answer.textElement, button, () => answer.showSource(true));
      break;
    case 'copy-code': {
      const code = button.closest('.code-block').querySelector('code');
      copyText(code.textContent, code, button);
      break;
    }
    case 'source':
      answer?.showSource(button.getAttribute('aria-pressed') !== 'true');
      break;
    default:
  }
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
  const atBottom = isAtBottom();
  active?.answer.flush();
  rawView.flush();
  renderStatus();
  if (atBottom) scrollToEnd();
}

function renderStatus() {
  if (els.connection.dataset.connection !== status.connection) {
    // Written only on change: it is a live region, and a screen reader announces each write.
    els.connection.dataset.connection = status.connection;
    els.connection.textContent = status.connection;
  }
  const shown = formatMetrics(status.metrics, performance.now());
  els.metrics.ttft.textContent = shown.ttft;
  els.metrics.rate.textContent = shown.rate;
  els.metrics.tokens.textContent = shown.tokens;
}

function isAtBottom() {
  return isScrolledToEnd(els.log);
}

function scrollToEnd() {
  els.log.scrollTop = els.log.scrollHeight;
}

// --- keeping the conversation across a reload ----------------------------------------------------

function save() {
  saveTurns(turns.map(({ user, answer }) => ({ user, answer: answer === null ? null : answer.save() })));
}

/** Rebuild the saved conversation; pick up an answer that was still streaming, where it was. */
function restore() {
  const saved = loadTurns();
  for (const { user, answer } of saved) {
    els.log.append(userBubble(user));
    turns.push({ user, answer: answer === null ? null : new Answer(answer) });
    if (turns.at(-1).answer !== null) els.log.append(turns.at(-1).answer.element);
  }
  if (turns.length === 0) return;
  // Only the newest answer can be retried (as in read()).
  for (const { answer } of turns.slice(0, -1)) {
    if (answer !== null) answer.element.querySelector('[data-action="retry"]').hidden = true;
  }
  els.empty.hidden = true;
  scrollToEnd();
  setBusy(false);
  pickUp();
}

/** If the last answer was left streaming (a reload, a page back from the cache), read on. */
function pickUp() {
  const last = turns.at(-1)?.answer;
  // Not signed in: the run is picked up once signed in (onSignedIn), not refused now.
  if (active !== null || !signIn.signedIn || last?.state !== 'streaming') return;
  if (last.runId === null) {
    // Left before the run said its id (its `start` event): nothing to resume from. The server
    // stops the run once nobody has read it for its grace period.
    last.failure = clientFailure('not_resumable');
    last.finish('failed', '');
    save();
    return;
  }
  read(last, { resume: { runId: last.runId, lastEventId: last.lastEventId } });
}

// --- helpers and event wiring ------------------------------------------------------------------------

els.form.addEventListener('submit', (event) => {
  event.preventDefault();
  if (active === null) send();
  else stop();
  // Back to the message box after Send and Stop, so the next message can be typed at once.
  els.message.focus();
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
  if (button !== null) onAnswerAction(button);
});

els.regenerate.addEventListener('click', regenerate);
els.newConversation.addEventListener('click', newConversation);
for (const radio of els.modes) radio.addEventListener('change', () => onModeChange(radio.value));

/** The timer that picks the run up again if the page, told it would go, is still here. */
let stillHere = 0;

/**
 * The page is going away (a reload, a link, closing the tab): save where the streaming answer is,
 * its text and the id of its last event together, so that the next page resumes exactly there,
 * and let go of the run without stopping it.
 * @param {Event} event  `beforeunload` (the page may yet stay) or `pagehide` (it has gone).
 */
function leave(event) {
  save();
  clearTimeout(stillHere);
  if (active === null) return;
  active.controller.abort(LEAVE);
  // Some navigations leave the page where it is (a download, a mailto: link): if it is still
  // here a moment later, pick the run up again. After `pagehide` it has gone for sure, perhaps
  // into the back/forward cache, where this timer would freeze and then fire on the way back:
  // `pageshow` alone picks the run up then.
  if (event.type === 'beforeunload') stillHere = setTimeout(pickUp, 1000);
}

// beforeunload, not only pagehide: Chromium closes an EventSource between the two, and its reader
// would take that as the server giving up, and stop the run.
window.addEventListener('beforeunload', leave);
window.addEventListener('pagehide', leave);
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'hidden') save();
});
// A page brought back from the back/forward cache let go of its run on `pagehide`: read on.
window.addEventListener('pageshow', (event) => {
  if (event.persisted) pickUp();
});

const signIn = new SignIn({
  page,
  onSignedIn: () => {
    setBusy(false);
    els.message.focus();
    pickUp();
  },
  onSignOut: beforeSignOut,
});
chooseMode(initialMode());
// On a wide screen the raw view has its own column: open it there, keep it folded on a phone.
els.raw.open = window.matchMedia('(min-width: 64rem)').matches;
restore();
renderStatus();
signIn.focus();
page.dataset.ready = 'true'; // for tests: the handlers above are attached
