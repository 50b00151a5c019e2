// conversation.js: which messages the server gets for the next answer (the history rule).
//
// The server is stateless about conversations: every request carries the whole history as
// {role, content} messages, and the last one must be the user's. The page keeps turns (a user
// message and its answer) and this pure function turns them into that list. The rule:
//
//   - a finished answer (`done`) goes in, as the model said it;
//   - a stopped answer goes in with the text it had when stopped: the user saw it and chose to
//     stop there, and the next question may well refer to it (so do the big chat apps);
//   - a failed answer is left out: it is incomplete through no choice of the user's, and the
//     model should not build on it. Its user message stays (two user messages in a row are
//     allowed), because it is on the screen and the user may refer to it;
//   - an empty answer is left out whatever its state, and so is the answer being streamed.
//
// Try it:  node -e 'import("./static/js/conversation.js").then(({historyMessages}) =>
//   console.log(historyMessages([{user: "Hi", answer: {state: "done", text: "Hello"}},
//                                {user: "More", answer: null}])))'

/**
 * @typedef {object} Turn
 * @property {string} user  The user's message.
 * @property {{state: string, text: string} | null} answer  Its answer, if one was asked for.
 */

/**
 * Return the messages to send for the next answer, oldest first.
 * @param {Turn[]} turns
 * @returns {{role: 'user'|'assistant', content: string}[]}
 */
export function historyMessages(turns) {
  const messages = [];
  for (const { user, answer } of turns) {
    messages.push({ role: 'user', content: user });
    if (answer !== null && keptInHistory(answer)) {
      messages.push({ role: 'assistant', content: answer.text });
    }
  }
  return messages;
}

/** Whether an answer goes into the history (see the rule at the top). */
export function keptInHistory({ state, text }) {
  return text !== '' && (state === 'done' || state === 'stopped');
}
