// Light formatting of message bodies: links, `code`, ``` blocks ```, *emphasis*,
// _emphasis_, **strong** and "> " quotes.
//
// Everything is built from text nodes and createElement: nothing from a body ever goes
// through an HTML parser, and only http(s) URLs become links. Each pass is linear in the
// body's length (no backtracking regexes, delimiters paired by lookup tables), so a
// hostile 4000-character body renders as fast as a friendly one.

const LINK_REL = 'noopener noreferrer nofollow';
const FENCE = '```';
// Candidate URLs: a scheme or "www." up to whitespace, quotes, angle brackets or a
// backtick. A single character class with no alternation inside: no backtracking.
const URL_CANDIDATE = /(?:https?:\/\/|www\.)[^\s<>"'`]+/gi;
const TRAILING_PUNCTUATION = '.,:;!?*_~\'"';
const WORD = /[\p{L}\p{N}_]/u;

/** Render a message body as a DocumentFragment of text nodes and safe elements. */
export function renderBody(text, doc = document) {
  const fragment = doc.createDocumentFragment();
  for (const block of splitBlocks(String(text ?? ''))) {
    if (block.kind === 'code') {
      const pre = doc.createElement('pre');
      pre.className = 'md-pre';
      const code = doc.createElement('code');
      code.textContent = block.lines.join('\n');
      pre.append(code);
      fragment.append(pre);
    } else if (block.kind === 'quote') {
      const quote = doc.createElement('blockquote');
      quote.className = 'md-quote';
      appendLines(quote, block.lines, doc);
      fragment.append(quote);
    } else {
      appendLines(fragment, block.lines, doc);
    }
  }
  return fragment;
}

// Lines grouped into runs of plain text, "> " quotes and fenced code.
function splitBlocks(text) {
  const lines = text.split('\n');
  // A fence line opens a block only if a later fence line closes it.
  const fences = [];
  lines.forEach((line, index) => {
    if (line.trimStart().startsWith(FENCE)) fences.push(index);
  });
  const closing = new Map();
  for (let k = 0; k + 1 < fences.length; k += 2) closing.set(fences[k], fences[k + 1]);

  const blocks = [];
  const push = (kind, line) => {
    const last = blocks[blocks.length - 1];
    if (last && last.kind === kind && kind !== 'code') last.lines.push(line);
    else blocks.push({ kind, lines: [line] });
  };
  for (let i = 0; i < lines.length; i += 1) {
    const line = lines[i];
    const end = closing.get(i);
    if (end !== undefined && !isOneLineCode(line)) {
      blocks.push({ kind: 'code', lines: lines.slice(i + 1, end) });
      i = end;
    } else if (line.startsWith('> ') || line === '>') {
      push('quote', line.slice(2));
    } else {
      push('text', line);
    }
  }
  return blocks;
}

// "```npm test```" on its own line is inline code, not a fence.
function isOneLineCode(line) {
  const trimmed = line.trim();
  return trimmed.length > 2 * FENCE.length && trimmed.endsWith(FENCE);
}

function appendLines(parent, lines, doc) {
  lines.forEach((line, index) => {
    if (index > 0) parent.append('\n');
    appendInline(parent, line, doc);
  });
}

// ------------------------------------------------------------------ inline

function appendInline(parent, line, doc) {
  if (line === '') return;
  const spans = new Map(); // start -> {end, kind, href}, for code spans and links
  findCodeSpans(line, spans);
  findLinks(line, spans);
  const delims = findDelimiters(line, spans);
  renderRange(parent, line, 0, line.length, spans, delims, 0, doc);
}

// Backtick runs pair with the next run of the same length, as in Markdown.
function findCodeSpans(line, spans) {
  const runs = [];
  for (let i = 0; i < line.length; ) {
    if (line[i] !== '`') {
      i += 1;
      continue;
    }
    let j = i;
    while (j < line.length && line[j] === '`') j += 1;
    runs.push({ start: i, length: j - i });
    i = j;
  }
  // next[r]: the index of the next run with the same length, found right to left.
  const next = new Array(runs.length).fill(-1);
  const latest = new Map();
  for (let r = runs.length - 1; r >= 0; r -= 1) {
    next[r] = latest.get(runs[r].length) ?? -1;
    latest.set(runs[r].length, r);
  }
  for (let r = 0; r < runs.length; ) {
    const close = next[r];
    const open = runs[r];
    if (close === -1 || runs[close].start === open.start + open.length) {
      r += 1; // unmatched, or empty: literal backticks
      continue;
    }
    const contentStart = open.start + open.length;
    spans.set(open.start, {
      kind: 'code',
      end: runs[close].start + runs[close].length,
      content: line.slice(contentStart, runs[close].start),
    });
    r = close + 1;
  }
}

function findLinks(line, spans) {
  const covered = coveredBy(spans, line.length);
  URL_CANDIDATE.lastIndex = 0;
  for (let match; (match = URL_CANDIDATE.exec(line)); ) {
    const start = match.index;
    if (covered[start] || (start > 0 && WORD.test(line[start - 1]))) continue;
    const text = trimUrl(match[0]);
    const href = safeHref(text);
    if (href) spans.set(start, { kind: 'link', end: start + text.length, href });
  }
}

// Drop sentence punctuation after a URL, and a ")" that closes a bracket around it.
function trimUrl(url) {
  let end = url.length;
  let open = 0;
  for (const ch of url) if (ch === '(') open += 1;
  let closed = 0;
  for (const ch of url) if (ch === ')') closed += 1;
  while (end > 0) {
    const ch = url[end - 1];
    if (TRAILING_PUNCTUATION.includes(ch)) end -= 1;
    else if (ch === ')' && closed > open) {
      end -= 1;
      closed -= 1;
    } else break;
  }
  return url.slice(0, end);
}

function safeHref(text) {
  const candidate = /^www\./i.test(text) ? `https://${text}` : text;
  try {
    const url = new URL(candidate);
    if ((url.protocol === 'http:' || url.protocol === 'https:') && url.hostname) return url.href;
  } catch {
    /* not a URL: stays text */
  }
  return null;
}

function coveredBy(spans, length) {
  const covered = new Uint8Array(length);
  for (const [start, span] of spans) covered.fill(1, start, span.end);
  return covered;
}

// Emphasis delimiters outside code spans and links, each with whether it can open
// and close, plus sorted closer positions per kind for a binary search.
function findDelimiters(line, spans) {
  const covered = coveredBy(spans, line.length);
  const closers = { '**': [], '*': [], _: [] };
  const at = new Map(); // position -> kind
  for (let i = 0; i < line.length; i += 1) {
    if (covered[i]) continue;
    const ch = line[i];
    if (ch !== '*' && ch !== '_') continue;
    let kind = ch;
    if (ch === '*' && line[i + 1] === '*' && !covered[i + 1]) kind = '**';
    at.set(i, kind);
    const after = i + kind.length;
    const before = line[i - 1];
    const next = line[after];
    const canClose =
      before !== undefined && !/\s/.test(before) && (kind !== '_' || next === undefined || !WORD.test(next));
    if (canClose) closers[kind].push(i);
    if (kind === '**') i += 1;
  }
  return { at, closers };
}

function canOpen(line, i, kind) {
  const next = line[i + kind.length];
  if (next === undefined || /\s/.test(next)) return false;
  return kind !== '_' || i === 0 || !WORD.test(line[i - 1]);
}

// The first closer of `kind` at or after `from` (binary search); -1 if none.
function firstCloser(list, from) {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (list[mid] < from) lo = mid + 1;
    else hi = mid;
  }
  return lo < list.length ? list[lo] : -1;
}

const MAX_DEPTH = 2; // **strong with *emphasis* inside**, no deeper

function renderRange(parent, line, start, end, spans, delims, depth, doc) {
  let textStart = start;
  const flush = (upTo) => {
    if (upTo > textStart) parent.append(line.slice(textStart, upTo));
  };
  for (let i = start; i < end; ) {
    const span = spans.get(i);
    if (span && span.end <= end) {
      flush(i);
      parent.append(spanElement(span, line, i, doc));
      i = span.end;
      textStart = i;
      continue;
    }
    const kind = delims.at.get(i);
    if (kind && depth < MAX_DEPTH && canOpen(line, i, kind)) {
      const close = firstCloser(delims.closers[kind], i + kind.length + 1);
      if (close !== -1 && close + kind.length <= end) {
        flush(i);
        const el = doc.createElement(kind === '**' ? 'strong' : 'em');
        renderRange(el, line, i + kind.length, close, spans, delims, depth + 1, doc);
        parent.append(el);
        i = close + kind.length;
        textStart = i;
        continue;
      }
    }
    i += kind ? kind.length : 1;
  }
  flush(end);
}

function spanElement(span, line, start, doc) {
  if (span.kind === 'code') {
    const code = doc.createElement('code');
    code.className = 'md-code';
    code.textContent = span.content;
    return code;
  }
  const a = doc.createElement('a');
  a.href = span.href;
  a.rel = LINK_REL;
  a.target = '_blank';
  a.textContent = line.slice(start, span.end);
  return a;
}
