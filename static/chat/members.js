// The "People here" list: who is present in the room and their status dot.

const STATUS_ORDER = { online: 0, away: 1, offline: 2 };
const STATUS_LABEL = { online: 'online', away: 'away', offline: 'offline' };

export class MemberList {
  constructor({ list, count, empty, me }) {
    this.list = list;
    this.count = count;
    this.empty = empty;
    this.me = me;
    // You are here as soon as the page is open, whatever the server has said so far.
    this.status = new Map(me ? [[me, 'online']] : []); // username -> status
    this.render();
  }

  // Start over for another room: only you, until its `joined` says who is there.
  reset() {
    this.status = new Map(this.me ? [[this.me, 'online']] : []);
    this.render();
  }

  has(user) {
    return this.status.has(user);
  }

  // Replace everything from joined.members; anyone no longer listed is shown offline.
  setAll(members) {
    const present = new Map();
    for (const m of members || []) {
      if (m && typeof m.username === 'string') present.set(m.username, normal(m.status));
    }
    for (const user of this.status.keys()) if (!present.has(user)) present.set(user, 'offline');
    if (this.me) present.set(this.me, present.get(this.me) === 'away' ? 'away' : 'online');
    this.status = present;
    this.render();
  }

  // presence event: update a known user; add one we did not know unless they went offline.
  setStatus(user, status) {
    status = normal(status);
    if (!this.status.has(user) && status === 'offline') return;
    if (this.status.get(user) === status) return;
    this.status.set(user, status);
    this.render();
  }

  joined(user) {
    const current = this.status.get(user);
    if (current === 'online' || current === 'away') return;
    this.status.set(user, 'online');
    this.render();
  }

  // member_left: they are no longer present. Keep them, dimmed, as offline.
  left(user) {
    if (!this.status.has(user)) return;
    this.status.set(user, 'offline');
    this.render();
  }

  render() {
    const users = [...this.status.entries()].sort(
      ([a, sa], [b, sb]) => STATUS_ORDER[sa] - STATUS_ORDER[sb] || a.localeCompare(b),
    );
    const items = users.map(([user, status]) => this.#item(user, status));
    this.list.replaceChildren(...items);
    const here = users.filter(([, s]) => s !== 'offline').length;
    if (this.count) this.count.textContent = users.length ? `(${here})` : '';
    // "Nobody else is here yet" while the list holds only you.
    if (this.empty) this.empty.hidden = users.some(([user]) => user !== this.me);
  }

  #item(user, status) {
    const li = document.createElement('li');
    li.className = `member member--${status}`;
    li.dataset.user = user;
    li.dataset.status = status;

    const dot = document.createElement('span');
    dot.className = 'presence-dot';
    dot.setAttribute('aria-hidden', 'true');

    const name = document.createElement('span');
    name.className = 'member__name';
    name.textContent = user;
    if (user === this.me) {
      const you = document.createElement('span');
      you.className = 'member__you';
      you.textContent = ' (you)';
      name.append(you);
    }

    // The dot's colour is not available to screen readers: say the status in text.
    const label = document.createElement('span');
    label.className = 'member__status';
    label.textContent = STATUS_LABEL[status];

    li.append(dot, name, label);
    return li;
  }
}

function normal(status) {
  return status in STATUS_ORDER ? status : 'online';
}
