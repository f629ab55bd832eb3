// The user's rooms and DMs with their unread and mention counts, kept live.
//
// The server's counts (room objects, `read` frames) cover the messages up to the
// room's `last_seq`, read in the same statement. Messages after it that reach the page
// (live, `missed` on a join, the offline queue, a gap fill) are counted here, each
// seq once: the same message arriving by two paths never counts twice, and one the
// server already counted is not counted again. A gap (a seq never seen, a pong's
// last_seq ahead) or a deletion of an uncounted message asks the server again.
//
// Events: 'change' (detail: slug or null for all), 'resync' (detail: slug).

export class RoomDirectory extends EventTarget {
  constructor(me) {
    super();
    this.me = me;
    this.rooms = new Map(); // slug -> room entry
  }

  get(slug) {
    return this.rooms.get(slug) ?? null;
  }

  has(slug) {
    return this.rooms.has(slug);
  }

  list() {
    return [...this.rooms.values()];
  }

  // Add or refresh a room from a room object (GET /api/rooms/…).
  upsert(room) {
    if (!room || typeof room.slug !== 'string') return null;
    let entry = this.rooms.get(room.slug);
    if (!entry) {
      entry = {
        slug: room.slug,
        base: null, // {lastSeq, unread, mentions}: the server's count, up to lastSeq
        lastReadSeq: null,
        extras: new Map(), // seq -> {counts, mention} for seqs after base.lastSeq
        contiguous: 0, // every seq up to here is counted (or was the server's)
        highest: 0, // the highest seq the room is known to have
        pending: [], // messages seen before the server's count arrived
      };
      this.rooms.set(room.slug, entry);
    }
    for (const key of ['name', 'kind', 'visibility', 'is_locked', 'created_by']) {
      if (key in room) entry[key] = room[key];
    }
    entry.name = typeof entry.name === 'string' && entry.name ? entry.name : entry.slug;
    if (Number.isInteger(room.last_seq) && Number.isInteger(room.last_read_seq)) this.applyState(room);
    else this.#changed(room.slug);
    return entry;
  }

  remove(slug) {
    if (this.rooms.delete(slug)) this.#changed(null);
  }

  // A read state ({room | slug, last_read_seq, unread, mentions, last_seq}).
  applyState(state) {
    const slug = state.room ?? state.slug;
    const entry = this.rooms.get(slug);
    if (!entry || !Number.isInteger(state.last_read_seq)) return;
    if (!Number.isInteger(state.last_seq)) {
      this.#resync(slug); // a server without last_seq in read states: ask again
      return;
    }
    if (entry.base && state.last_seq < entry.base.lastSeq) {
      // Older than what we hold: its read position may be news, its counts are not.
      if (state.last_read_seq > (entry.lastReadSeq ?? -1)) this.#resync(slug);
      return;
    }
    entry.base = {
      lastSeq: state.last_seq,
      unread: Math.max(0, Number(state.unread) || 0),
      mentions: Math.max(0, Number(state.mentions) || 0),
    };
    entry.lastReadSeq = Math.max(entry.lastReadSeq ?? 0, state.last_read_seq);
    for (const seq of entry.extras.keys()) if (seq <= state.last_seq) entry.extras.delete(seq);
    entry.contiguous = Math.max(entry.contiguous, state.last_seq);
    entry.highest = Math.max(entry.highest, state.last_seq);
    this.#advance(entry);
    const pending = entry.pending;
    entry.pending = [];
    for (const msg of pending) this.#count(entry, msg);
    this.#advance(entry);
    this.#changed(slug);
  }

  // Messages from any path; returns those counted as new unread ones.
  see(messages) {
    const fresh = [];
    const touched = new Set();
    for (const msg of messages) {
      const entry = this.rooms.get(msg?.room);
      if (!entry || !Number.isInteger(msg.seq)) continue;
      if (!entry.base) {
        entry.pending.push(msg);
        continue;
      }
      if (this.#count(entry, msg)) fresh.push(msg);
      touched.add(entry);
    }
    for (const entry of touched) {
      this.#advance(entry);
      this.#changed(entry.slug);
    }
    return fresh;
  }

  // The room holds messages up to `seq` (joined.last_seq, a pong's last_seq).
  noteLastSeq(slug, seq) {
    const entry = this.rooms.get(slug);
    if (entry && Number.isInteger(seq) && seq > entry.highest) entry.highest = seq;
  }

  // Rooms whose newest messages never reached the page: their counts need the server.
  behind() {
    return this.list().filter((entry) => entry.base && entry.highest > entry.contiguous);
  }

  // A message became a tombstone: it no longer counts.
  deleted(slug, seq) {
    const entry = this.rooms.get(slug);
    if (!entry?.base || !Number.isInteger(seq)) return;
    const extra = entry.extras.get(seq);
    if (extra) {
      extra.counts = false;
      extra.mention = false;
      this.#changed(slug);
    } else if (seq > (entry.lastReadSeq ?? 0) && seq <= entry.base.lastSeq) {
      this.#resync(slug); // counted by the server: only it knows whether it counted
    }
  }

  // The reader read the room up to `seq` (sent in a `read` frame; the server's answer
  // follows). Read to the end, nothing is unread any more.
  readLocally(slug, seq) {
    const entry = this.rooms.get(slug);
    if (!entry?.base || seq < entry.contiguous) return;
    entry.lastReadSeq = Math.max(entry.lastReadSeq ?? 0, seq);
    entry.base = { lastSeq: entry.contiguous, unread: 0, mentions: 0 };
    entry.extras.clear();
    this.#changed(slug);
  }

  // The `since` for (re)joining a room in the background: what has been counted.
  since(slug) {
    const entry = this.rooms.get(slug);
    return entry?.base ? entry.contiguous : null;
  }

  unread(slug) {
    const entry = this.rooms.get(slug);
    if (!entry?.base) return { unread: 0, mentions: 0 };
    let { unread, mentions } = entry.base;
    for (const [seq, extra] of entry.extras) {
      if (seq <= (entry.lastReadSeq ?? 0)) continue;
      if (extra.counts) unread += 1;
      if (extra.counts && extra.mention) mentions += 1;
    }
    return { unread, mentions };
  }

  mentionsMe(msg) {
    return Array.isArray(msg?.mentions) && msg.mentions.includes(this.me);
  }

  #count(entry, msg) {
    if (msg.seq <= entry.base.lastSeq || entry.extras.has(msg.seq)) return false;
    const counts = msg.user !== this.me && !msg.deleted;
    entry.extras.set(msg.seq, { counts, mention: counts && this.mentionsMe(msg) });
    if (msg.seq > entry.highest) entry.highest = msg.seq;
    return counts && msg.seq > (entry.lastReadSeq ?? 0);
  }

  // Move the contiguous mark over the seqs seen, folding them into the base count so
  // a busy room never piles up entries.
  #advance(entry) {
    while (entry.extras.has(entry.contiguous + 1)) {
      const seq = entry.contiguous + 1;
      const extra = entry.extras.get(seq);
      entry.extras.delete(seq);
      if (extra.counts && seq > (entry.lastReadSeq ?? 0)) {
        entry.base.unread += 1;
        if (extra.mention) entry.base.mentions += 1;
      }
      entry.base.lastSeq = seq;
      entry.contiguous = seq;
    }
  }

  #resync(slug) {
    this.dispatchEvent(new CustomEvent('resync', { detail: slug }));
  }

  #changed(slug) {
    this.dispatchEvent(new CustomEvent('change', { detail: slug }));
  }
}
