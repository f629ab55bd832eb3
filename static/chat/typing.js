// Typing: notify the room while we type, and show who else is typing.

const START_EVERY_MS = 1000; // PROTOCOL.md: at most one `start` per second
const SERVER_EXPIRY_MS = 3000; // the server stops us 3 s after our last `start`
const SHOW_FOR_MS = 5000; // hide someone's indicator 5 s after their last `start`

export class TypingSender {
  constructor(send) {
    this.send = send; // (state) => void
    this.lastStart = 0;
  }

  // Call on every input event with the composer's current text.
  input(text) {
    if (!text.trim()) return this.stop();
    const now = Date.now();
    if (now - this.lastStart < START_EVERY_MS) return;
    this.lastStart = now;
    this.send('start');
  }

  // On send, blur or an emptied composer. Only needed while a `start` is still live.
  stop() {
    if (!this.lastStart) return;
    if (Date.now() - this.lastStart < SERVER_EXPIRY_MS + START_EVERY_MS) this.send('stop');
    this.lastStart = 0;
  }
}

export class TypingIndicator {
  constructor(element, me) {
    this.element = element;
    this.me = me;
    this.timers = new Map(); // user -> expiry timeout, in order of starting
  }

  update(user, state) {
    if (!user || user === this.me) return;
    clearTimeout(this.timers.get(user));
    this.timers.delete(user);
    if (state === 'start') {
      this.timers.set(user, setTimeout(() => this.update(user, 'stop'), SHOW_FOR_MS));
    }
    this.render();
  }

  clear(user) {
    if (this.timers.has(user)) this.update(user, 'stop');
  }

  clearAll() {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    this.render();
  }

  render() {
    const users = [...this.timers.keys()];
    this.element.textContent = describe(users);
    this.element.dataset.users = users.join(' ');
  }
}

export function describe(users) {
  if (users.length === 0) return '';
  if (users.length === 1) return `${users[0]} is typing…`;
  if (users.length === 2) return `${users[0]} and ${users[1]} are typing…`;
  if (users.length === 3) return `${users[0]}, ${users[1]} and ${users[2]} are typing…`;
  return `${users[0]}, ${users[1]} and ${users.length - 2} others are typing…`;
}
