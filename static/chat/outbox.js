// Messages typed but not yet acknowledged by the server, persisted per user+room in
// localStorage so a reload or crash loses nothing. Each keeps its client_id for life,
// which makes every resend idempotent on the server.

const ACK_TIMEOUT_MS = 15_000; // no ack by then on a live socket: resend (same client_id)

export function newClientId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  // randomUUID needs a secure context; getRandomValues does not.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function memoryStorage() {
  const data = new Map();
  return {
    getItem: (k) => (data.has(k) ? data.get(k) : null),
    setItem: (k, v) => data.set(k, String(v)),
    removeItem: (k) => data.delete(k),
  };
}

// localStorage can be missing or throw (private mode, disabled storage, quota).
function openStorage() {
  try {
    const probe = '__voiceflow_probe__';
    localStorage.setItem(probe, probe);
    localStorage.removeItem(probe);
    return localStorage;
  } catch {
    return memoryStorage();
  }
}

export class Outbox {
  constructor(user, room, storage = openStorage()) {
    this.room = room;
    this.key = `voiceflow:outbox:v1:${user}:${room}`;
    this.storage = storage;
    // Delivery bookkeeping lives in memory only: a fresh page resends everything.
    this.sentAt = new Map();
    this.notBefore = new Map();
  }

  // Items oldest first. Re-read on every call so other tabs' changes are not clobbered.
  list() {
    let items;
    try {
      items = JSON.parse(this.storage.getItem(this.key) || '[]');
    } catch {
      items = [];
    }
    if (!Array.isArray(items)) return [];
    return items.filter(
      (it) => it && typeof it.client_id === 'string' && typeof it.body === 'string' && it.room === this.room,
    );
  }

  get(clientId) {
    return this.list().find((it) => it.client_id === clientId) || null;
  }

  has(clientId) {
    return this.get(clientId) !== null;
  }

  add(body) {
    const item = { client_id: newClientId(), room: this.room, body, created_at: new Date().toISOString() };
    this.#write([...this.list(), item]);
    return item;
  }

  remove(clientId) {
    const items = this.list();
    const kept = items.filter((it) => it.client_id !== clientId);
    this.sentAt.delete(clientId);
    this.notBefore.delete(clientId);
    if (kept.length === items.length) return false;
    this.#write(kept);
    return true;
  }

  // Hold an item back (rate limited, service unavailable) until `ms` from now.
  defer(clientId, ms) {
    this.notBefore.set(clientId, Date.now() + ms);
    this.sentAt.delete(clientId);
  }

  noteSent(clientId) {
    this.sentAt.set(clientId, Date.now());
  }

  // Items to (re)send now. `force` resends even those still awaiting an ack, as after a
  // reconnect: an ack lost with the old socket means "assume nothing was stored".
  due({ force = false } = {}) {
    const now = Date.now();
    return this.list().filter((it) => {
      if ((this.notBefore.get(it.client_id) || 0) > now) return false;
      const sent = this.sentAt.get(it.client_id);
      return force || sent === undefined || now - sent >= ACK_TIMEOUT_MS;
    });
  }

  // Milliseconds until the earliest deferred item becomes due, or null.
  nextDeferral() {
    const now = Date.now();
    let soonest = null;
    for (const t of this.notBefore.values()) {
      if (t > now && (soonest === null || t - now < soonest)) soonest = t - now;
    }
    return soonest;
  }

  #write(items) {
    try {
      if (items.length) this.storage.setItem(this.key, JSON.stringify(items));
      else this.storage.removeItem(this.key);
    } catch {
      // Quota exceeded: keep going from memory for the rest of this page's life.
      this.storage = memoryStorage();
      if (items.length) this.storage.setItem(this.key, JSON.stringify(items));
    }
  }
}
