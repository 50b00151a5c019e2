// clipboard.js: the Copy buttons' one action: put text on the clipboard, or let the user do it.
//
// The Clipboard API exists only in secure contexts (https, or http on localhost): on plain http
// from another host `navigator.clipboard` is undefined, and a browser may also refuse a write
// (no permission, the page not focused). Then the text's element is selected instead and the
// button says "Selected: press Ctrl+C", so copying still takes one key press.

// How long a button shows "Copied" before its own label comes back.
const FLASH_MS = 1500;

/**
 * Copy `text`; where the Clipboard API is missing or refuses, select `element` instead.
 * @param {string} text  Exactly what goes on the clipboard.
 * @param {Element} element  What shows that text, selected when the copy cannot be done for the user.
 * @param {HTMLButtonElement} button  The button pressed: it says what happened.
 * @param {() => void} [reveal]  Makes `element` visible if it is hidden (a selection needs that).
 */
export async function copyText(text, element, button, reveal = () => {}) {
  if (navigator.clipboard === undefined) {
    selectForCopy(element, button, reveal);
    return;
  }
  try {
    await navigator.clipboard.writeText(text);
    flash(button, 'Copied');
  } catch (err) {
    // NotAllowedError: the browser refused (no permission, or the page lost focus).
    if (!(err instanceof DOMException)) throw err;
    selectForCopy(element, button, reveal);
  }
}

function selectForCopy(element, button, reveal) {
  reveal();
  window.getSelection().selectAllChildren(element);
  flash(button, 'Selected: press Ctrl+C');
}

function flash(button, label) {
  const original = button.dataset.label ?? button.textContent;
  button.dataset.label = original;
  button.textContent = label;
  setTimeout(() => {
    button.textContent = original;
  }, FLASH_MS);
}
