// Renders the message list: one <li class="message"> per message, kept in seq order,
// with pending/failed local messages (no seq yet) after all stored ones.

import { fullTime, parseTime, relativeTime } from './relative-time.js';

const GROUP_WINDOW_MS = 5 * 60_000; // same author within 5 min: one visual group
const NEAR_BOTTOM_PX = 120;

export class MessageView {
  constructor({ list, scroller, empty, me, onEdit }) {
    this.list = list;
    this.scroller = scroller;
    this.empty = empty;
    this.me = me;
    this.onEdit = onEdit; // (body) => void, for a failed message's "Edit" button
    this.byId = new Map(); // message id -> li
    this.byClientId = new Map(); // client_id -> li, while pending or failed
  }

  // Drop all stored messages (keeping local pending/failed ones), e.g. before a reload.
  clear() {
    this.byId.clear();
    this.list.replaceChildren(...this.byClientId.values());
    this.#afterChange();
  }

  // Insert or update stored messages (from REST or the socket). Returns new elements.
  upsert(messages) {
    const added = [];
    for (const msg of messages) {
      let li = this.byId.get(msg.id);
      // Our own pending message coming back (ack or broadcast): reuse its element.
      if (!li && msg.client_id && msg.user === this.me && this.byClientId.has(msg.client_id)) {
        li = this.byClientId.get(msg.client_id);
        this.byClientId.delete(msg.client_id);
      }
      if (!li) {
        li = this.#create();
        added.push(li);
      }
      this.#fill(li, msg);
      this.byId.set(msg.id, li);
      this.#place(li, msg.seq);
    }
    this.#afterChange();
    return added;
  }

  // Show a local message at once, before the server has it.
  addPending(item) {
    if (this.byClientId.has(item.client_id)) return this.byClientId.get(item.client_id);
    const li = this.#create();
    this.#fill(li, { user: this.me, body: item.body, created_at: item.created_at, client_id: item.client_id });
    this.setLocalState(item.client_id, 'pending', 'sending…', li);
    this.byClientId.set(item.client_id, li);
    this.list.append(li);
    this.#afterChange();
    return li;
  }

  // The text of a pending message, e.g. to build the stored message from an ack.
  pendingBody(clientId) {
    return this.byClientId.get(clientId)?.querySelector('.message-body').textContent ?? null;
  }

  hasPending(clientId) {
    return this.byClientId.has(clientId);
  }

  // state: 'pending' (with a note such as "sending…" or "retrying in 5 s") or 'failed'.
  setLocalState(clientId, state, note, li = this.byClientId.get(clientId)) {
    if (!li) return;
    li.dataset.state = state;
    const status = li.querySelector('.message-status');
    status.replaceChildren();
    status.hidden = false;
    const text = document.createElement('span');
    text.textContent = note;
    status.append(text);
    if (state === 'failed') status.append(this.#failedActions(clientId, li));
  }

  isNearBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < NEAR_BOTTOM_PX;
  }

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  // Run `change` (which prepends older messages) without moving what the reader sees.
  keepScrollPosition(change) {
    const before = this.scroller.scrollHeight - this.scroller.scrollTop;
    const result = change();
    this.scroller.scrollTop = this.scroller.scrollHeight - before;
    return result;
  }

  refreshTimes(now = Date.now()) {
    for (const time of this.list.querySelectorAll('time.message-time')) {
      const date = parseTime(time.dateTime);
      if (date) time.textContent = relativeTime(date, now);
    }
  }

  #create() {
    const li = document.createElement('li');
    li.className = 'message';

    const meta = document.createElement('div');
    meta.className = 'message-meta';
    const author = document.createElement('span');
    author.className = 'message-author';
    const time = document.createElement('time');
    time.className = 'message-time';
    meta.append(author, ' ', time);

    const body = document.createElement('div');
    body.className = 'message-body';

    const status = document.createElement('div');
    status.className = 'message-status';
    status.hidden = true;

    li.append(meta, body, status);
    return li;
  }

  #fill(li, msg) {
    const stored = Number.isInteger(msg.id);
    if (stored) {
      li.dataset.id = String(msg.id);
      li.dataset.seq = String(msg.seq);
      li.dataset.state = 'sent';
      const status = li.querySelector('.message-status');
      status.hidden = true;
      status.replaceChildren();
    }
    li.dataset.clientId = msg.client_id || '';
    li.dataset.user = msg.user || '';
    li.classList.toggle('message--own', msg.user === this.me);
    li.classList.toggle('message--deleted', Boolean(msg.deleted));

    li.querySelector('.message-author').textContent = msg.user || 'unknown';
    const time = li.querySelector('.message-time');
    const date = parseTime(msg.created_at) || new Date();
    time.dateTime = date.toISOString();
    time.title = fullTime(date);
    time.textContent = relativeTime(date);

    // textContent only: message bodies are user data and never parsed as HTML.
    li.querySelector('.message-body').textContent = msg.deleted ? 'message deleted' : msg.body ?? '';
  }

  // Move li so stored messages stay in seq order, ahead of any pending ones.
  #place(li, seq) {
    let prev = this.list.lastElementChild;
    while (prev && (prev === li || !(Number(prev.dataset.seq) < seq))) prev = prev.previousElementSibling;
    const ref = prev ? prev.nextElementSibling : this.list.firstElementChild;
    if (ref === li) return; // already in place: moving it would re-announce it
    this.list.insertBefore(li, ref);
  }

  #failedActions(clientId, li) {
    const actions = document.createElement('span');
    actions.className = 'message-actions';

    const edit = document.createElement('button');
    edit.type = 'button';
    edit.className = 'link-button';
    edit.textContent = 'Edit';
    edit.addEventListener('click', () => {
      this.onEdit?.(li.querySelector('.message-body').textContent);
      this.#removeLocal(clientId, li);
    });

    const discard = document.createElement('button');
    discard.type = 'button';
    discard.className = 'link-button';
    discard.textContent = 'Discard';
    discard.addEventListener('click', () => this.#removeLocal(clientId, li));

    actions.append(' ', edit, ' ', discard);
    return actions;
  }

  #removeLocal(clientId, li) {
    this.byClientId.delete(clientId);
    li.remove();
    this.#afterChange();
  }

  #afterChange() {
    this.#regroup();
    if (this.empty) this.empty.hidden = this.list.childElementCount > 0;
  }

  // Consecutive messages by one author within a few minutes share a header.
  #regroup() {
    let prev = null;
    for (const li of this.list.children) {
      const continued =
        prev !== null &&
        prev.dataset.user === li.dataset.user &&
        timeOf(li) - timeOf(prev) < GROUP_WINDOW_MS;
      li.classList.toggle('message--continued', continued);
      prev = li;
    }
  }
}

function timeOf(li) {
  return Date.parse(li.querySelector('time.message-time').dateTime) || 0;
}
