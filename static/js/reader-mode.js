// reader-mode.js: which of the two readers the page uses, "fetch" or "eventsource".
//
// The choice is the radio group "Read the stream with" in the page's top bar. It is remembered in
// localStorage (for every tab), and `?mode=fetch` or `?mode=eventsource` in the address forces it
// for one page load (the tests and the README's links use that).

/** The modes, as the radios' values. */
export const READER_MODES = Object.freeze(['fetch', 'eventsource']);
const MODE_KEY = 'streamchat.mode';

/** The mode of the checked radio. */
export function currentMode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

/** ?mode= forces the mode for this page; else the saved choice; else the fetch reader. */
export function initialMode() {
  const forced = new URLSearchParams(window.location.search).get('mode');
  if (READER_MODES.includes(forced)) return forced;
  const saved = storage('get');
  return READER_MODES.includes(saved) ? saved : 'fetch';
}

/** Check the radio for `mode` and show the raw view's hint that goes with it. */
export function chooseMode(mode) {
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.checked = radio.value === mode;
  for (const hint of document.querySelectorAll('.raw-hint[data-for-mode]')) {
    hint.hidden = hint.dataset.forMode !== mode;
  }
}

/** The user picked `mode`: show it, remember it, and keep a ?mode= in the address in step. */
export function onModeChange(mode) {
  chooseMode(mode);
  storage('set', mode);
  // A ?mode= in the address would undo the choice at the next reload.
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
