// markdown.js: show an answer's text as Markdown while it streams, without trusting it.
//
// The model's text is untrusted input. It is parsed by marked (static/vendor/marked.esm.js,
// CommonMark plus GitHub tables, fenced code, strikethrough and autolinks) with the renderer below,
// which never lets the model's own markup through: raw HTML comes out as escaped text (shown, not
// run, not dropped), links are links only for http:, https: and mailto:, and images become links
// (so nothing is fetched). DOMPurify (static/vendor/purify.es.mjs) then parses that HTML into
// DOM nodes with an allow-list of the tags and attributes our renderer writes: a second layer, so
// that a bug in either one alone does not open the page to script. No `style` attribute anywhere
// (the page's CSP forbids inline style): table alignment is a class.
//
// Streaming: each frame re-reads the whole text into marked's top-level blocks (a paragraph, a
// list, a fenced code block...) and rebuilds only the blocks whose source changed, which is
// usually just the last one. The blocks above keep their DOM nodes, so the answer does not flash
// or jump, and the cost of a frame does not grow with the answer. An unclosed ``` fence is an
// open code block to marked (it runs to the end of the text), so a code block looks like one
// from its first line.

import { Marked } from '../vendor/marked.esm.js';
import DOMPurify from '../vendor/purify.es.mjs';

// Which link targets become links; anything else (javascript:, data:, relative paths) is text.
const SAFE_URL = /^(?:https?:|mailto:)/i;
// What a link opens with: a new tab that cannot reach back to this page, and no referrer.
const LINK_REL = 'noopener noreferrer nofollow';

// Exactly what the renderer below writes, and nothing more.
const PURIFY_CONFIG = {
  ALLOWED_TAGS: [
    'p', 'br', 'hr', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'strong', 'em', 'del', 'code', 'pre',
    'blockquote', 'ul', 'ol', 'li', 'a', 'table', 'thead', 'tbody', 'tr', 'th', 'td', 'div', 'span',
  ],
  ALLOWED_ATTR: ['href', 'title', 'class', 'start'],
  ALLOWED_URI_REGEXP: SAFE_URL,
  ALLOW_DATA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

// The sanitizer, made on first use: it needs a DOM (this module also loads in Node, for its tests).
let purifier = null;

function sanitizer() {
  if (purifier === null) {
    purifier = DOMPurify(window);
    purifier.addHook('afterSanitizeAttributes', (node) => {
      if (node.nodeName !== 'A') return;
      node.setAttribute('target', '_blank');
      node.setAttribute('rel', LINK_REL);
    });
  }
  return purifier;
}

/** Escape text for HTML (the five characters that matter in text and in quoted attributes). */
export function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// marked's renderer, method by method where ours differs from its default (marked.js.org,
// "Using Pro": each method gets the token and returns HTML).
const renderer = {
  // Raw HTML, block or inline: show the characters, as the user would see them in the source.
  html({ text, block }) {
    const shown = escapeHtml(text);
    return block ? `<p class="raw-html">${shown}</p>\n` : shown;
  },
  link({ href, title, tokens, raw }) {
    if (!SAFE_URL.test(href)) return escapeHtml(raw);
    const titled = title ? ` title="${escapeHtml(title)}"` : '';
    return `<a href="${escapeHtml(href)}"${titled}>${this.parser.parseInline(tokens)}</a>`;
  },
  // An image is never fetched: it becomes a link to itself, labelled with its alt text.
  image({ href, text, raw }) {
    if (!SAFE_URL.test(href)) return escapeHtml(raw);
    const label = text.trim() === '' ? href : text;
    return `<a class="image-link" href="${escapeHtml(href)}">${escapeHtml(label)}</a>`;
  },
  // A code block: a header with its language (the Copy code button is added after sanitizing).
  code({ text, lang }) {
    const language = (lang ?? '').trim().split(/\s/)[0];
    const shown = language === '' ? 'code' : language;
    return (
      `<div class="code-block"><div class="code-head"><span class="code-lang">${escapeHtml(shown)}</span></div>` +
      `<pre><code>${escapeHtml(text)}</code></pre></div>\n`
    );
  },
  tablecell(token) {
    const tag = token.header ? 'th' : 'td';
    const align = token.align ? ` class="align-${token.align}"` : '';
    return `<${tag}${align}>${this.parser.parseInline(token.tokens)}</${tag}>\n`;
  },
  // Task list boxes as characters: a disabled form control in an answer helps nobody.
  checkbox({ checked }) {
    return checked ? '☑ ' : '☐ ';
  },
};

const markdown = new Marked({ gfm: true, breaks: false, renderer });

/**
 * Return the HTML our renderer makes of `text`, before sanitizing (what the tests in Node check).
 * @param {string} text
 */
export function toHtml(text) {
  return markdown.parse(text);
}

/** Return the DOM nodes for one top-level block token, sanitized, with Copy code buttons. */
function renderBlock(token) {
  const fragment = sanitizer().sanitize(markdown.parser([token]), PURIFY_CONFIG);
  for (const block of fragment.querySelectorAll('.code-block')) {
    const copy = document.createElement('button');
    copy.type = 'button';
    copy.className = 'small quiet';
    copy.dataset.action = 'copy-code';
    copy.textContent = 'Copy code';
    block.querySelector('.code-head').append(copy);
    // A wide code block scrolls sideways: keyboard users must be able to reach it to scroll it.
    block.querySelector('pre').tabIndex = 0;
  }
  // A wide table scrolls sideways in a box of its own (the table keeps its table semantics).
  for (const table of fragment.querySelectorAll('table')) {
    const box = document.createElement('div');
    box.className = 'table-scroll';
    box.tabIndex = 0;
    table.replaceWith(box);
    box.append(table);
  }
  return [...fragment.childNodes];
}

// While streaming, the last blocks are read again each frame, the ones above are not: this many.
// Two, because the block before the last can still change: a list grows a new item after a blank
// line, a paragraph becomes a heading when an === line arrives under it.
const LIVE_BLOCKS = 2;
// A reference link definition ([x]: https://...) changes links anywhere in the text: with one in
// sight, every frame reads the whole text again.
const LINK_DEFINITION = /^ {0,3}\[[^\]]+\]:/m;
// A last line that may be the start of a code fence (` or ``, ~ or ~~) is held back until the
// next characters say what it is, so that it does not flash as text for a frame.
const FENCE_START = /(^|\n) {0,3}(?:`{1,2}|~{1,2})$/;

/** An element that shows a growing Markdown text, rebuilding only the blocks that changed. */
export class MarkdownView {
  /** @param {HTMLElement} element  Where the rendered Markdown goes (its children are ours). */
  constructor(element) {
    this.element = element;
    /** @type {{raw: string, nodes: Node[]}[]} one entry per top-level block, in order */
    this.blocks = [];
  }

  /**
   * Show `fullText`, the whole answer so far.
   * @param {string} fullText
   * @param {{complete?: boolean}} [options]  complete: the text is final; read it all once more,
   *   so the end result is exactly marked's reading of the whole text.
   */
  update(fullText, { complete = false } = {}) {
    const text = complete ? fullText : fullText.replace(FENCE_START, '$1');
    // The text above the live blocks is settled: parse only from where it ends. Each block's raw
    // is its exact source, so the settled blocks' raws are a prefix of the text.
    let settled = complete || LINK_DEFINITION.test(text) ? 0 : Math.max(0, this.blocks.length - LIVE_BLOCKS);
    let prefix = this.blocks.slice(0, settled).map((block) => block.raw).join('');
    if (!text.startsWith(prefix) || (prefix !== '' && !prefix.endsWith('\n'))) {
      settled = 0; // not a continuation of what is shown, or not at a line start: read it all
      prefix = '';
    }
    const tokens = markdown.lexer(text.slice(prefix.length));
    let same = 0;
    while (
      same < tokens.length &&
      settled + same < this.blocks.length &&
      this.blocks[settled + same].raw === tokens[same].raw
    ) {
      same += 1;
    }
    for (const block of this.blocks.splice(settled + same)) for (const node of block.nodes) node.remove();
    for (const token of tokens.slice(same)) {
      const nodes = renderBlock(token);
      this.element.append(...nodes);
      this.blocks.push({ raw: token.raw, nodes });
    }
  }
}
