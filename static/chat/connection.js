// One WebSocket per tab to /ws/chat/, multiplexing rooms. Handles heartbeat, round-trip
// time, reconnects (PROTOCOL.md close codes) and re-joins rooms with `since`.
//
// Events (CustomEvent, data in `detail`):
//   'state'    {state, retryIn, rtt}  state: connecting | connected | reconnecting | offline
//   'ready'    the hello frame         (socket usable; joins already re-sent)
//   'frame'    any server frame, hello/pong included
//   'toolarge' the last message frame, after a 1009 close (do not resend it)

import { Backoff, closePolicy } from './backoff.js';

const STABLE_AFTER_MS = 10_000; // a connection that lasts this long resets the backoff

// Calls `onTick` every `seconds`, from a Web Worker when possible so hidden tabs keep time.
class Heartbeat {
  constructor(onTick) {
    this.onTick = onTick;
    this.interval = null;
    try {
      this.worker = new Worker(new URL('./heartbeat-worker.js', import.meta.url));
      this.worker.onmessage = () => this.onTick();
      this.worker.onerror = () => this.#fallBack();
    } catch {
      this.worker = null;
    }
  }

  start(seconds) {
    this.stop();
    this.ms = Math.max(1, seconds) * 1000;
    if (this.worker) this.worker.postMessage({ cmd: 'start', interval: this.ms });
    else this.interval = setInterval(this.onTick, this.ms);
  }

  stop() {
    if (this.worker) this.worker.postMessage({ cmd: 'stop' });
    clearInterval(this.interval);
    this.interval = null;
  }

  // The worker script failed to load (e.g. CSP): use a plain timer instead.
  #fallBack() {
    this.worker?.terminate();
    this.worker = null;
    if (this.ms) this.interval = setInterval(this.onTick, this.ms);
  }
}

export class ChatConnection extends EventTarget {
  constructor({ wsPath = '/ws/chat/', heartbeatInterval = 25, loginUrl = '/login/' } = {}) {
    super();
    this.wsPath = wsPath;
    this.heartbeatInterval = heartbeatInterval;
    this.loginUrl = loginUrl;
    this.backoff = new Backoff();
    this.heartbeat = new Heartbeat(() => this.#beat());
    this.rooms = new Map(); // slug -> () => {since, changes_since} (each a number or null)
    this.ws = null;
    this.ready = false;
    this.stopped = false;
    this.state = 'connecting';
    this.rtt = null;
    this.retryAt = null;
    this.lastFrameAt = 0;
    this.lastMessageFrame = null;

    window.addEventListener('online', () => this.#onBrowserOnline());
    window.addEventListener('offline', () => this.#onBrowserOffline());
  }

  connect() {
    this.stopped = false;
    this.#open();
  }

  // Send a frame if the socket is up; returns false otherwise (the caller decides
  // whether to queue it: the outbox does, typing and status frames are just dropped).
  send(frame) {
    if (!this.ready || this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    if (frame.type === 'message') this.lastMessageFrame = frame;
    return true;
  }

  // Subscribe to a room now and after every reconnect; `getPosition` returns the last
  // seq seen in that room and the last change applied ({since, changes_since}, each a
  // number or null), so each re-join asks for exactly what was missed.
  join(room, getPosition = () => ({})) {
    this.rooms.set(room, getPosition);
    if (this.ready) this.#sendJoin(room);
  }

  // Re-send a join (e.g. after a rate-limited join).
  rejoin(room) {
    if (this.ready && this.rooms.has(room)) this.#sendJoin(room);
  }

  leave(room) {
    if (this.rooms.delete(room)) this.send({ type: 'leave', room });
  }

  // Stop re-joining a room the server has already taken off this socket (room_removed).
  forget(room) {
    this.rooms.delete(room);
  }

  #sendJoin(room) {
    const { since, changes_since: changesSince } = this.rooms.get(room)();
    const frame = { type: 'join', room };
    if (Number.isInteger(since)) frame.since = since;
    if (Number.isInteger(since) && Number.isInteger(changesSince)) frame.changes_since = changesSince;
    this.send(frame);
  }

  #open() {
    clearTimeout(this.retryTimer);
    clearInterval(this.countdown);
    this.retryAt = null;
    if (this.stopped) return;
    if (navigator.onLine === false) {
      this.#setState('offline'); // the 'online' event brings us back
      return;
    }
    this.#setState('connecting');
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${scheme}//${location.host}${this.wsPath}`);
    this.ws = ws;
    ws.onmessage = (event) => this.ws === ws && this.#onFrame(event.data);
    ws.onclose = (event) => this.ws === ws && this.#onClose(event.code);
    // An error is always followed by a close event; nothing to do here.
    ws.onerror = () => {};
  }

  #onFrame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (!frame || typeof frame.type !== 'string') return;
    this.lastFrameAt = Date.now();

    if (frame.type === 'hello') {
      this.ready = true;
      if (Number(frame.heartbeat_interval) > 0) this.heartbeatInterval = Number(frame.heartbeat_interval);
      this.heartbeat.start(this.heartbeatInterval);
      clearTimeout(this.stableTimer);
      this.stableTimer = setTimeout(() => this.backoff.reset(), STABLE_AFTER_MS);
      this.#setState('connected');
      for (const room of this.rooms.keys()) this.#sendJoin(room);
      this.#ping(); // measure the round trip right away
      this.dispatchEvent(new CustomEvent('ready', { detail: frame }));
    } else if (frame.type === 'pong') {
      const rtt = Date.now() - Number(frame.ts);
      if (Number.isFinite(rtt) && rtt >= 0) {
        this.rtt = rtt;
        this.#setState('connected');
      }
    }
    this.dispatchEvent(new CustomEvent('frame', { detail: frame }));
  }

  #onClose(code) {
    this.ws = null;
    this.ready = false;
    this.rtt = null;
    this.heartbeat.stop();
    clearTimeout(this.stableTimer);

    if (code === 1009 && this.lastMessageFrame) {
      this.dispatchEvent(new CustomEvent('toolarge', { detail: this.lastMessageFrame }));
    }
    this.lastMessageFrame = null;

    const policy = closePolicy(code);
    if (policy === 'stop') {
      // Not (or no longer) allowed in: send the user to log in, then back here.
      this.stopped = true;
      this.#setState('offline');
      const next = location.pathname + location.search;
      location.assign(`${this.loginUrl}?next=${encodeURIComponent(next)}`);
      return;
    }
    if (this.stopped) return;
    if (navigator.onLine === false) {
      this.#setState('offline');
      return;
    }
    this.#scheduleRetry(this.backoff.next(policy));
  }

  #scheduleRetry(delay) {
    this.retryAt = Date.now() + delay;
    this.retryTimer = setTimeout(() => this.#open(), delay);
    // Tick the countdown shown as "reconnecting in N s".
    clearInterval(this.countdown);
    this.countdown = setInterval(() => this.#setState('reconnecting'), 1000);
    this.#setState('reconnecting');
  }

  #beat() {
    if (!this.ws) return;
    // No frame at all for two beats and a margin: the socket is dead even if the
    // browser has not noticed (e.g. a laptop woke from sleep). Drop it and reconnect.
    const silentFor = Date.now() - this.lastFrameAt;
    if (this.ready && silentFor > (this.heartbeatInterval * 2 + 10) * 1000) {
      const dead = this.ws;
      dead.onclose = dead.onmessage = null;
      try {
        dead.close(4000, 'heartbeat timeout');
      } catch {
        /* already closing */
      }
      this.#onClose(4408); // treat like the server's dead-timeout close
      return;
    }
    this.#ping();
  }

  #ping() {
    this.send({ type: 'ping', ts: Date.now() });
  }

  #onBrowserOffline() {
    if (this.ready || this.stopped) return; // a live socket may survive a blip
    clearTimeout(this.retryTimer);
    clearInterval(this.countdown);
    this.#setState('offline');
  }

  #onBrowserOnline() {
    if (this.stopped || this.ws) return;
    this.#open(); // the network is back: do not wait out the backoff
  }

  get retryIn() {
    return this.retryAt === null ? null : Math.max(0, Math.ceil((this.retryAt - Date.now()) / 1000));
  }

  #setState(state) {
    if (state !== 'reconnecting') clearInterval(this.countdown);
    this.state = state;
    const detail = { state, retryIn: state === 'reconnecting' ? this.retryIn : null, rtt: this.rtt };
    this.dispatchEvent(new CustomEvent('state', { detail }));
  }
}
