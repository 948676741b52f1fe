// Markdown, rendered into elements: never into HTML strings. The page's answers come from a
// model, so any text must render in time linear in its length: no rule may rescan the rest of a
// line from every candidate opener (a line of 160,000 "[" once took 9 s, each "[" searching
// the rest of the line for its "]"), and a streamed answer re-renders only its open block.
// Two globals: renderMarkdown(source) and MarkdownStream, for app.js and the browser tests.
"use strict";

const { renderMarkdown, MarkdownStream } = (() => {
  const SPACE = /\s/;
  const WORD = /\w/;
  const isSpace = (ch) => ch !== undefined && SPACE.test(ch);
  const isWord = (ch) => ch !== undefined && WORD.test(ch);

  // A function from a position to the first position at or after it whose character `stops`
  // accepts (text.length if none): its table is built in one pass, right to left, the first
  // time an opener asks, so that every rule finds its closer in constant time.
  function closer(text, stops) {
    let next = null;
    return (from) => {
      if (next === null) {
        next = new Int32Array(text.length + 1);
        next[text.length] = text.length;
        for (let i = text.length - 1; i >= 0; i--) next[i] = stops(text[i]) ? i : next[i + 1];
      }
      return next[from];
    };
  }

  // The inline token that starts at `at`, as [kind, end], or null. The rules, tried in this
  // order: `code`; **bold**; *italic* or _italic_; [label](url). Emphasis needs text hugging its
  // markers (2 * 3 * 4 stays as it is) and holds no marker of its own kind; underscores only
  // count outside words (snake_case_name stays as it is). None spans a line.
  function tokenAt(text, at, next) {
    const ch = text[at];
    if (ch === "`") {
      const close = next.tick(at + 1);
      return close > at + 1 && text[close] === "`" ? ["code", close + 1] : null;
    }
    if (ch === "*") {
      const double = text[at + 1] === "*";
      const start = at + (double ? 2 : 1);
      const first = text[start];
      if (first === undefined || first === "*" || isSpace(first)) return null;
      const close = next.star(start);
      if (text[close] !== "*" || isSpace(text[close - 1])) return null;
      if (!double) return ["em", close + 1];
      return text[close + 1] === "*" ? ["strong", close + 2] : null;
    }
    if (ch === "_") {
      const first = text[at + 1];
      if (isWord(text[at - 1]) || first === undefined || first === "_" || isSpace(first)) return null;
      const close = next.underscore(at + 1);
      if (text[close] !== "_" || isSpace(text[close - 1]) || isWord(text[close + 1])) return null;
      return ["em", close + 1];
    }
    if (ch === "[") {
      const label = next.bracket(at + 1);
      if (label === at + 1 || text[label] !== "]" || text[label + 1] !== "(") return null;
      const url = next.paren(label + 2);
      return url > label + 2 && text[url] === ")" ? ["link", url + 1] : null;
    }
    return null;
  }

  function inline(text, parent) {
    const next = {
      tick: closer(text, (c) => c === "`" || c === "\n"),
      star: closer(text, (c) => c === "*" || c === "\n"),
      underscore: closer(text, (c) => c === "_" || c === "\n"),
      bracket: closer(text, (c) => c === "]" || c === "\n"),
      paren: closer(text, (c) => c === ")" || isSpace(c)),
    };
    let last = 0; // text before here is in parent already
    for (let at = 0; at < text.length; ) {
      const token = tokenAt(text, at, next);
      if (!token) {
        at++;
        continue;
      }
      const [kind, end] = token;
      if (at > last) parent.append(text.slice(last, at));
      let node;
      if (kind === "code") {
        node = document.createElement("code");
        node.textContent = text.slice(at + 1, end - 1);
      } else if (kind === "strong") {
        node = document.createElement("strong");
        inline(text.slice(at + 2, end - 2), node);
      } else if (kind === "em") {
        node = document.createElement("em");
        inline(text.slice(at + 1, end - 1), node);
      } else {
        const source = text.slice(at, end);
        const split = source.indexOf("](");
        const href = source.slice(split + 2, -1);
        if (/^https?:\/\//i.test(href)) {
          node = document.createElement("a");
          node.href = href;
          node.rel = "noopener noreferrer";
          node.target = "_blank";
          node.textContent = source.slice(1, split);
        } else {
          node = document.createTextNode(source);
        }
      }
      parent.append(node);
      last = at = end;
    }
    if (last < text.length) parent.append(text.slice(last));
  }

  // The source's lines, cut where source.replace(/\r\n?/g, "\n").split("\n") would cut them,
  // each with the offset just past its line break: -1 while the line may still grow (the last
  // line, or a "\r" at the very end, which a "\n" may yet join).
  function splitLines(source) {
    const lines = [];
    let start = 0;
    for (const lineBreak of source.matchAll(/\r\n?|\n/g)) {
      const end = lineBreak.index + lineBreak[0].length;
      const final = lineBreak[0] !== "\r" || end < source.length;
      lines.push({ text: source.slice(start, lineBreak.index), end: final ? end : -1 });
      start = end;
    }
    lines.push({ text: source.slice(start), end: -1 });
    return lines;
  }

  const FENCE = /^\s*```\s*([\w+-]*)/;
  const FENCE_CLOSE = /^\s*```/;
  // A heading's or a list item's marker and the spaces after it; the rest of the line is its
  // text. (Matching the rest as `\s+(.*)$` backtracked over long runs of spaces.) A rest that
  // holds a character `.` stops at was never a heading or an item, and still is not one.
  const HEADING = /^(#{1,6})\s+/;
  const ITEM = /^\s*(?:([-*+])|(\d+)[.)])\s+/;
  const LINE_END = /[\n\r\u2028\u2029]/;

  // Renders `source` into `parent`, block by block, and returns where it settled: the end of
  // the last finished line after which the block parser starts afresh (a blank line, a heading
  // or a closing code fence), and how many of parent's children come before it. Whatever text
  // follows, the elements before that point stay as they are.
  function renderBlocks(source, parent) {
    const settled = { offset: 0, elements: 0 };
    const settle = (line) => {
      if (line.end < 0) return;
      settled.offset = line.end;
      settled.elements = parent.childNodes.length;
    };
    const lines = splitLines(source);
    let paragraph = [];
    let list = null;
    const flush = () => {
      if (paragraph.length) {
        const p = document.createElement("p");
        paragraph.forEach((line, i) => {
          if (i) p.append(document.createElement("br"));
          inline(line, p);
        });
        parent.append(p);
        paragraph = [];
      }
      list = null;
    };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i].text;
      const fence = FENCE.exec(line);
      if (fence) {
        flush();
        const code = [];
        for (i++; i < lines.length && !FENCE_CLOSE.test(lines[i].text); i++) code.push(lines[i].text);
        const pre = document.createElement("pre");
        const element = document.createElement("code");
        if (fence[1]) element.className = "language-" + fence[1];
        element.textContent = code.join("\n");
        pre.append(element);
        parent.append(pre);
        if (i < lines.length) settle(lines[i]);
        continue;
      }
      const heading = HEADING.exec(line);
      const title = heading && line.slice(heading[0].length);
      if (heading && !LINE_END.test(title)) {
        flush();
        const h = document.createElement("h" + Math.min(6, heading[1].length + 2));
        inline(title, h);
        parent.append(h);
        settle(lines[i]);
        continue;
      }
      const item = ITEM.exec(line);
      const content = item && line.slice(item[0].length);
      if (item && !LINE_END.test(content)) {
        const kind = item[1] ? "ul" : "ol";
        if (paragraph.length) flush();
        if (!list || list.tagName.toLowerCase() !== kind) {
          list = document.createElement(kind);
          if (kind === "ol" && Number(item[2]) !== 1) list.start = Number(item[2]);
          parent.append(list);
        }
        const li = document.createElement("li");
        inline(content, li);
        list.append(li);
        continue;
      }
      if (!line.trim()) {
        flush();
        settle(lines[i]);
        continue;
      }
      list = null;
      paragraph.push(line);
    }
    flush();
    return settled;
  }

  function renderMarkdown(source) {
    const root = document.createElement("div");
    root.className = "body";
    renderBlocks(source, root);
    return root;
  }

  // An answer that grows while it streams in, in `root`. The blocks before the last point
  // where the block parser starts afresh can no longer change: they stay in the page as they
  // are, and each update renders only the source after them, the open block. Rendering the
  // whole answer for every piece made a long answer's cost quadratic in its length.
  class MarkdownStream {
    constructor() {
      this.root = document.createElement("div");
      this.root.className = "body";
      this.settledOffset = 0; // the source before here is rendered for good ...
      this.settledElements = 0; // ... as root's first children, these many
    }

    update(source) {
      const open = document.createDocumentFragment();
      const settled = renderBlocks(source.slice(this.settledOffset), open);
      while (this.root.childNodes.length > this.settledElements) this.root.lastChild.remove();
      this.root.append(open);
      this.settledOffset += settled.offset;
      this.settledElements += settled.elements;
    }
  }

  return { renderMarkdown, MarkdownStream };
})();
