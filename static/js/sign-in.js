// sign-in.js: signing in to a server that has an ACCESS_TOKEN, and signing out.
//
// The server says, as it serves the page, whether a sign-in is needed: #app's data-sign-in is
// "off" (no ACCESS_TOKEN: nothing here shows), "needed" (no session: the form "Access token"
// shows in the composer's place) or "done" (the page came with a valid session cookie).
//
// Signing in POSTs {"token": ...} to the session URL. Its 204 sets an HttpOnly cookie that the
// browser then sends with every request of the page, EventSource's included (EventSource cannot
// send an Authorization header). The page never reads the cookie, and keeps no copy of the token:
// the field is emptied once the server has said yes. Signing out DELETEs the session URL, the only
// way to clear an HttpOnly cookie. A 401 from any later request (the token was changed on the
// server, which signs everybody out) brings the form back: app.js calls required().
//
// The server's own words are shown for a refusal (a wrong token, too many failed attempts with
// how long to wait), as text.

import { clientFailure, failureFromResponse, postJson } from './protocol.js';

// Signing in and out are quick requests: past this, the server is taken as unreachable.
const REQUEST_TIMEOUT_MS = 10_000;

/** The sign-in form, the Sign out button, and whether the chat may be used. */
export class SignIn {
  /**
   * @param {object} options
   * @param {HTMLElement} options.page  #app, with data-sign-in and data-url-session.
   * @param {() => void} options.onSignedIn  The chat may be used (again).
   * @param {() => Promise<void>} options.onSignOut  Sign out was pressed: called before the session
   *   is cleared, so that a streaming answer can still be stopped with the cookie.
   */
  constructor({ page, onSignedIn, onSignOut }) {
    this.state = page.dataset.signIn ?? 'off';
    this.url = page.dataset.urlSession;
    this.onSignedIn = onSignedIn;
    this.onSignOut = onSignOut;
    this.form = document.getElementById('sign-in');
    this.field = document.getElementById('access-token');
    this.button = document.getElementById('sign-in-button');
    this.message = document.getElementById('sign-in-message');
    this.signOutButton = document.getElementById('sign-out');
    this.composer = document.getElementById('composer');
    if (this.state === 'off') return; // the template left the form and the button out
    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.submit();
    });
    this.signOutButton.addEventListener('click', () => this.signOut());
  }

  /** Whether the chat may be used: no sign-in is needed, or it was done. */
  get signedIn() {
    return this.state !== 'needed';
  }

  /** Put the cursor in the field, if the form is what the page shows. */
  focus() {
    if (!this.signedIn) this.field.focus();
  }

  /** A request was refused with 401: show the form again, saying why. */
  required() {
    if (this.state === 'off' || !this.signedIn) return;
    this.show('You are signed out: the server no longer accepts this session. Sign in again.');
  }

  async submit() {
    if (this.button.disabled) return; // one attempt at a time
    this.button.disabled = true;
    const problem = await this.request('POST', { token: this.field.value });
    this.button.disabled = false;
    if (problem !== null) {
      this.say(problem);
      this.field.setAttribute('aria-invalid', 'true');
      this.field.select(); // a wrong token is typed again, not corrected
      this.field.focus();
      return;
    }
    this.field.value = ''; // the cookie carries the session from now on
    this.field.removeAttribute('aria-invalid');
    this.say('');
    this.state = 'done';
    this.form.hidden = true;
    this.composer.hidden = false;
    this.signOutButton.hidden = false;
    this.onSignedIn();
  }

  async signOut() {
    this.signOutButton.disabled = true;
    await this.onSignOut();
    const problem = await this.request('DELETE', null);
    this.signOutButton.disabled = false;
    this.show(problem ?? 'You are signed out.');
  }

  /** Show the form in the composer's place, with `text` under the field. */
  show(text) {
    this.state = 'needed';
    this.composer.hidden = true;
    this.signOutButton.hidden = true;
    this.form.hidden = false;
    this.field.removeAttribute('aria-invalid');
    this.say(text);
    this.field.focus();
  }

  /** Write `text` under the field: a role="alert", read out at once (cleared first, so a repeat is too). */
  say(text) {
    this.message.textContent = '';
    this.message.textContent = text;
  }

  /**
   * Send a request to the session URL. Return null when it succeeded, else the sentence to show.
   * @param {'POST'|'DELETE'} method
   * @param {object|null} body
   * @returns {Promise<string|null>}
   */
  async request(method, body) {
    const signal = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
    let response;
    try {
      response = await (method === 'POST'
        ? postJson(this.url, body, signal)
        : fetch(this.url, { method, cache: 'no-store', signal }));
    } catch (err) {
      // TypeError: a network error. TimeoutError: our own limit.
      if (!(err instanceof TypeError || err.name === 'TimeoutError')) throw err;
      return clientFailure('unreachable').message;
    }
    if (response.ok) return null;
    const failure = await failureFromResponse(response);
    if (typeof failure.retry_after !== 'number') return failure.message;
    // A 429 (too many failed attempts): say how long to wait, as the server counts it.
    const seconds = failure.retry_after === 1 ? '1 second' : `${failure.retry_after} seconds`;
    return `${failure.message} Wait ${seconds} before trying again.`;
  }
}
