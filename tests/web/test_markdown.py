"""The page's Markdown renderer (server/web/markdown.js) in a real browser: what it makes of
Markdown, that any text renders in time linear in its length, and that a streamed answer
re-renders only its open block."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

MARKDOWN_JS = Path(__file__).parents[2] / "server" / "web" / "markdown.js"


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A blank page with the renderer loaded, and no console or script errors at the end."""
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_content("<!doctype html><html><body></body></html>")
    page.add_script_tag(path=str(MARKDOWN_JS))
    yield page
    context.close()
    assert errors == []


def render(page: Page, source: str) -> str:
    markup = page.evaluate("(source) => renderMarkdown(source).innerHTML", source)
    assert isinstance(markup, str)
    return markup


# What the renderer made of these before it was rewritten to run in linear time, unchanged.
RENDERED = {
    "emphasis": (
        "**bold** and *it* and _it_ and `code`",
        "<p><strong>bold</strong> and <em>it</em> and <em>it</em> and <code>code</code></p>",
    ),
    "no emphasis": (
        "call snake_case_name with 2 * 3 * 4, a*b*c and __init__, ** x ** and * y *",
        "<p>call snake_case_name with 2 * 3 * 4, a<em>b</em>c and __init__, ** x ** and * y *</p>",
    ),
    "nested emphasis": (
        "*a **b** c* _x *y* z_ **x _y_ z** `*not*` _**",
        "<p>*a <strong>b</strong> c* <em>x <em>y</em> z</em> <strong>x <em>y</em> z</strong> <code>*not*</code> _**</p>",
    ),
    "links": (
        "[ok](https://example.org) [bad](javascript:alert(1)) [[nested](http://x.y) [a](b c) [](https://e.x)",
        '<p><a href="https://example.org" rel="noopener noreferrer" target="_blank">ok</a> [bad](javascript:alert(1)) <a href="http://x.y" rel="noopener noreferrer" target="_blank">[nested</a> [a](b c) [](https://e.x)</p>',
    ),
    "headings": (
        "# One\n## Two *it*\n###### Six\n####### seven\n#nospace",
        "<h3>One</h3><h4>Two <em>it</em></h4><h6>Six</h6><p>####### seven<br>#nospace</p>",
    ),
    "lists": (
        "3. third\n4. fourth\n\n- a\n* b\n+ c\n1) one\n  - indented\n10. ten",
        '<ol start="3"><li>third</li><li>fourth</li></ol><ul><li>a</li><li>b</li><li>c</li></ul><ol><li>one</li></ol><ul><li>indented</li></ul><ol start="10"><li>ten</li></ol>',
    ),
    "paragraphs": (
        "para line one\nline two\n- item\nafter\n\n\n  \nlast",
        "<p>para line one<br>line two</p><ul><li>item</li></ul><p>after</p><p>last</p>",
    ),
    "code blocks": (
        "```python\nprint('<b>hi</b>')\n```\ntext\n   ```c++ more\nunclosed\n\nstill code",
        '<pre><code class="language-python">print(\'&lt;b&gt;hi&lt;/b&gt;\')</code></pre><p>text</p><pre><code class="language-c++">unclosed\n\nstill code</code></pre>',
    ),
    "line breaks": (
        "a\r\nb\rc\r\n\r\nd",
        "<p>a<br>b<br>c</p><p>d</p>",
    ),
    "html stays text": (
        "<img src=x onerror=alert(1)> & <b>bold</b>",
        "<p>&lt;img src=x onerror=alert(1)&gt; &amp; &lt;b&gt;bold&lt;/b&gt;</p>",
    ),
    "line separators": (
        "- a\u2028b\n# h\u2029i\n-  \u2028c",
        "<p>- a\u2028b<br># h\u2029i</p><ul><li>c</li></ul>",
    ),
}


@pytest.mark.parametrize("name", RENDERED)
def test_markdown_renders_as_it_always_did(page: Page, name: str) -> None:
    source, markup = RENDERED[name]
    assert render(page, source) == markup


# Text a model may write (or be made to write) that rescanning parsers take quadratic time
# over: runs of one marker, openers that never close, lines that almost start a block.
N = 160_000
PATHOLOGICAL = {
    "[": "[" * N,
    "[ then ]": "[" * N + "]",
    "[a](b": "[a](b" * (N // 5),
    "*": "*" * N,
    "*a": "*a" * (N // 2),
    "**a ": "**a " * (N // 4),
    "`": "`" * N,
    "_": "_" * N,
    "_a": "_a" * (N // 2),
    "heading spaces": "# " + " " * N + "x\u2028",
    "item spaces": "- " + " " * N + "x\u2028",
    "blank lines": "\n" * N,
    "fences": "```\n" * (N // 4),
    "items": "- a\n" * (N // 4),
}
# Linear, each renders in well under 0.2 s here; the renderer that rescanned took 9 s over
# 160,000 "[" (0.6 s over 40,000, 2.3 s over 80,000). A liveness bound, not a benchmark.
LINEAR_BOUND_MS = 1_000


@pytest.mark.parametrize("name", PATHOLOGICAL)
def test_any_text_renders_in_linear_time(page: Page, name: str) -> None:
    source = PATHOLOGICAL[name]
    result: dict[str, Any] = page.evaluate(
        """(source) => {
            const started = performance.now();
            const node = renderMarkdown(source);
            return { ms: performance.now() - started, text: node.textContent };
        }""",
        source,
    )
    assert result["ms"] < LINEAR_BOUND_MS, f"{name}: {result['ms']:.0f} ms"
    if len(set(source)) == 1 and source[0] in "[*_":
        assert result["text"] == source  # a run of one marker is text, every character of it


STREAMED = (
    "# A long answer\n\n"
    + "".join(f"Paragraph {i} has *some* words, `code` and more words.\n\n" for i in range(6))
    + "- one\n- two\n- three\n\n"
    + "```python\nprint('hello')\n```\n\n"
    + "".join(f"Paragraph {i} ends the answer.\n\n" for i in range(6, 9))
    + "Done."
)


@pytest.mark.parametrize("piece", [1, 7, 40])
def test_a_stream_renders_what_the_whole_renders_and_keeps_finished_blocks(
    page: Page, piece: int
) -> None:
    result: dict[str, Any] = page.evaluate(
        """([source, piece]) => {
            const stream = new MarkdownStream();
            document.body.append(stream.root);
            const seen = [];  // after each update, the elements of the finished blocks
            const wrong = [];
            for (let end = piece; ; end += piece) {
                const prefix = source.slice(0, Math.min(end, source.length));
                stream.update(prefix);
                if (stream.root.innerHTML !== renderMarkdown(prefix).innerHTML) wrong.push(prefix);
                // The blocks before the last blank line are finished, whatever comes next.
                const blank = prefix.lastIndexOf("\\n\\n");
                const finished = blank < 0 ? 0 : renderMarkdown(prefix.slice(0, blank)).children.length;
                seen.push([...stream.root.children].slice(0, finished));
                if (end >= source.length) break;
            }
            // Each is still in the page, the same element, where it was.
            const final = [...stream.root.children];
            let kept = 0;
            let replaced = 0;
            for (const elements of seen) {
                elements.forEach((element, i) => (element === final[i] ? kept++ : replaced++));
            }
            return { wrong, kept, replaced, blocks: final.length, updates: seen.length };
        }""",
        [STREAMED, piece],
    )
    assert result["wrong"] == []
    assert result["blocks"] == 13
    assert result["replaced"] == 0
    assert result["kept"] > result["updates"]
