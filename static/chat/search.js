// Message search from the room header: GET /api/search/ (newest first, `before` for
// more), results listed in a panel over the messages; each result links to its room at
// that message (`?at=<seq>`). A "from:name" word in the query filters by author; the
// rest goes to the server as typed ("quoted phrase", or, -word on PostgreSQL).

import { getJSON } from './api.js';
import { fullTime, parseTime, relativeTime } from './relative-time.js';

const FROM_WORD = /(?:^|\s)from:(\S+)/i;

// Split the box's text into the API's q and from parameters.
export function parseQuery(text) {
  const match = FROM_WORD.exec(text);
  const from = match ? match[1].replace(/^@/, '') : '';
  const q = (match ? text.replace(match[0], ' ') : text).trim().replace(/\s+/g, ' ');
  return { q, from };
}

export function messageUrl(room, seq) {
  return `/rooms/${encodeURIComponent(room)}/?at=${encodeURIComponent(seq)}`;
}

export class SearchPanel {
  constructor({ form, input, scope, panel, heading, list, status, more, close, url, room, onError }) {
    Object.assign(this, { form, input, scope, panel, heading, list, status, more, close, url, room, onError });
    this.params = null;
    this.lastId = null;
    this.busy = false;

    form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.search();
    });
    scope.addEventListener('change', () => {
      if (!panel.hidden) this.search();
    });
    more.addEventListener('click', () => this.#load());
    close.addEventListener('click', () => this.hide());
    panel.addEventListener('keydown', (event) => {
      if (event.key === 'Escape') this.hide();
    });
    input.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && !panel.hidden) {
        event.preventDefault();
        this.hide();
      }
    });
  }

  search() {
    const { q, from } = parseQuery(this.input.value);
    if (!q) {
      this.input.focus(); // from:name alone is not a search: the server wants words
      return;
    }
    this.params = { q, from, room: this.scope.value === 'room' ? this.room : '' };
    this.lastId = null;
    this.list.replaceChildren();
    this.heading.textContent = `Results for “${this.input.value.trim()}”`;
    this.panel.hidden = false;
    this.#load();
  }

  // Another room opened: search there, and close what the previous one showed.
  reset(room) {
    this.room = room;
    this.panel.hidden = true;
    this.params = null;
  }

  hide() {
    this.panel.hidden = true;
    this.params = null;
    this.input.focus();
  }

  async #load() {
    if (this.busy || !this.params) return;
    const params = this.params;
    this.busy = true;
    this.more.hidden = true;
    this.status.textContent = 'Searching…';
    const url = new URL(this.url, location.origin);
    for (const [key, value] of Object.entries(params)) if (value) url.searchParams.set(key, value);
    if (this.lastId !== null) url.searchParams.set('before', String(this.lastId));
    try {
      const data = await getJSON(url.pathname + url.search);
      if (params !== this.params) return; // a newer search replaced this one
      const results = Array.isArray(data?.results) ? data.results : [];
      this.list.append(...results.map((msg) => this.#item(msg, params.q)));
      if (results.length) this.lastId = results[results.length - 1].id;
      const count = this.list.childElementCount;
      this.status.textContent =
        count === 0 ? 'No messages found.' : `${count} message${count === 1 ? '' : 's'}${data?.has_more ? ' so far' : ''}`;
      this.more.hidden = !(data?.has_more && results.length);
    } catch (err) {
      if (params !== this.params) return;
      this.status.textContent =
        err?.status === 400 ? 'The server cannot search for that: try other words.' : 'Search failed. Try again.';
      this.onError?.(err);
    } finally {
      this.busy = false;
    }
  }

  #item(msg, q) {
    const li = document.createElement('li');
    li.className = 'search-hit';
    const link = document.createElement('a');
    link.className = 'search-hit__link';
    link.href = messageUrl(String(msg.room), msg.seq);
    link.dataset.id = String(msg.id);

    const meta = document.createElement('span');
    meta.className = 'search-hit__meta';
    const author = document.createElement('strong');
    author.textContent = msg.user || 'unknown';
    const where = document.createElement('span');
    where.textContent = `#${msg.room}`;
    const time = document.createElement('time');
    const date = parseTime(msg.created_at);
    if (date) {
      time.dateTime = date.toISOString();
      time.title = fullTime(date);
      time.textContent = relativeTime(date);
    }
    meta.append(author, ' ', where, ' ', time);

    const body = document.createElement('span');
    body.className = 'search-hit__body';
    body.append(...highlight(String(msg.body ?? ''), q));
    link.append(meta, body);
    li.append(link);
    return li;
  }
}

// Text nodes with each query word's occurrences wrapped in <mark>. Quotes, "or" and
// -excluded words are search syntax, not words to mark.
export function highlight(text, q) {
  const words = q
    .toLowerCase()
    .replace(/"/g, ' ')
    .split(' ')
    .filter((word) => word && word !== 'or' && !word.startsWith('-'));
  const lower = text.toLowerCase();
  // Case folding that changes lengths would misplace the marks: leave such text plain.
  if (words.length === 0 || lower.length !== text.length) return [text];
  const marks = new Uint8Array(text.length);
  for (const word of words) {
    for (let i = lower.indexOf(word); i !== -1; i = lower.indexOf(word, i + word.length)) {
      marks.fill(1, i, i + word.length);
    }
  }
  const nodes = [];
  let start = 0;
  for (let i = 1; i <= text.length; i += 1) {
    if (i < text.length && marks[i] === marks[start]) continue;
    const piece = text.slice(start, i);
    if (marks[start]) {
      const mark = document.createElement('mark');
      mark.textContent = piece;
      nodes.push(mark);
    } else {
      nodes.push(piece);
    }
    start = i;
  }
  return nodes;
}
