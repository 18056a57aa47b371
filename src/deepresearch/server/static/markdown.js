// A small, safe Markdown renderer for answers: the text is escaped first, then a
// handful of constructs become HTML (headings, lists, quotes, code, emphasis, links,
// and [n] citation markers as buttons). No raw HTML from the answer ever reaches the page.
"use strict";

const Markdown = (() => {
  const escapeHtml = (text) =>
    text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");

  const MARKER = /(^|[^\w\]])\[\^?\s*(\d{1,4}(?:\s*[-\u2013,]\s*\d{1,4})*)\s*\]/g;

  function numbersOf(inside) {
    const numbers = [];
    for (const part of inside.split(/\s*,\s*/)) {
      const bounds = part.split(/\s*[-\u2013]\s*/).map(Number);
      const first = bounds[0], last = bounds[bounds.length - 1];
      if (bounds.length > 2 || last < first || last - first > 20) return null;
      for (let n = first; n <= last; n++) numbers.push(n);
    }
    return numbers;
  }

  function inline(text, cite) {
    const codes = [];
    let html = escapeHtml(text).replace(/`([^`]+)`/g, (_, code) => {
      codes.push(`<code>${code}</code>`);
      return `\u0000${codes.length - 1}\u0000`;
    });
    html = html
      .replace(/\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g,
        (_, label, url) => `<a href="${url}" target="_blank" rel="noopener noreferrer">${label}</a>`)
      .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[\s(])\*([^*\s][^*]*)\*/g, "$1<em>$2</em>")
      .replace(/(^|[\s(])_([^_\s][^_]*)_(?=[\s).,;:!?]|$)/g, "$1<em>$2</em>")
      .replace(MARKER, (whole, before, inside) => {
        const numbers = numbersOf(inside);
        if (!numbers || !numbers.every((n) => cite.has(n))) return whole;
        return before + numbers.map((n) =>
          `<button type="button" class="cite" data-cite="${n}" aria-label="Open source ${n}">[${n}]</button>`).join("");
      });
    return html.replace(/\u0000(\d+)\u0000/g, (_, i) => codes[Number(i)]);
  }

  function render(source, citedNumbers) {
    const cite = citedNumbers || new Set();
    const lines = source.replace(/\r\n?/g, "\n").split("\n");
    const out = [];
    let paragraph = [];
    let list = null; // {tag, items}
    const flushParagraph = () => {
      if (paragraph.length) out.push(`<p>${inline(paragraph.join(" "), cite)}</p>`);
      paragraph = [];
    };
    const flushList = () => {
      if (list) out.push(`<${list.tag}>${list.items.map((i) => `<li>${inline(i, cite)}</li>`).join("")}</${list.tag}>`);
      list = null;
    };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      if (/^\s*```/.test(line)) {
        flushParagraph(); flushList();
        const code = [];
        while (++i < lines.length && !/^\s*```/.test(lines[i])) code.push(lines[i]);
        out.push(`<pre><code>${escapeHtml(code.join("\n"))}</code></pre>`);
        continue;
      }
      const heading = /^(#{1,6})\s+(.*)$/.exec(line);
      const bullet = /^\s*[-*+]\s+(.*)$/.exec(line);
      const numbered = /^\s*\d+[.)]\s+(.*)$/.exec(line);
      const quote = /^\s*>\s?(.*)$/.exec(line);
      if (!line.trim()) { flushParagraph(); flushList(); }
      else if (heading) {
        flushParagraph(); flushList();
        const level = Math.min(6, heading[1].length + 2);
        out.push(`<h${level}>${inline(heading[2], cite)}</h${level}>`);
      } else if (bullet || numbered) {
        flushParagraph();
        const tag = bullet ? "ul" : "ol";
        if (list && list.tag !== tag) flushList();
        if (!list) list = { tag, items: [] };
        list.items.push((bullet || numbered)[1]);
      } else if (quote) {
        flushParagraph(); flushList();
        out.push(`<blockquote>${inline(quote[1], cite)}</blockquote>`);
      } else if (list && /^\s+/.test(line)) {
        list.items[list.items.length - 1] += " " + line.trim();
      } else {
        flushList();
        paragraph.push(line.trim());
      }
    }
    flushParagraph(); flushList();
    return out.join("\n");
  }

  return { render, escapeHtml };
})();
