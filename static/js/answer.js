// answer.js: one assistant answer in the page: its text, its element, and how it shows its end.
//
// The element is cloned from the page's `assistant-template`. It holds the answer twice, side by
// side: `data-role="text"` is the source, exactly the streamed text as one growing Text node
// (newlines kept; hidden until the user presses "Source"), and `data-role="markdown"` is that text
// rendered by markdown.js. The readers' callbacks only add to `pending`; app.js calls flush()
// once per animation frame, so a fast stream costs one DOM update per frame, not one per token.
//
// How an answer ends is shown here too: the state (`data-state`), a note (why it stopped or
// failed), Retry when the failure is retryable (after the wait the server asked for, if any), and a
// one-line summary of its metrics. A failure before the first token shows the error in place of an
// empty bubble, with nothing to copy.

import { MarkdownView } from './markdown.js';
import { formatMetrics } from './metrics.js';

// What a finish reason other than a plain "stop" means for the reader of the answer.
const FINISH_NOTES = {
  length: 'Cut off at the token limit (max_tokens).',
  content_filter: 'Stopped by the model server’s content filter.',
};

/**
 * What an answer keeps across a reload (see saved-conversation.js).
 * @typedef {object} SavedAnswer
 * @property {string} text
 * @property {'streaming'|'done'|'stopped'|'failed'} state
 * @property {string|null} runId
 * @property {string} lastEventId  The id of the last event whose text is in `text`.
 * @property {number} tokens
 * @property {string|null} finishReason
 * @property {object|null} failure
 * @property {boolean} stoppedByUser
 * @property {string} metricsLine
 */

/** One assistant answer: its data and its element. */
export class Answer {
  /** @param {SavedAnswer} [saved]  Rebuild an answer saved before a reload. */
  constructor(saved = undefined) {
    this.element = cloneTemplate('assistant-template');
    this.textElement = this.element.querySelector('[data-role="text"]');
    this.markdown = new MarkdownView(this.element.querySelector('[data-role="markdown"]'));
    // One Text node that grows: its textContent is exactly the streamed text, and newlines are
    // kept as newlines (CSS white-space: pre-wrap shows them), never turned into <br>.
    this.textNode = document.createTextNode('');
    this.textElement.append(this.textNode);
    this.text = '';
    this.pending = ''; // received, not yet in the DOM
    this.state = 'streaming';
    this.runId = null;
    this.lastEventId = '';
    this.tokens = 0;
    this.finishReason = null;
    this.failure = null;
    this.stoppedByUser = false;
    this.metricsLine = '';
    if (saved !== undefined) this.restore(saved);
  }

  /** Take in a token: its text, and the id of the event that carried it. */
  receive(text, tokens, eventId) {
    this.text += text;
    this.pending += text;
    this.tokens += tokens;
    this.lastEventId = eventId;
  }

  /**
   * Write the text received since the last flush into the DOM (source and Markdown).
   * @param {{complete?: boolean}} [options]  complete: the text is final, so the Markdown is read
   *   as a whole (markdown.js), even when nothing new arrived since the last frame.
   */
  flush({ complete = false } = {}) {
    if (this.pending === '' && !complete) return;
    this.textNode.appendData(this.pending);
    this.pending = '';
    this.markdown.update(this.text, { complete });
  }

  /**
   * Show how the answer ended: text first, then its state, note, buttons and metrics line.
   * @param {'done'|'stopped'|'failed'} outcome
   * @param {string} metricsLine
   */
  finish(outcome, metricsLine) {
    // Every received character is in the DOM before data-state says it ended, and the Markdown
    // is read once, as a whole, for its final form.
    this.flush({ complete: true });
    this.state = outcome;
    this.metricsLine = metricsLine;
    this.showEnd();
  }

  showEnd() {
    const element = this.element;
    element.dataset.state = this.state;
    element.setAttribute('aria-busy', String(this.state === 'streaming'));
    if (this.state === 'streaming') return;
    const empty = this.text === '';
    // Nothing was said: no empty bubble, no Copy that copies nothing, no Source of nothing.
    element.querySelector('.bubble').hidden = empty;
    element.querySelector('[data-action="copy"]').hidden = empty;
    element.querySelector('[data-action="source"]').hidden = empty;
    this.showNote();
    const retry = element.querySelector('[data-action="retry"]');
    retry.hidden = !(this.state === 'failed' && this.failure?.retryable);
    if (!retry.hidden) holdRetry(retry, this.failure.retry_after);
    element.querySelector('[data-role="metrics"]').textContent = this.metricsLine;
  }

  /** The sentence the note shows, or '' when the answer needs none. */
  noteText() {
    const parts = [];
    if (this.state === 'failed' && this.failure !== null) {
      const { message, retry_after: retryAfter } = this.failure;
      parts.push(message);
      if (typeof retryAfter === 'number') parts.push(`The server asks to wait ${retryAfter} s before retrying.`);
    } else if (this.state === 'stopped') {
      parts.push(this.stoppedByUser ? 'Stopped by you.' : 'Stopped by the server.');
    } else if (this.state === 'done' && this.finishReason !== 'stop' && this.finishReason !== null) {
      parts.push(FINISH_NOTES[this.finishReason] ?? `Finished: ${this.finishReason}.`);
    }
    return parts.join(' ');
  }

  showNote() {
    const note = this.element.querySelector('[data-role="note"]');
    const text = this.noteText();
    if (this.state === 'failed' && this.failure !== null) note.dataset.code = this.failure.code;
    else delete note.dataset.code;
    note.dataset.kind = this.state;
    note.textContent = text;
    note.hidden = text === '';
  }

  /** Show the source (the exact streamed text) in place of the Markdown, or the Markdown again. */
  showSource(show) {
    this.element.querySelector('[data-action="source"]').setAttribute('aria-pressed', String(show));
    this.textElement.hidden = !show;
    this.markdown.element.hidden = show;
  }

  /** @returns {SavedAnswer} */
  save() {
    const { text, state, runId, lastEventId, tokens, finishReason, failure, stoppedByUser, metricsLine } = this;
    return { text, state, runId, lastEventId, tokens, finishReason, failure, stoppedByUser, metricsLine };
  }

  /** @param {SavedAnswer} saved */
  restore(saved) {
    Object.assign(this, saved, { pending: saved.text });
    if (saved.runId !== null) this.element.dataset.runId = saved.runId;
    this.flush({ complete: saved.state !== 'streaming' }); // an ended answer shows as finish() left it
    this.showEnd();
  }
}

/**
 * The answer's one-line summary: "12 tokens · first token 210 ms · 180.0 tokens/s" (without
 * its first token after a reload: that was measured, if at all, by the page before).
 * @param {import('./metrics.js').RunMetrics} metrics
 * @param {number} now
 */
export function metricsLine(metrics, now) {
  if (metrics.tokens === 0) return '';
  const shown = formatMetrics(metrics, now);
  const parts = [tokenCount(metrics.tokens)];
  if (shown.ttft !== '–') parts.push(`first token ${shown.ttft}`); // not measured for a resumed run
  if (shown.rate !== '–') parts.push(`${shown.rate} tokens/s`);
  return parts.join(' · ');
}

/**
 * Keep Retry disabled for the `retry_after` seconds the server asked for (a 429's wait), so that
 * a click does not start a run bound to fail the same way; the note says how long.
 */
function holdRetry(button, retryAfter) {
  if (typeof retryAfter !== 'number' || !(retryAfter > 0)) return;
  button.disabled = true;
  setTimeout(() => {
    button.disabled = false;
  }, retryAfter * 1000);
}

/** "1 token", "2 tokens". */
export function tokenCount(count) {
  return count === 1 ? '1 token' : `${count} tokens`;
}

/** Return a fresh copy of a <template>'s element (the page's bubbles are written once, in HTML). */
export function cloneTemplate(id) {
  return document.getElementById(id).content.firstElementChild.cloneNode(true);
}
