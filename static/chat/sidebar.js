// The sidebar: the user's rooms and DMs with unread and mention badges, forms to create
// a room or start a DM, and (on phones) the button that shows and hides it. Built from
// text nodes only: room names and usernames are user data.

import { sendJSON } from './api.js';

const PHONE = window.matchMedia('(max-width: 700px)');

export function roomPath(slug) {
  return `/rooms/${encodeURIComponent(slug)}/`;
}

// "alice, bob carol" → ["alice", "bob", "carol"]
export function parseUsernames(text) {
  return [...new Set(text.split(/[\s,]+/).map((name) => name.replace(/^@/, '')).filter(Boolean))];
}

export class Sidebar {
  constructor({ root, rooms, dms, toggle, toggleBadge, roomForm, dmForm, directory, urls, onOpen, onError }) {
    Object.assign(this, { root, rooms, dms, toggle, toggleBadge, roomForm, dmForm, directory, urls, onOpen, onError });
    this.active = null;
    this.items = new Map(); // slug -> li
    this.renderQueued = false;

    directory.addEventListener('change', () => this.#queueRender());
    for (const list of [rooms, dms]) {
      list.addEventListener('click', (event) => {
        const link = event.target.closest('a[data-slug]');
        if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return;
        event.preventDefault();
        this.close();
        onOpen(link.dataset.slug);
      });
    }
    toggle.addEventListener('click', () => (this.isOpen() ? this.close() : this.open()));
    root.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && PHONE.matches && this.isOpen()) {
        this.close();
        toggle.focus();
      }
    });
    roomForm.addEventListener('submit', (event) => {
      event.preventDefault();
      this.#createRoom();
    });
    dmForm.addEventListener('submit', (event) => {
      event.preventDefault();
      this.#startDm();
    });
  }

  setActive(slug) {
    this.active = slug;
    this.#queueRender();
  }

  isOpen() {
    return this.root.dataset.open === 'true';
  }

  open() {
    this.root.dataset.open = 'true';
    this.toggle.setAttribute('aria-expanded', 'true');
    this.root.querySelector('a[aria-current="page"], a')?.focus();
  }

  close() {
    this.root.dataset.open = 'false';
    this.toggle.setAttribute('aria-expanded', 'false');
  }

  #queueRender() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      this.render();
    });
  }

  render() {
    const entries = this.directory.list().sort((a, b) => a.name.localeCompare(b.name) || a.slug.localeCompare(b.slug));
    const seen = new Set();
    const byKind = { room: [], direct: [] };
    let others = 0;
    for (const entry of entries) {
      seen.add(entry.slug);
      const li = this.items.get(entry.slug) ?? this.#create(entry.slug);
      this.items.set(entry.slug, li);
      const counts = this.#fill(li, entry);
      if (entry.slug !== this.active) others += counts.unread;
      (entry.kind === 'direct' ? byKind.direct : byKind.room).push(li);
    }
    for (const slug of this.items.keys()) if (!seen.has(slug)) this.items.delete(slug);
    replaceIfChanged(this.rooms, byKind.room);
    replaceIfChanged(this.dms, byKind.direct);
    this.dms.dataset.empty = String(byKind.direct.length === 0);
    this.toggleBadge.textContent = others > 0 ? String(others) : '';
    this.toggleBadge.hidden = others === 0;
    this.root.dataset.loaded = 'true';
  }

  #create(slug) {
    const li = document.createElement('li');
    li.className = 'sidebar-item';
    li.dataset.slug = slug;
    const link = document.createElement('a');
    link.className = 'sidebar-item__link';
    link.href = roomPath(slug);
    link.dataset.slug = slug;
    const icon = document.createElement('span');
    icon.className = 'sidebar-item__icon';
    icon.setAttribute('aria-hidden', 'true');
    const name = document.createElement('span');
    name.className = 'sidebar-item__name';
    const mentions = document.createElement('span');
    mentions.className = 'badge badge--mention';
    mentions.hidden = true;
    const unread = document.createElement('span');
    unread.className = 'badge badge--unread';
    unread.hidden = true;
    link.append(icon, name, mentions, unread);
    li.append(link);
    return li;
  }

  #fill(li, entry) {
    const link = li.firstElementChild;
    const [icon, name, mentionBadge, unreadBadge] = link.children;
    const active = entry.slug === this.active;
    const direct = entry.kind === 'direct';
    const kind = direct ? 'direct' : entry.visibility === 'private' ? 'private' : 'public';
    if (icon.dataset.kind !== kind) {
      icon.dataset.kind = kind;
      icon.replaceChildren(kind === 'private' ? padlock() : kind === 'direct' ? '@' : '#');
    }
    name.textContent = entry.name;
    link.title = direct ? `Direct messages with ${entry.name}` : `#${entry.slug}`;
    if (active) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
    const counts = this.directory.unread(entry.slug);
    // The open room is being read: its badges would only flicker.
    const unread = active ? 0 : counts.unread;
    const mentions = active ? 0 : counts.mentions;
    setBadge(unreadBadge, unread, `${unread} unread`);
    setBadge(mentionBadge, mentions, `${mentions} mention${mentions === 1 ? '' : 's'}`, '@');
    li.dataset.unread = String(unread);
    li.dataset.mentions = String(mentions);
    li.classList.toggle('sidebar-item--unread', unread > 0);
    li.classList.toggle('sidebar-item--active', active);
    return { unread, mentions };
  }

  async #createRoom() {
    const form = this.roomForm;
    const name = form.elements.name.value.trim();
    if (!name) {
      form.elements.name.focus();
      return;
    }
    const visibility = form.elements.visibility.value === 'private' ? 'private' : 'public';
    await this.#submit(form, () => sendJSON('POST', this.urls.rooms, { name, visibility }));
  }

  async #startDm() {
    const form = this.dmForm;
    const users = parseUsernames(form.elements.users.value);
    if (users.length === 0) {
      form.elements.users.focus();
      return;
    }
    await this.#submit(form, () => sendJSON('POST', this.urls.dms, { users }));
  }

  async #submit(form, request) {
    const error = form.querySelector('.sidebar-form__error');
    const button = form.querySelector('button[type="submit"]');
    error.textContent = '';
    button.disabled = true;
    try {
      const room = await request();
      this.directory.upsert(room);
      form.reset();
      form.closest('details')?.removeAttribute('open');
      this.close();
      this.onOpen(room.slug);
    } catch (err) {
      if (!this.onError?.(err)) error.textContent = err?.message || 'That did not work. Try again.';
    } finally {
      button.disabled = false;
    }
  }
}

// A small padlock for private rooms (no emoji font needed).
function padlock() {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 16 16');
  svg.setAttribute('width', '12');
  svg.setAttribute('height', '12');
  svg.setAttribute('class', 'sidebar-item__lock');
  const path = document.createElementNS(ns, 'path');
  path.setAttribute(
    'd',
    'M4 7V5a4 4 0 0 1 8 0v2h1v8H3V7h1zm2 0h4V5a2 2 0 0 0-4 0v2z',
  );
  path.setAttribute('fill', 'currentColor');
  svg.append(path);
  return svg;
}

function setBadge(badge, count, label, prefix = '') {
  badge.hidden = count === 0;
  badge.dataset.count = String(count);
  if (count === 0) {
    badge.replaceChildren();
    return;
  }
  // The number alone says little to a screen reader: it hears what it counts.
  const shown = document.createElement('span');
  shown.setAttribute('aria-hidden', 'true');
  shown.textContent = `${prefix}${count > 99 ? '99+' : count}`;
  const said = document.createElement('span');
  said.className = 'visually-hidden';
  said.textContent = `, ${label}`;
  badge.replaceChildren(shown, said);
  badge.title = label;
}

function replaceIfChanged(list, items) {
  const current = [...list.children];
  if (current.length === items.length && current.every((li, i) => li === items[i])) return;
  list.replaceChildren(...items);
}
