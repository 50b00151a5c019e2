// Tests for markdown.js's renderer in Node: what HTML it makes of the model's text, before the
// sanitizer (which needs a browser; tests/test_page.py runs the whole path in Chromium).
//
// Run from the repository root:   node --test tests/js/
//
// The rule under test: the model's own markup is never markup. Raw HTML comes out escaped (shown,
// not dropped), links are links only for http:, https: and mailto:, images are links (never
// fetched), and nothing carries a style attribute.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { escapeHtml, toHtml } from '../../static/js/markdown.js';

for (const [name, text, html] of [
  ['inline HTML is text', '<b>bold</b> x', '<p>&#60;b&#62;bold&#60;/b&#62; x</p>\n'],
  ['an HTML block is text', '<img src=x onerror=alert(1)>', '<p class="raw-html">&#60;img src=x onerror=alert(1)&#62;</p>\n'],
  ['a script block is text', '<script>alert(1)</script>', '<p class="raw-html">&#60;script&#62;alert(1)&#60;/script&#62;</p>\n'],
  ['an HTML link is text', '<a href="javascript:alert(1)">x</a>', '<p>&#60;a href=&#34;javascript:alert(1)&#34;&#62;x&#60;/a&#62;</p>\n'],
  ['a javascript: link is its source', '[click](javascript:alert(1))', '<p>[click](javascript:alert(1))</p>\n'],
  ['a javascript: autolink is its source', '<javascript:alert(1)>', '<p>&#60;javascript:alert(1)&#62;</p>\n'],
  ['a relative link is its source', '[rel](/relative) [h](#x)', '<p>[rel](/relative) [h](#x)</p>\n'],
  ['an https link is a link', '[x](https://ok.example "a\\"b")', '<p><a href="https://ok.example" title="a&#34;b">x</a></p>\n'],
  ['autolinks: www and e-mail', 'www.example.com a@b.co', '<p><a href="http://www.example.com">www.example.com</a> <a href="mailto:a@b.co">a@b.co</a></p>\n'],
  ['an image is a link with its alt text', '![pixel](https://example.com/p.png)', '<p><a class="image-link" href="https://example.com/p.png">pixel</a></p>\n'],
  ['an image without alt text shows its URL', '![](https://example.com/p.png)', '<p><a class="image-link" href="https://example.com/p.png">https://example.com/p.png</a></p>\n'],
  ['an image with a javascript: URL is its source', '![a](javascript:alert(1))', '<p>![a](javascript:alert(1))</p>\n'],
  ['markup inside emphasis is text', '**<u>n</u>**', '<p><strong>&#60;u&#62;n&#60;/u&#62;</strong></p>\n'],
  ['task boxes are characters', '- [x] done\n- [ ] todo', '<ul>\n<li>☑ done</li>\n<li>☐ todo</li>\n</ul>\n'],
  ['strikethrough', '~~gone~~', '<p><del>gone</del></p>\n'],
]) {
  test(`toHtml: ${name}`, () => {
    assert.equal(toHtml(text), html);
  });
}

test('toHtml: table alignment is a class, never a style or align attribute', () => {
  const html = toHtml('| a | b | c |\n|:--|:-:|--:|\n| 1 | 2 | 3 |');
  assert.deepEqual([...html.matchAll(/<t[hd]( class="[^"]*")?>/g)].map((m) => m[1] ?? ''), [
    ' class="align-left"', ' class="align-center"', ' class="align-right"',
    ' class="align-left"', ' class="align-center"', ' class="align-right"',
  ]);
  assert.doesNotMatch(html, /style=|align=/);
});

test('toHtml: a fenced block shows its language, and its code escaped', () => {
  assert.equal(
    toHtml('```python extra\nif a < b:\n    print("&")\n```'),
    '<div class="code-block"><div class="code-head"><span class="code-lang">python</span></div>' +
      '<pre><code>if a &#60; b:\n    print(&#34;&#38;&#34;)</code></pre></div>\n',
  );
});

test('toHtml: an unclosed fence is an open code block, not a paragraph', () => {
  assert.equal(
    toHtml('Intro\n\n```js\nconst a = 1;'),
    '<p>Intro</p>\n<div class="code-block"><div class="code-head"><span class="code-lang">js</span></div>' +
      '<pre><code>const a = 1;</code></pre></div>\n',
  );
});

test('escapeHtml escapes the five characters that matter', () => {
  assert.equal(escapeHtml(`<a href="x" title='y'>&</a>`), '&#60;a href=&#34;x&#34; title=&#39;y&#39;&#62;&#38;&#60;/a&#62;');
});
