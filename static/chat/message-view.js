// Renders the message list: one <li class="message"> per message, kept in seq order,
// with pending/failed local messages (no seq yet) after all stored ones. Own stored
// messages get Edit (inside the edit window) and Delete (after an in-page confirm);
// a moderator gets Delete on everyone's.

import { renderBody } from './format.js';
import { fullTime, parseTime, relativeTime } from './relative-time.js';

const GROUP_WINDOW_MS = 5 * 60_000; // same author within 5 min: one visual group
const NEAR_BOTTOM_PX = 120;

export class MessageView {
  constructor({ list, scroller, empty, me, onEdit, onDelete, onSaveEdit, editWindowMs = 0, moderator = false }) {
    this.list = list;
    this.scroller = scroller;
    this.empty = empty;
    this.me = me;
    this.onEdit = onEdit; // (body) => void, for a failed message's "Edit" button
    this.onDelete = onDelete; // (id) => bool (sent), after the reader confirmed
    this.onSaveEdit = onSaveEdit; // (id, body) => bool (sent), from the inline editor
    this.editWindowMs = editWindowMs; // 0: no editing from the page
    this.moderator = moderator; // may delete others' messages (the server checks)
    this.byId = new Map(); // message id -> li
    this.byClientId = new Map(); // client_id -> li, while pending or failed
    this.messages = new WeakMap(); // li -> the message it shows (raw body included)
  }

  // Drop all stored messages (keeping local pending/failed ones), e.g. before a reload.
  clear() {
    this.byId.clear();
    this.list.replaceChildren(...this.byClientId.values());
    this.#afterChange();
  }

  // Drop everything, local pending/failed messages included: another room opens.
  reset() {
    this.byId.clear();
    this.byClientId.clear();
    this.list.replaceChildren();
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
    const li = this.byClientId.get(clientId);
    return li ? this.messages.get(li).body : null;
  }

  // The li showing stored message `id`, if loaded.
  element(id) {
    return this.byId.get(id) ?? null;
  }

  // The edit of message `id` was applied (message_edited came back): close its editor.
  editSaved(id) {
    const li = this.byId.get(id);
    if (li?.querySelector('.message-editor[data-saving]')) this.#closeEditor(li);
  }

  // The server refused an edit: editors waiting for an answer become editable again.
  // Returns whether any was waiting.
  editFailed(text) {
    const waiting = this.list.querySelectorAll('.message-editor[data-saving]');
    for (const form of waiting) this.#editorIdle(form, text);
    return waiting.length > 0;
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
    // The Edit button goes once a message is older than the edit window.
    for (const button of this.list.querySelectorAll('.message-tools [data-action="edit"]')) {
      const msg = this.messages.get(button.closest('li.message'));
      if (msg && !this.#editable(msg, now)) button.remove();
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

    const tools = document.createElement('div');
    tools.className = 'message-tools';
    tools.hidden = true;

    li.append(meta, body, status, tools);
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
    // Someone else's message that mentions the reader stands out.
    const mentionsMe = Array.isArray(msg.mentions) && msg.mentions.includes(this.me) && msg.user !== this.me;
    li.classList.toggle('message--mention', mentionsMe && !msg.deleted);

    li.querySelector('.message-author').textContent = msg.user || 'unknown';
    const time = li.querySelector('.message-time');
    const date = parseTime(msg.created_at) || new Date();
    time.dateTime = date.toISOString();
    time.title = fullTime(date);
    time.textContent = relativeTime(date);

    // Text nodes and safe elements only: bodies are user data, never parsed as HTML.
    const previous = this.messages.get(li);
    this.messages.set(li, msg);
    const body = li.querySelector('.message-body');
    if (msg.deleted) {
      body.textContent = 'message deleted';
      li.querySelector('.message-editor')?.remove();
      li.classList.remove('message--editing');
      body.hidden = false;
    } else if (!previous || previous.body !== msg.body || previous.edited_at !== msg.edited_at) {
      body.replaceChildren(renderBody(msg.body ?? ''));
      const editedAt = parseTime(msg.edited_at ?? '');
      if (msg.edited_at && editedAt) {
        const marker = document.createElement('span');
        marker.className = 'message-edited';
        marker.textContent = '(edited)';
        marker.title = `Edited ${fullTime(editedAt)}`;
        body.append(' ', marker);
      }
    }
    this.#fillTools(li, msg, stored);
  }

  // Edit and Delete for the reader's own stored messages; Delete alone on others'
  // for a moderator.
  #fillTools(li, msg, stored) {
    const tools = li.querySelector('.message-tools');
    const own = msg.user === this.me;
    if (!stored || msg.deleted || !(own || this.moderator)) {
      delete tools.dataset.confirming;
      tools.hidden = true;
      tools.replaceChildren();
      return;
    }
    if (tools.dataset.confirming) return; // keep an open "Delete this message?" as it is
    const buttons = [];
    if (own && this.#editable(msg)) buttons.push(this.#toolButton('Edit', 'edit', () => this.#openEditor(li)));
    buttons.push(this.#toolButton('Delete', 'delete', () => this.#confirmDelete(li)));
    tools.replaceChildren(...buttons);
    tools.hidden = false;
  }

  #editable(msg, now = Date.now()) {
    if (!this.editWindowMs || !this.onSaveEdit || msg.deleted) return false;
    const created = parseTime(msg.created_at);
    return created !== null && now - created.getTime() < this.editWindowMs;
  }

  #toolButton(label, action, onClick) {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'link-button message-tool';
    button.dataset.action = action;
    button.textContent = label;
    button.setAttribute('aria-label', `${label} message`);
    button.addEventListener('click', onClick);
    return button;
  }

  #confirmDelete(li) {
    const tools = li.querySelector('.message-tools');
    tools.dataset.confirming = 'true';
    const question = document.createElement('span');
    question.className = 'message-confirm';
    question.textContent = 'Delete this message?';
    const keys = new AbortController();
    const done = () => {
      keys.abort();
      delete tools.dataset.confirming;
      const msg = this.messages.get(li);
      this.#fillTools(li, msg, Number.isInteger(msg.id));
    };
    const yes = this.#toolButton('Delete', 'confirm-delete', () => {
      const msg = this.messages.get(li);
      done();
      if (!msg.deleted) this.onDelete?.(msg.id);
    });
    yes.classList.add('message-tool--danger');
    yes.setAttribute('aria-label', 'Yes, delete this message');
    const no = this.#toolButton('Cancel', 'cancel-delete', () => {
      done();
      tools.querySelector('[data-action="delete"]')?.focus();
    });
    no.setAttribute('aria-label', 'Keep this message');
    tools.replaceChildren(question, ' ', yes, ' ', no);
    tools.addEventListener(
      'keydown',
      (event) => {
        if (event.key === 'Escape') no.click();
      },
      { signal: keys.signal },
    );
    no.focus();
  }

  #openEditor(li) {
    const msg = this.messages.get(li);
    if (!msg || li.querySelector('.message-editor')) return;
    const form = document.createElement('form');
    form.className = 'message-editor';
    const textarea = document.createElement('textarea');
    textarea.className = 'message-editor__input';
    textarea.rows = Math.min(8, (msg.body.match(/\n/g)?.length ?? 0) + 1);
    textarea.value = msg.body;
    textarea.setAttribute('aria-label', 'Edit message');
    const note = document.createElement('p');
    note.className = 'message-editor__note muted';
    note.textContent = 'Enter to save, Esc to cancel';
    const save = document.createElement('button');
    save.type = 'submit';
    save.className = 'button button--primary button--small';
    save.textContent = 'Save';
    const cancel = document.createElement('button');
    cancel.type = 'button';
    cancel.className = 'button button--quiet button--small';
    cancel.textContent = 'Cancel';
    const row = document.createElement('div');
    row.className = 'message-editor__row';
    row.append(note, cancel, save);
    form.append(textarea, row);

    const submit = () => {
      if (form.dataset.saving) return;
      const body = textarea.value.trim();
      const current = this.messages.get(li);
      if (body === '' || current.deleted) return;
      if (body === current.body) {
        this.#closeEditor(li);
        return;
      }
      if (!this.onSaveEdit(current.id, body)) {
        this.#editorIdle(form, 'Not connected: try again in a moment.');
        return;
      }
      form.dataset.saving = 'true';
      textarea.readOnly = true;
      save.disabled = true;
      note.textContent = 'saving…';
    };
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      submit();
    });
    textarea.addEventListener('keydown', (event) => {
      if (event.key === 'Escape') {
        event.preventDefault();
        this.#closeEditor(li);
      } else if (event.key === 'Enter' && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
        event.preventDefault();
        submit();
      }
    });
    cancel.addEventListener('click', () => this.#closeEditor(li));

    li.querySelector('.message-body').hidden = true;
    li.querySelector('.message-tools').hidden = true;
    li.classList.add('message--editing');
    li.querySelector('.message-body').after(form);
    textarea.focus();
    textarea.setSelectionRange(textarea.value.length, textarea.value.length);
  }

  #editorIdle(form, text) {
    delete form.dataset.saving;
    form.querySelector('textarea').readOnly = false;
    form.querySelector('[type="submit"]').disabled = false;
    const note = form.querySelector('.message-editor__note');
    note.textContent = text;
    note.classList.add('message-editor__note--error');
  }

  #closeEditor(li) {
    const form = li.querySelector('.message-editor');
    const hadFocus = form?.contains(document.activeElement);
    form?.remove();
    li.classList.remove('message--editing');
    li.querySelector('.message-body').hidden = false;
    const msg = this.messages.get(li);
    this.#fillTools(li, msg, Number.isInteger(msg.id));
    if (hadFocus) li.querySelector('[data-action="edit"]')?.focus();
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
      this.onEdit?.(this.messages.get(li).body);
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
