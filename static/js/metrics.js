// metrics.js: the numbers shown while an answer streams, as plain arithmetic (no DOM, no clock).
//
// Time to first token (TTFT) runs from the moment the request is sent to the first `token` event:
// it is what a user feels as "thinking". The token count is the sum of the `tokens` fields of the
// `token` events (one event may carry several upstream tokens). Tokens per second is the
// generation speed: the tokens after the first event, over the time since the first event, so
// that the wait for the first token does not drag it down. The caller passes every time in
// milliseconds (performance.now()), which keeps this module testable in Node. A run picked up
// again after a reload was asked for by the page before it: its TTFT was not measured here, and
// shows as "–" rather than as the time the resume took.
//
// Try it:  node -e 'import("./static/js/metrics.js").then(({RunMetrics, formatMetrics}) => {
//   const m = new RunMetrics(0); m.addToken(1, 400); m.addToken(1, 900);
//   console.log(formatMetrics(m, 900)); })'

// The shortest span a rate is computed over.
export const MIN_RATE_SECONDS = 0.1;

/** Live metrics of one run. */
export class RunMetrics {
  /**
   * @param {number} sentAt  When the request was sent, in milliseconds.
   * @param {object} [resume]  Set for a run picked up again after a reload.
   * @param {number} [resume.priorTokens]  Tokens the page before it had counted: in the count,
   *   left out of the rate.
   */
  constructor(sentAt, resume = null) {
    const priorTokens = resume?.priorTokens ?? 0;
    this.sentAt = sentAt;
    this.resumed = resume !== null;
    this.firstTokenAt = null;
    this.lastTokenAt = null;
    this.priorTokens = priorTokens;
    this.firstCount = 0; // tokens carried by the first event (and before it), left out of the rate
    this.tokens = priorTokens;
    this.finished = false;
  }

  /**
   * Count one `token` event.
   * @param {number} count  Its `tokens` field.
   * @param {number} at  When it arrived, in milliseconds.
   */
  addToken(count, at) {
    if (this.firstTokenAt === null) {
      this.firstTokenAt = at;
      this.firstCount = this.priorTokens + count;
    }
    this.lastTokenAt = at;
    this.tokens += count;
  }

  /** Stop the clock: from now on the rate is measured up to the last token. */
  finish() {
    this.finished = true;
  }

  /** Milliseconds from the request to the first token; null before it, and for a resumed run. */
  get ttftMs() {
    return this.firstTokenAt === null || this.resumed ? null : this.firstTokenAt - this.sentAt;
  }

  /**
   * Tokens per second since the first token: up to `now` while streaming (so a stall shows as a
   * falling rate), up to the last token once finished. Null until MIN_RATE_SECONDS have passed.
   * @param {number} now
   */
  tokensPerSecond(now) {
    if (this.firstTokenAt === null) return null;
    const end = this.finished ? this.lastTokenAt : now;
    const seconds = (end - this.firstTokenAt) / 1000;
    // Over a shorter span, network batching decides the number (five tokens in one read look
    // like thousands a second), so it would mean nothing.
    return seconds >= MIN_RATE_SECONDS ? (this.tokens - this.firstCount) / seconds : null;
  }
}

/**
 * The metrics as the page shows them; "–" for what is not known yet.
 * @param {RunMetrics | null} metrics
 * @param {number} now
 * @returns {{ttft: string, rate: string, tokens: string}}
 */
export function formatMetrics(metrics, now) {
  if (metrics === null) return { ttft: '–', rate: '–', tokens: '–' };
  const ttft = metrics.ttftMs;
  const rate = metrics.tokensPerSecond(now);
  return {
    ttft: ttft === null ? '–' : formatDuration(ttft),
    rate: rate === null ? '–' : rate.toFixed(1),
    tokens: String(metrics.tokens),
  };
}

/** "412 ms" below a second, "1.25 s" above. */
export function formatDuration(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}
