// A private room's members: the list, adding someone by username (any member),
// removing someone (the room's creator or staff), and leaving (anyone, any room).

import { getJSON, sendJSON } from './api.js';

export class RoomMembersPanel {
  constructor({ section, list, form, input, error, leave, me, isStaff, onLeft, onError }) {
    Object.assign(this, { section, list, form, input, error, leave, me, isStaff, onLeft, onError });
    this.room = null;
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.#add();
    });
    leave.addEventListener('click', () => this.#leave());
  }

  // Show the panel for `room` (a directory entry): members of private rooms only.
  show(room) {
    this.room = room;
    this.error.textContent = '';
    this.list.replaceChildren();
    const managed = room && room.kind === 'room' && room.visibility === 'private';
    this.section.hidden = !managed;
    this.leave.hidden = !room;
    this.leave.textContent = room?.kind === 'direct' ? 'Leave conversation' : 'Leave room';
    if (managed) this.refresh();
  }

  // The room's entry changed (its kind or visibility came in): show what fits it.
  update(room) {
    const managed = (r) => Boolean(r) && r.kind === 'room' && r.visibility === 'private';
    if (room?.slug !== this.room?.slug || managed(room) !== !this.section.hidden) this.show(room);
    else this.room = room;
  }

  async refresh() {
    const room = this.room;
    try {
      const data = await getJSON(`${this.#url(room)}members/`);
      if (room !== this.room) return;
      const names = Array.isArray(data?.results) ? data.results.map((m) => m.username) : [];
      this.list.replaceChildren(...names.filter((n) => typeof n === 'string').map((n) => this.#item(n)));
    } catch (err) {
      if (room === this.room && !this.onError?.(err)) this.error.textContent = 'Could not load the members.';
    }
  }

  #url(room) {
    return `/api/rooms/${encodeURIComponent(room.slug)}/`;
  }

  #item(username) {
    const li = document.createElement('li');
    li.className = 'room-member';
    li.dataset.user = username;
    const name = document.createElement('span');
    name.className = 'room-member__name';
    name.textContent = username;
    li.append(name);
    const mayRemove = username !== this.me && (this.isStaff || this.room.created_by === this.me);
    if (mayRemove) {
      const remove = document.createElement('button');
      remove.type = 'button';
      remove.className = 'link-button room-member__remove';
      remove.textContent = 'Remove';
      remove.setAttribute('aria-label', `Remove ${username}`);
      remove.addEventListener('click', () => this.#remove(username));
      li.append(remove);
    }
    return li;
  }

  async #add() {
    const room = this.room;
    const username = this.input.value.trim().replace(/^@/, '');
    if (!username || !room) return;
    this.error.textContent = '';
    try {
      await sendJSON('POST', `${this.#url(room)}members/`, { username });
      this.input.value = '';
      this.refresh();
    } catch (err) {
      if (!this.onError?.(err)) this.error.textContent = err?.message || 'Could not add them.';
    }
  }

  async #remove(username) {
    const room = this.room;
    this.error.textContent = '';
    try {
      await sendJSON('DELETE', `${this.#url(room)}members/${encodeURIComponent(username)}/`);
      this.refresh();
    } catch (err) {
      if (!this.onError?.(err)) this.error.textContent = err?.message || 'Could not remove them.';
    }
  }

  async #leave() {
    const room = this.room;
    if (!room) return;
    try {
      await sendJSON('DELETE', `${this.#url(room)}membership/`);
      this.onLeft?.(room.slug);
    } catch (err) {
      if (!this.onError?.(err)) this.error.textContent = err?.message || 'Could not leave the room.';
    }
  }
}
