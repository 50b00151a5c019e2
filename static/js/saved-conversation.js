// saved-conversation.js: keep the conversation in the tab's sessionStorage, so a reload keeps it.
//
// sessionStorage belongs to one tab: it survives a reload and the browser bringing a discarded
// tab back, and is gone when the tab closes. The page saves the turns (each user message and its
// answer, see answer.js SavedAnswer) when a run starts, when it ends, and when the page is hidden
// or unloaded (`pagehide`, `visibilitychange`). An answer saved while streaming keeps its run id
// and the id of the last event whose text it holds: the reloaded page resumes the run from there
// with Last-Event-ID, so its text ends up exactly once. New conversation clears it.
//
// Storage can be disabled or full (a privacy setting, a quota): the page then works without it.

const KEY = 'streamchat.conversation';
const VERSION = 1;

/**
 * @typedef {object} SavedTurn
 * @property {string} user
 * @property {import('./answer.js').SavedAnswer | null} answer
 */

/**
 * Return the saved turns, or [] when there are none (or they cannot be read).
 * @returns {SavedTurn[]}
 */
export function loadTurns() {
  const raw = attempt(() => window.sessionStorage.getItem(KEY));
  if (raw === null || raw === undefined) return [];
  try {
    const saved = JSON.parse(raw);
    return saved?.version === VERSION && Array.isArray(saved.turns) ? saved.turns : [];
  } catch (err) {
    if (!(err instanceof SyntaxError)) throw err;
    return []; // written by something else: start afresh
  }
}

/** @param {SavedTurn[]} turns */
export function saveTurns(turns) {
  attempt(() => window.sessionStorage.setItem(KEY, JSON.stringify({ version: VERSION, turns })));
}

export function clearTurns() {
  attempt(() => window.sessionStorage.removeItem(KEY));
}

// Storage throws a DOMException when it is disabled, or full (QuotaExceededError).
function attempt(action) {
  try {
    return action();
  } catch (err) {
    if (!(err instanceof DOMException)) throw err;
    console.warn(`the conversation is not kept across reloads: ${err.message}`);
    return undefined;
  }
}
