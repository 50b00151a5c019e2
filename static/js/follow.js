// follow.js: "was the reader at the bottom?", asked by the log and by the raw events view alike,
// before new content goes in, so that each keeps following the newest content only if it was.

// Closer than this to the bottom counts as "at the bottom": follow the stream.
export const BOTTOM_SLACK_PX = 48;

/** Tell whether a scrolled element shows its end (within BOTTOM_SLACK_PX). */
export function isAtBottom(element) {
  return element.scrollHeight - element.scrollTop - element.clientHeight < BOTTOM_SLACK_PX;
}
