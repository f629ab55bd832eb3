// A room's messages keyed by id, ordered by seq, with gap tracking.
// `lastSeq` is the contiguous high-water mark: every seq from the first loaded
// message up to it is known, so it is the right `since`/`after` for recovery.

export class Timeline {
  constructor(room) {
    this.room = room;
    this.byId = new Map();
    this.lastSeq = null; // null until the first history page has loaded
    this.highestSeen = 0; // highest seq seen or announced (joined.last_seq)
    this.minSeq = null; // oldest loaded seq, for ?before=
  }

  // Start over from a page of the newest messages (oldest first).
  reset(messages) {
    this.byId.clear();
    this.minSeq = null;
    this.highestSeen = 0;
    this.lastSeq = 0;
    const changed = this.merge(messages);
    // The newest page is contiguous by definition; anything before it is "older".
    this.lastSeq = this.highestSeen;
    return changed;
  }

  get size() {
    return this.byId.size;
  }

  has(id) {
    return this.byId.has(id);
  }

  get(id) {
    return this.byId.get(id);
  }

  // True while a seq between lastSeq and the highest known seq is missing.
  get hasGap() {
    return this.lastSeq !== null && this.highestSeen > this.lastSeq;
  }

  noteLastSeq(seq) {
    if (Number.isInteger(seq) && seq > this.highestSeen) this.highestSeen = seq;
  }

  // The server has nothing between lastSeq and the next seq we hold: stop waiting for it.
  acceptGap() {
    let next = null;
    for (const msg of this.byId.values()) {
      if (msg.seq > this.lastSeq && (next === null || msg.seq < next)) next = msg.seq;
    }
    if (next !== null) this.lastSeq = next;
    this.#advance();
    if (next === null) this.highestSeen = this.lastSeq;
  }

  // Add or update messages; returns the ones that are new or changed (tombstoned, edited).
  merge(messages) {
    const changed = [];
    for (const msg of messages) {
      if (!isMessage(msg) || msg.room !== this.room) continue;
      const known = this.byId.get(msg.id);
      // A tombstone never turns back into a live message.
      if (known && known.deleted) continue;
      if (known && !msg.deleted && !isNewerEdit(msg, known)) continue;
      this.byId.set(msg.id, msg);
      changed.push(msg);
      this.noteLastSeq(msg.seq);
      if (this.minSeq === null || msg.seq < this.minSeq) this.minSeq = msg.seq;
    }
    this.#advance();
    return changed;
  }

  // Apply a message_deleted event; returns the tombstone, or null if not loaded.
  markDeleted(id) {
    const known = this.byId.get(id);
    if (!known || known.deleted) return null;
    const tombstone = { ...known, body: '', deleted: true };
    this.byId.set(id, tombstone);
    return tombstone;
  }

  // Apply a message_edited event's message; returns it, or null if not loaded or stale.
  markEdited(msg) {
    const known = this.byId.get(msg?.id);
    if (!known || known.deleted || msg.room !== this.room || !isNewerEdit(msg, known)) return null;
    const edited = { ...known, body: msg.body, edited_at: msg.edited_at };
    this.byId.set(msg.id, edited);
    return edited;
  }

  #advance() {
    if (this.lastSeq === null) return;
    const seqs = new Set();
    for (const msg of this.byId.values()) if (msg.seq > this.lastSeq) seqs.add(msg.seq);
    while (seqs.has(this.lastSeq + 1)) this.lastSeq += 1;
  }
}

// True if `msg` carries a later edit than `known` (a late copy must not undo an edit).
function isNewerEdit(msg, known) {
  if (typeof msg.body !== 'string' || !msg.edited_at) return false;
  const next = Date.parse(msg.edited_at);
  const prev = known.edited_at ? Date.parse(known.edited_at) : -Infinity;
  return next > prev;
}

export function isMessage(value) {
  return (
    value !== null &&
    typeof value === 'object' &&
    Number.isInteger(value.id) &&
    Number.isInteger(value.seq) &&
    typeof value.room === 'string'
  );
}
