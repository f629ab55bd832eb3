// Entry point of the room page: wires history (REST), the socket, the outbox and the UI.
//
// One socket serves every room of the user: all of them are joined, so the sidebar's
// badges move live. One room at a time is open; switching rebuilds the open room's
// state (timeline, outbox, gap fill, typing, members, search scope) without a reload,
// and an `epoch` makes answers that come back for a room no longer open fall away.

import { Alerts } from './alerts.js';
import { fetchMessages, getAllPages, getJSON } from './api.js';
import { Composer } from './composer.js';
import { ChatConnection } from './connection.js';
import { MemberList } from './members.js';
import { MessageView } from './message-view.js';
import { Notifier } from './notify.js';
import { Outbox } from './outbox.js';
import { RoomMembersPanel } from './room-members.js';
import { RoomDirectory } from './rooms.js';
import { SearchPanel } from './search.js';
import { Sidebar, roomPath } from './sidebar.js';
import { Timeline, isMessage } from './timeline.js';
import { TypingIndicator, TypingSender } from './typing.js';

const config = JSON.parse(document.getElementById('vf-config').textContent);
let ROOM = config.room; // the open room
const ME = config.user;
const ROOMS_URL = config.roomsUrl || '/api/rooms/';
const LOGIN_URL = '/login/';
const PAGE_SIZE = 50;
const GAP_PAGE_SIZE = 200; // the server's maximum `limit`
const GAP_WAIT_MS = 2000; // out-of-order delivery settles within a second or two
// A pong's last_seq was read before the pong left the server: only messages stored
// just before that read can still be on their way to us.
const PONG_GAP_WAIT_MS = 500;
const MAX_GAP_PAGES = 10; // beyond this, jump to the newest page instead
const MAX_BODY = 4000;
const OLDER_TRIGGER_PX = 80;
const WAITING_NOTE = 'waiting for connection…';
const ANNOUNCE_LOSS_AFTER_MS = 3000; // a blip that heals faster is not worth announcing
const EDIT_WINDOW_S = Number.isFinite(config.editWindow) ? config.editWindow : 24 * 3600;
const AROUND = 25; // messages loaded each side of a search result
const NEWER_TRIGGER_PX = 80;
const READ_DELAY_MS = 300; // one `read` frame for a burst of messages read at once
const RESYNC_DELAY_MS = 500;
// ?at=<seq>: open the room at that message (from a search result) instead of the end.
// Only for the room the page was opened at.
let AT_SEQ = Number.parseInt(new URLSearchParams(location.search).get('at') ?? '', 10);

const $ = (id) => document.getElementById(id);
const scroller = $('message-scroller');
const log = $('message-log');
const loadOlderButton = $('load-older');
const loadNewerButton = $('load-newer');
const jumpButton = $('jump-latest');
let baseTitle = document.title;

const alerts = new Alerts($('error-region'));
const directory = new RoomDirectory(ME);
directory.upsert({
  slug: ROOM,
  name: config.roomName,
  kind: config.roomKind || 'room',
  visibility: config.roomVisibility || 'public',
  is_locked: Boolean(config.roomLocked),
});
let timeline = new Timeline(ROOM);
const outboxes = new Map(); // slug -> Outbox: one per room, so sends keep their state
let outbox = outboxFor(ROOM);
// Bumped when another room opens: async work for the previous one checks it and stops.
let epoch = 0;
const joinedRooms = new Set(); // rooms this socket has joined (answered), any room
const view = new MessageView({
  list: $('message-list'),
  scroller,
  empty: $('message-empty'),
  me: ME,
  onEdit: (body) => composer.setText(body),
  onDelete: (id) => sendOrWarn({ type: 'delete', room: ROOM, id }),
  onSaveEdit: (id, body) => joined && conn.send({ type: 'edit', room: ROOM, id, body }),
  editWindowMs: EDIT_WINDOW_S * 1000,
  moderator: config.canModerate === true,
});
const members = new MemberList({ list: $('member-list'), count: $('member-count'), empty: $('member-empty'), me: ME });
const typingIndicator = new TypingIndicator($('typing-indicator'), ME);
const conn = new ChatConnection({
  wsPath: config.wsPath,
  heartbeatInterval: config.heartbeatInterval,
  loginUrl: LOGIN_URL,
});
const typingSender = new TypingSender((state) => conn.send({ type: 'typing', room: ROOM, state }));
const composer = new Composer({
  form: $('composer-form'),
  textarea: $('composer'),
  button: $('send-button'),
  counter: $('char-counter'),
  max: MAX_BODY,
  onSend: sendMessage,
  onInput: (text) => typingSender.input(text),
  onBlur: () => typingSender.stop(),
});

let historyLoaded = false;
let earlyFrames = []; // message frames that arrive before the first history page
let joined = false; // our join for this room has been answered on the current socket
let hasOlder = false;
let loadingOlder = false;
// Showing a stretch of the past that does not reach the newest message (opened at a
// search result): live messages are only counted until the reader scrolls down to them.
let detached = false;
let loadingNewer = false;
let newestLoaded = 0; // highest seq loaded while detached: where the next page starts
// The room's change counter (edits and deletions) up to which this page is current: a
// re-join asks for the changes after it, to messages it already shows.
let lastChange = null;
let fillingGap = false;
let gapTimer = null;
let flushTimer = null;
let unread = 0;
let lossTimer = null;
let lossAnnounced = false;

// ---------------------------------------------------------------- messages

// Merge messages into the timeline and the list. `source` ('older' | 'live' | 'catchup')
// decides scrolling and unread counting.
function addMessages(messages, source) {
  const fresh = new Set(messages.filter((m) => !timeline.has(m?.id)).map((m) => m.id));
  const changed = timeline.merge(messages);
  if (changed.length === 0) return;

  // A stored copy of one of our queued messages means it arrived: stop resending it.
  for (const msg of changed) if (msg.client_id && msg.user === ME) outbox.remove(msg.client_id);

  if (source === 'older') {
    quietly(() => view.keepScrollPosition(() => view.upsert(changed)));
  } else if (source === 'newer') {
    quietly(() => view.upsert(changed)); // below the reader: nothing moves
  } else {
    const stick = view.isNearBottom();
    view.upsert(changed);
    const ownLive = source === 'live' && changed.some((m) => m.user === ME);
    if (stick || ownLive) view.scrollToBottom();
    else jumpButton.hidden = false;
  }

  if ((source === 'live' || source === 'catchup') && document.hidden) {
    unread += changed.filter((m) => fresh.has(m.id) && m.user !== ME && !m.deleted).length;
    updateTitle();
  }
  if (source === 'live' || source === 'catchup' || source === 'newer') directory.see(changed);
  scheduleGapCheck();
  scheduleRead();
}

// Older pages are not news: keep the live region from reading them all out.
function quietly(change) {
  log.setAttribute('aria-live', 'off');
  const result = change();
  requestAnimationFrame(() => log.setAttribute('aria-live', 'polite'));
  return result;
}

async function loadInitial() {
  const at = epoch;
  for (let attempt = 0; ; attempt += 1) {
    try {
      if (AT_SEQ > 0) await showAround(AT_SEQ);
      else {
        const page = await fetchMessages(messagesUrl(), { limit: PAGE_SIZE });
        if (at !== epoch) return;
        showNewestPage(page);
      }
      break;
    } catch (err) {
      if (at !== epoch || redirectIfLoggedOut(err)) return;
      if (err?.status === 404) {
        roomGone(ROOM, 'This room does not exist (any more), or is not open to you.');
        return;
      }
      alerts.show('Could not load messages. Retrying…', { timeout: 5000 });
      await sleep(Math.min(30_000, 1000 * 2 ** attempt));
      if (at !== epoch) return;
    }
  }
  if (at !== epoch) return;
  historyLoaded = true;
  $('message-loading').hidden = true;
  updateHistoryEdge();
  view.scrollToBottom();
  if (AT_SEQ > 0) showTarget(AT_SEQ);
  const early = earlyFrames;
  earlyFrames = [];
  for (const frame of early) handleFrame(frame);
  // Join only now, so `since` covers everything after the page we just rendered (the
  // socket may have joined the room already, for its badge: this join is the catch-up).
  if (conn.rooms.has(ROOM)) conn.rejoin(ROOM);
  else conn.join(ROOM, () => position(ROOM));
  scheduleRead();
}

// Where a (re)join of `slug` starts: the open room from what it shows (while detached
// from the present, no `missed`: the reader pages forward instead); any other room
// from what its badge has counted.
function position(slug) {
  if (slug === ROOM && historyLoaded) {
    return detached ? {} : { since: timeline.lastSeq, changes_since: lastChange };
  }
  const since = directory.since(slug);
  return Number.isInteger(since) ? { since } : {};
}

// Load the messages on both sides of `seq` (the message itself included).
async function showAround(seq) {
  const at = epoch;
  const [older, newer] = await Promise.all([
    fetchMessages(messagesUrl(), { before: seq + 1, limit: AROUND + 1 }),
    fetchMessages(messagesUrl(), { after: seq, limit: AROUND }),
  ]);
  if (at !== epoch) return;
  const results = [...older.results, ...newer.results];
  showNewestPage({ results, hasMore: older.hasMore });
  detached = newer.hasMore;
  newestLoaded = Math.max(seq, ...results.map((m) => m.seq).filter(Number.isInteger));
}

function showTarget(seq) {
  const li = view.list.querySelector(`li.message[data-seq="${seq}"]`);
  if (!li) {
    alerts.show('That message is not in this room (any more).', { timeout: 8000 });
    return;
  }
  li.classList.add('message--target');
  li.scrollIntoView({ block: 'center' });
  const author = li.querySelector('.message-author').textContent;
  announce(`Showing the message from ${author} you searched for.`);
}

// Page forward from a stretch of the past; reaching the newest message re-attaches.
async function loadNewer() {
  if (loadingNewer || !detached || !historyLoaded) return;
  loadingNewer = true;
  loadNewerButton.disabled = true;
  loadNewerButton.textContent = 'Loading…';
  const at = epoch;
  try {
    const page = await fetchMessages(messagesUrl(), { after: newestLoaded, limit: PAGE_SIZE });
    if (at !== epoch) return;
    addMessages(page.results, 'newer');
    for (const msg of page.results) if (msg.seq > newestLoaded) newestLoaded = msg.seq;
    if (!page.hasMore) {
      detached = false;
      jumpButton.hidden = true;
      fillGap(); // whatever arrived live meanwhile
    }
  } catch (err) {
    if (!redirectIfLoggedOut(err)) alerts.show('Could not load newer messages.', { timeout: 8000 });
  } finally {
    loadingNewer = false;
    loadNewerButton.disabled = false;
    loadNewerButton.textContent = 'Load newer messages';
    updateHistoryEdge();
  }
}

// Leave a stretch of the past for the newest page, as a room normally opens.
async function jumpToPresent() {
  detached = false;
  history.replaceState(null, '', location.pathname);
  try {
    await reloadNewest();
  } catch (err) {
    if (!redirectIfLoggedOut(err)) alerts.show('Could not load the newest messages.', { timeout: 8000 });
  }
}

// Start the list over from a page of the newest messages.
function showNewestPage(page) {
  view.clear();
  const messages = timeline.reset(page.results);
  // History holding one of our queued messages means it was stored after all.
  for (const msg of messages) if (msg.client_id && msg.user === ME) outbox.remove(msg.client_id);
  view.upsert(messages);
  hasOlder = page.hasMore;
}

async function loadOlder() {
  if (loadingOlder || !hasOlder || !historyLoaded || timeline.minSeq === null) return;
  loadingOlder = true;
  loadOlderButton.disabled = true;
  loadOlderButton.textContent = 'Loading…';
  const at = epoch;
  try {
    const page = await fetchMessages(messagesUrl(), { before: timeline.minSeq, limit: PAGE_SIZE });
    if (at !== epoch) return;
    hasOlder = page.hasMore && page.results.length > 0;
    addMessages(page.results, 'older');
  } catch (err) {
    if (!redirectIfLoggedOut(err)) alerts.show('Could not load older messages.', { timeout: 8000 });
  } finally {
    loadingOlder = false;
    loadOlderButton.disabled = false;
    loadOlderButton.textContent = 'Load older messages';
    updateHistoryEdge();
  }
}

function updateHistoryEdge() {
  loadNewerButton.hidden = !detached;
  loadOlderButton.hidden = !hasOlder;
  $('history-start').hidden = hasOlder || timeline.size === 0;
}

// A seq jump may just be out-of-order delivery: wait a moment, then fetch what is missing.
function scheduleGapCheck(delay = GAP_WAIT_MS) {
  if (detached || !timeline.hasGap || gapTimer !== null || fillingGap) return;
  gapTimer = setTimeout(() => {
    gapTimer = null;
    if (timeline.hasGap) fillGap();
  }, delay);
}

async function fillGap() {
  if (fillingGap || !historyLoaded || detached) return;
  fillingGap = true;
  clearTimeout(gapTimer);
  gapTimer = null;
  const at = epoch;
  try {
    for (let pages = 0; timeline.hasGap; pages += 1) {
      if (pages === MAX_GAP_PAGES) {
        await reloadNewest(); // too far behind: show the present, scroll back for the rest
        break;
      }
      const after = timeline.lastSeq;
      const page = await fetchMessages(messagesUrl(), { after, limit: GAP_PAGE_SIZE });
      if (at !== epoch) return; // another room opened meanwhile: its own state
      addMessages(page.results, 'catchup');
      if (!page.hasMore && timeline.hasGap) {
        timeline.acceptGap(); // the server has nothing there: do not wait forever
        break;
      }
      if (timeline.lastSeq === after) break; // no progress; the next jump retries
    }
  } catch (err) {
    if (at !== epoch) return;
    if (!redirectIfLoggedOut(err)) {
      fillingGap = false;
      scheduleGapCheck((err.retryAfter || 5) * 1000);
      return;
    }
  }
  if (at === epoch) fillingGap = false;
}

async function reloadNewest() {
  const at = epoch;
  const page = await fetchMessages(messagesUrl(), { limit: PAGE_SIZE });
  if (at !== epoch) return;
  showNewestPage(page);
  updateHistoryEdge();
  view.scrollToBottom();
}

async function loadPresence() {
  const at = epoch;
  try {
    const data = await getJSON(`${roomUrl(ROOM)}presence/`);
    if (at === epoch && Array.isArray(data?.users)) members.setAll(data.users);
  } catch {
    // Presence is a nicety: an old or failing endpoint just leaves the list as it is.
  }
}

// ---------------------------------------------------------------- sending

function sendMessage(body) {
  if ([...body].length > MAX_BODY) return;
  if (detached) jumpToPresent(); // a reply belongs under the newest message
  const item = outbox.add(body);
  view.addPending(item);
  view.scrollToBottom();
  jumpButton.hidden = true;
  typingSender.stop();
  flushOutbox();
  if (!joined) view.setLocalState(item.client_id, 'pending', WAITING_NOTE);
}

// The room's section shows whether this socket has joined it (sends go out only then).
function setJoined(value) {
  joined = value;
  $('chat').dataset.joined = String(value);
}

// Queued messages say they wait for the connection rather than "sending…".
function markWaiting() {
  for (const item of outbox.list()) {
    if (view.hasPending(item.client_id)) view.setLocalState(item.client_id, 'pending', WAITING_NOTE);
  }
}

// Send every queued message that is due. `force` resends those still awaiting an ack,
// as after a re-join: with no ack, the server may have stored nothing.
function flushOutbox({ force = false } = {}) {
  clearTimeout(flushTimer);
  flushTimer = null;
  if (joined) {
    for (const item of outbox.due({ force })) {
      const frame = { type: 'message', room: ROOM, body: item.body, client_id: item.client_id };
      if (!conn.send(frame)) break;
      outbox.noteSent(item.client_id);
      if (!view.hasPending(item.client_id)) view.addPending(item);
      view.setLocalState(item.client_id, 'pending', 'sending…');
    }
  }
  const wait = outbox.nextDeferral();
  if (wait !== null) flushTimer = setTimeout(flushOutbox, wait + 50);
}

// The outbox of room `slug` (one instance per room, so its send times survive a switch).
function outboxFor(slug) {
  let box = outboxes.get(slug);
  if (!box) {
    box = new Outbox(ME, slug);
    outboxes.set(slug, box);
  }
  return box;
}

// Messages typed in a room that is no longer open still go out (and are acked) in
// the background: the socket has joined every room of the user.
function flushOtherRooms({ force = false, only = null } = {}) {
  const slugs = only === null ? [...outboxes.keys()] : [only];
  for (const slug of slugs) {
    if (slug === ROOM || !joinedRooms.has(slug)) continue;
    const box = outboxFor(slug);
    for (const item of box.due({ force })) {
      const frame = { type: 'message', room: slug, body: item.body, client_id: item.client_id };
      if (!conn.send(frame)) return;
      box.noteSent(item.client_id);
    }
  }
}

function onAck(frame) {
  if (typeof frame.client_id !== 'string') return;
  if (frame.room !== ROOM) {
    outboxes.get(frame.room)?.remove(frame.client_id);
    return;
  }
  const body = outbox.get(frame.client_id)?.body ?? view.pendingBody(frame.client_id);
  outbox.remove(frame.client_id);
  if (body === null || !Number.isInteger(frame.id)) return;
  const msg = {
    id: frame.id,
    room: ROOM,
    seq: frame.seq,
    user: ME,
    body,
    created_at: frame.created_at,
    client_id: frame.client_id,
  };
  addMessages([msg], 'live');
}

function failLocal(clientId, text) {
  outbox.remove(clientId);
  view.setLocalState(clientId, 'failed', `Not sent: ${text}`);
  announce(`Your message was not sent: ${text}`);
}

// Delete frames go out only on a joined socket; otherwise say why nothing happened.
function sendOrWarn(frame) {
  if (joined && conn.send(frame)) return true;
  alerts.show('Not connected: try again in a moment.', { timeout: 5000 });
  return false;
}

// Polite news for screen readers that the message log does not carry by itself.
function announce(text) {
  $('announcer').textContent = text;
}

// ---------------------------------------------------------------- read state

let readTimer = null;

// Reading the open room to its end (visible, scrolled to the bottom) sends a `read`
// frame; the server tells every tab of the user, and the badges clear.
function scheduleRead() {
  clearTimeout(readTimer);
  readTimer = setTimeout(markRead, READ_DELAY_MS);
}

function markRead() {
  if (!historyLoaded || !joined || detached || document.hidden || !view.isNearBottom()) return;
  const seq = timeline.lastSeq;
  const entry = directory.get(ROOM);
  if (!Number.isInteger(seq) || seq <= 0 || !entry?.base || (entry.lastReadSeq ?? 0) >= seq) return;
  if (conn.send({ type: 'read', room: ROOM, seq })) directory.readLocally(ROOM, seq);
}

// ---------------------------------------------------------------- the user's rooms

let directoryLoaded = false;
const resyncing = new Map(); // slug -> timer or in-flight promise

// The user's rooms and DMs with their counts; then the socket joins every one of them,
// from where its count stands, so their messages (and badges) arrive live.
async function loadDirectory() {
  for (let attempt = 0; ; attempt += 1) {
    try {
      const rooms = await getAllPages(`${ROOMS_URL}?mine=1`);
      for (const room of rooms) directory.upsert(room);
      break;
    } catch (err) {
      if (redirectIfLoggedOut(err)) return;
      await sleep(Math.min(30_000, 1000 * 2 ** attempt));
    }
  }
  directoryLoaded = true;
  for (const entry of directory.list()) {
    if (entry.slug !== ROOM && !conn.rooms.has(entry.slug)) conn.join(entry.slug, () => position(entry.slug));
    else if (!entry.base && joinedRooms.has(entry.slug)) resync(entry.slug);
  }
}

// Ask the server for one room's object (its counts), shortly: several reasons to ask
// within the delay make one request.
function resync(slug, delay = 0) {
  if (resyncing.has(slug)) return;
  const timer = setTimeout(async () => {
    try {
      directory.upsert(await getJSON(roomUrl(slug)));
    } catch (err) {
      if (err?.status === 404) {
        const name = directory.get(slug)?.name ?? slug;
        roomGone(slug, `You are no longer a member of ${name}.`);
      }
      else redirectIfLoggedOut(err);
    } finally {
      resyncing.delete(slug);
    }
  }, delay);
  resyncing.set(slug, timer);
}

directory.addEventListener('resync', (event) => resync(event.detail, RESYNC_DELAY_MS));
directory.addEventListener('change', (event) => {
  if (event.detail === ROOM || event.detail === null) {
    renderHeader();
    scheduleRead();
  }
});

// room_added: someone added the user to a room or opened a DM with them.
async function roomAdded(slug) {
  try {
    directory.upsert(await getJSON(roomUrl(slug)));
  } catch (err) {
    redirectIfLoggedOut(err);
    return;
  }
  if (!conn.rooms.has(slug)) conn.join(slug, () => position(slug));
}

// The user lost a room (removed, left, or it is gone): it leaves the sidebar, and if
// it is open, the page says so and opens another.
function roomGone(slug, text) {
  directory.remove(slug);
  conn.forget(slug);
  joinedRooms.delete(slug);
  outboxes.delete(slug);
  if (slug !== ROOM) return;
  const next = fallbackRoom();
  if (next === null) {
    location.assign('/');
    return;
  }
  openRoom(next, { replace: true });
  alerts.show(text, { kind: 'info', timeout: 10_000 });
  announce(text);
}

function fallbackRoom() {
  const rooms = directory.list().filter((entry) => entry.slug !== ROOM);
  const lobby = rooms.find((entry) => entry.slug === 'lobby');
  return (lobby ?? rooms.find((entry) => entry.kind !== 'direct') ?? rooms[0])?.slug ?? null;
}

function roomUrl(slug) {
  return `${ROOMS_URL}${encodeURIComponent(slug)}/`;
}

function messagesUrl() {
  return `${roomUrl(ROOM)}messages/`;
}

// ---------------------------------------------------------------- switching rooms

// Open another room in place: the socket stays, the open room's state is rebuilt.
function openRoom(slug, { push = true, replace = false } = {}) {
  sidebar.close();
  if (slug === ROOM) return;
  markRead(); // what the reader saw of the room being left counts as read
  epoch += 1;
  typingSender.stop(); // to the room being left
  clearTimeout(gapTimer);
  clearTimeout(flushTimer);
  clearTimeout(readTimer);
  gapTimer = flushTimer = readTimer = null;
  typingIndicator.clearAll();

  ROOM = slug;
  AT_SEQ = Number.NaN;
  if (!directory.has(slug)) {
    directory.upsert({ slug, name: slug, kind: 'room', visibility: 'public' });
    resync(slug); // its name and kind
  }
  timeline = new Timeline(slug);
  outbox = outboxFor(slug);
  historyLoaded = false;
  earlyFrames = [];
  setJoined(false);
  hasOlder = loadingOlder = detached = loadingNewer = false;
  newestLoaded = 0;
  lastChange = null;
  fillingGap = fetchingChanges = false;
  unread = 0;

  view.reset();
  members.reset();
  search.reset(slug);
  jumpButton.hidden = true;
  $('message-loading').hidden = false;
  updateHistoryEdge();
  if (replace) history.replaceState({ room: slug }, '', roomPath(slug));
  else if (push) history.pushState({ room: slug }, '', roomPath(slug));
  renderHeader();
  sidebar.setActive(slug);
  roomMembers.show(directory.get(slug));
  for (const item of outbox.list()) view.addPending(item);
  markWaiting();
  loadInitial();
  if (window.matchMedia('(pointer: fine)').matches) $('composer').focus({ preventScroll: true });
}

// The header, title and labels that name the open room.
function renderHeader() {
  const entry = directory.get(ROOM);
  const name = entry?.name ?? ROOM;
  const direct = entry?.kind === 'direct';
  const label = direct ? name : `#${ROOM}`;
  $('room-name').textContent = name;
  $('room-slug').textContent = direct ? 'direct messages' : `#${ROOM}`;
  baseTitle = `${name} · VoiceFlow`;
  updateTitle();
  log.setAttribute('aria-label', `Messages in ${name}`);
  $('history-start-room').textContent = direct ? `your conversation with ${name}` : label;
  $('composer-label').textContent = `Message ${label}`;
  $('composer').placeholder = `Message ${label}`;
  $('search-scope-room').textContent = direct ? 'This chat' : `#${ROOM}`;
  $('chat').dataset.room = ROOM;
  $('room-locked').hidden = !entry?.is_locked;
  // A moderator deletes others' messages in rooms, not in DMs (the server checks).
  view.moderator = config.isModerator === true && !direct;
  roomMembers.update(entry);
}

function slugFromPath(path) {
  const match = /^\/rooms\/([^/]+)\/$/.exec(path);
  return match ? decodeURIComponent(match[1]) : null;
}

window.addEventListener('popstate', () => {
  const slug = slugFromPath(location.pathname);
  if (slug) openRoom(slug, { push: false });
});

// ---------------------------------------------------------------- socket frames

const ERROR_TEXT = {
  invalid: 'The server could not accept that.',
  not_found: 'This room does not exist (any more).',
  forbidden: 'You are not allowed to do that here.',
  rate_limited: 'Slow down a little.',
  unavailable: 'The server is having trouble. Try again shortly.',
};

function onError(frame) {
  const { code, request, ref } = frame;
  const text = typeof frame.detail === 'string' && frame.detail ? frame.detail : ERROR_TEXT[code] || 'Error.';
  const retryAfter = Math.max(1, Number(frame.retry_after) || 5);

  if (request === 'message' && typeof ref === 'string' && !outbox.has(ref) && !view.hasPending(ref)) {
    const other = [...outboxes.entries()].find(([slug, box]) => slug !== ROOM && box.has(ref));
    if (other) {
      otherRoomRefused(other[0], other[1], ref, code, text, retryAfter);
      return;
    }
  }
  if (request === 'message' && typeof ref === 'string' && (outbox.has(ref) || view.hasPending(ref))) {
    if (code === 'rate_limited' || code === 'unavailable') {
      // Nothing was stored: hold this message back and resend it with the same client_id.
      outbox.defer(ref, retryAfter * 1000);
      view.setLocalState(ref, 'pending', `waiting ${Math.ceil(retryAfter)} s to resend…`);
      flushOutbox();
      return;
    }
    if (code === 'invalid' || code === 'forbidden' || code === 'not_found') {
      failLocal(ref, text);
      return;
    }
  }
  // Typing is best effort; its refusals (e.g. while muted) would only be noise. A
  // `read` refused (not a member yet) changes nothing the reader needs to know.
  if (request === 'typing' || request === 'ping' || request === 'status' || request === 'read') return;
  if (request === 'edit' && view.editFailed(text)) return;
  if (request === 'join' && (code === 'rate_limited' || code === 'unavailable')) {
    setTimeout(() => conn.rejoin(ROOM), retryAfter * 1000);
    return;
  }
  alerts.show(text);
}

// A message typed in a room that is no longer open was refused.
function otherRoomRefused(slug, box, ref, code, text, retryAfter) {
  if (code === 'rate_limited' || code === 'unavailable') {
    box.defer(ref, retryAfter * 1000);
    return;
  }
  box.remove(ref);
  const name = directory.get(slug)?.name ?? slug;
  alerts.show(`Your message to ${name} was not sent: ${text}`);
}

// A hidden tab notifies of new messages (each counted once) in a DM or mentioning the
// reader.
function notifyOf(fresh) {
  for (const msg of fresh) {
    const entry = directory.get(msg.room);
    if (entry?.kind === 'direct') notifier.show(msg, msg.user);
    else if (entry && directory.mentionsMe(msg)) notifier.show(msg, `${msg.user} in ${entry.name}`);
  }
}

// Frames about any of the user's rooms: badges, the sidebar, notifications. Handled
// at once, whichever room is open (the open room's own handling follows).
function handleRoomsFrame(frame) {
  switch (frame.type) {
    case 'joined': {
      joinedRooms.add(frame.room);
      directory.noteLastSeq(frame.room, frame.last_seq);
      // Missed on a (re)join: news all the same, e.g. a new DM's first message.
      if (Array.isArray(frame.missed)) notifyOf(directory.see(frame.missed.filter(isMessage)));
      const entry = directory.get(frame.room);
      if (entry && ((!entry.base && directoryLoaded) || frame.truncated)) resync(frame.room);
      else if (entry?.base && entry.highest > entry.contiguous) resync(frame.room, RESYNC_DELAY_MS);
      if (frame.room !== ROOM) flushOtherRooms({ force: true, only: frame.room });
      break;
    }
    case 'left':
      joinedRooms.delete(frame.room);
      break;
    case 'message':
      if (isMessage(frame)) notifyOf(directory.see([withoutType(frame)]));
      break;
    case 'offline_messages':
      if (Array.isArray(frame.messages)) directory.see(frame.messages.filter(isMessage));
      // Some fell out of the queue: the server's counts have them.
      if (Number(frame.dropped) > 0) for (const entry of directory.list()) resync(entry.slug, RESYNC_DELAY_MS);
      break;
    case 'message_deleted':
      directory.deleted(frame.room, frame.seq);
      break;
    case 'read':
      directory.applyState(frame);
      break;
    case 'room_added':
      if (typeof frame.room === 'string') roomAdded(frame.room);
      break;
    case 'room_removed':
      if (typeof frame.room === 'string') {
        const name = directory.get(frame.room)?.name ?? frame.room;
        roomGone(frame.room, `You are no longer a member of ${name}.`);
      }
      break;
    case 'room_locked': {
      const entry = directory.get(frame.room);
      if (entry) entry.is_locked = Boolean(frame.locked);
      if (frame.room === ROOM) $('room-locked').hidden = !frame.locked;
      break;
    }
    case 'pong':
      if (frame.last_seq && typeof frame.last_seq === 'object') {
        for (const [slug, seq] of Object.entries(frame.last_seq)) directory.noteLastSeq(slug, seq);
        // Rooms whose last messages never came (the open one fills its own gap).
        for (const entry of directory.behind()) if (entry.slug !== ROOM) resync(entry.slug, PONG_GAP_WAIT_MS);
      }
      break;
    default:
      break;
  }
}

function handleFrame(frame) {
  switch (frame.type) {
    case 'joined':
      if (frame.room !== ROOM) return;
      setJoined(true);
      if (Array.isArray(frame.members)) members.setAll(frame.members);
      else loadPresence(); // a server without members in `joined`: ask the REST endpoint
      timeline.noteLastSeq(frame.last_seq);
      if (Array.isArray(frame.changed)) applyChanges(frame.changed);
      if (Number.isInteger(frame.last_change)) lastChange = frame.last_change;
      if (frame.changed_truncated) fetchChanges();
      addMessages(Array.isArray(frame.missed) ? frame.missed : [], 'catchup');
      flushOutbox({ force: true });
      if (frame.truncated || timeline.hasGap) fillGap();
      scheduleRead(); // what this page shows may now be marked read
      break;
    case 'left':
      if (frame.room === ROOM) setJoined(false);
      break;
    case 'room_removed':
      break; // handled with the user's rooms (the open one moves on)
    case 'message':
      if (frame.room !== ROOM || !isMessage(frame)) return;
      typingIndicator.clear(frame.user);
      if (detached) {
        timeline.noteLastSeq(frame.seq);
        jumpButton.hidden = false;
        return;
      }
      addMessages([withoutType(frame)], 'live');
      break;
    case 'offline_messages':
      if (Array.isArray(frame.messages) && !detached) {
        addMessages(frame.messages.filter((m) => m?.room === ROOM), 'catchup');
      }
      break;
    case 'message_deleted': {
      if (frame.room !== ROOM) return;
      const tombstone = timeline.markDeleted(frame.id);
      if (tombstone) view.upsert([tombstone]);
      noteChange(frame.change);
      break;
    }
    case 'message_edited': {
      if (frame.room !== ROOM || !isMessage(frame.message)) return;
      const edited = timeline.markEdited(frame.message);
      if (edited) view.upsert([edited]);
      view.editSaved(frame.message.id);
      noteChange(frame.change);
      break;
    }
    case 'ack':
      onAck(frame);
      break;
    case 'typing':
      if (frame.room === ROOM) typingIndicator.update(frame.user, frame.state);
      break;
    case 'presence':
      // Sent for anyone sharing any of the user's rooms: only those here are shown.
      if (typeof frame.user === 'string' && members.has(frame.user)) members.setStatus(frame.user, frame.status);
      break;
    case 'member_joined':
      if (frame.room === ROOM && typeof frame.user === 'string') members.joined(frame.user);
      break;
    case 'member_left':
      if (frame.room === ROOM && typeof frame.user === 'string') {
        members.left(frame.user);
        typingIndicator.clear(frame.user);
      }
      break;
    case 'pong': {
      // The room's stored last seq: above what we hold, its last messages never came.
      const stored = frame.last_seq?.[ROOM];
      if (!Number.isInteger(stored)) return;
      timeline.noteLastSeq(stored);
      scheduleGapCheck(PONG_GAP_WAIT_MS);
      break;
    }
    case 'error':
      onError(frame);
      break;
    default:
      break; // hello and future frame types
  }
}

// Edits and deletions from `joined.changed` or a changed_after page, for loaded messages.
function applyChanges(messages) {
  const changed = [];
  for (const msg of messages) {
    if (!isMessage(msg) || msg.room !== ROOM) continue;
    const next = msg.deleted ? timeline.markDeleted(msg.id) : timeline.markEdited(msg);
    if (next) changed.push(next);
  }
  if (changed.length) view.upsert(changed);
}

// Changes arrive in counter order: a jump means one was missed, so the count stays
// and the missing ones are fetched. Replaying a change is harmless.
function noteChange(change) {
  if (!Number.isInteger(change) || lastChange === null || change <= lastChange) return;
  if (change === lastChange + 1) lastChange = change;
  else fetchChanges();
}

let fetchingChanges = false;

// Changes this page has not applied (more than `joined` carries, or a missed event):
// page through them over REST.
async function fetchChanges() {
  if (fetchingChanges || lastChange === null) return;
  fetchingChanges = true;
  const at = epoch;
  try {
    for (let pages = 0; pages < MAX_GAP_PAGES; pages += 1) {
      const url = new URL(messagesUrl(), location.origin);
      url.searchParams.set('changed_after', String(lastChange));
      url.searchParams.set('limit', String(GAP_PAGE_SIZE));
      const data = await getJSON(url.pathname + url.search);
      if (at !== epoch) return;
      applyChanges(Array.isArray(data?.results) ? data.results : []);
      if (Number.isInteger(data?.last_change)) lastChange = data.last_change;
      if (!data?.has_more) break;
    }
  } catch (err) {
    redirectIfLoggedOut(err); // otherwise the next join asks again
  } finally {
    if (at === epoch) fetchingChanges = false;
  }
}

function withoutType(frame) {
  const { type, ...message } = frame;
  return message;
}

const BUFFERED_BEFORE_HISTORY = new Set(['joined', 'message', 'offline_messages', 'message_deleted', 'message_edited']);

conn.addEventListener('frame', (event) => {
  const frame = event.detail;
  handleRoomsFrame(frame);
  if (!historyLoaded && BUFFERED_BEFORE_HISTORY.has(frame.type)) earlyFrames.push(frame);
  else handleFrame(frame);
});

conn.addEventListener('ready', () => {
  if (document.hidden) conn.send({ type: 'status', status: 'away' });
});

conn.addEventListener('state', (event) => {
  const { state, retryIn, rtt } = event.detail;
  const el = $('connection-state');
  el.dataset.state = state;
  if (state === 'connected') el.textContent = rtt === null ? 'connected' : `connected · ${rtt} ms`;
  else if (state === 'reconnecting') el.textContent = `reconnecting in ${retryIn} s`;
  else if (state === 'offline') el.textContent = 'offline';
  else el.textContent = 'connecting…';
  if (state !== 'connected') {
    setJoined(false); // a new socket must join again before we send
    joinedRooms.clear();
    typingIndicator.clearAll();
    markWaiting();
  }
  announceConnection(state === 'connected');
});

// Screen readers hear a lost connection and its return, not every countdown tick.
function announceConnection(connected) {
  if (connected) {
    clearTimeout(lossTimer);
    lossTimer = null;
    if (lossAnnounced) announce('Connected again.');
    lossAnnounced = false;
  } else if (lossTimer === null && !lossAnnounced) {
    lossTimer = setTimeout(() => {
      lossTimer = null;
      lossAnnounced = true;
      announce('Connection lost. Reconnecting; messages you send will wait.');
    }, ANNOUNCE_LOSS_AFTER_MS);
  }
}

conn.addEventListener('toolarge', (event) => {
  const clientId = event.detail?.client_id;
  if (clientId) failLocal(clientId, 'message too large');
});

// ---------------------------------------------------------------- page chrome

function updateTitle() {
  document.title = unread > 0 ? `(${unread}) ${baseTitle}` : baseTitle;
}

function redirectIfLoggedOut(err) {
  // DRF answers 403 "credentials were not provided" when session auth comes first.
  const loggedOut = err?.status === 401 || (err?.status === 403 && /credential|authenticat/i.test(err.message));
  if (loggedOut) {
    location.assign(`${LOGIN_URL}?next=${encodeURIComponent(location.pathname + location.search)}`);
  }
  return loggedOut;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

document.addEventListener('visibilitychange', () => {
  conn.send({ type: 'status', status: document.hidden ? 'away' : 'online' });
  if (!document.hidden) {
    unread = 0;
    updateTitle();
    scheduleRead();
  }
});

scroller.addEventListener(
  'scroll',
  () => {
    if (scroller.scrollTop < OLDER_TRIGGER_PX && scroller.scrollHeight > scroller.clientHeight) loadOlder();
    const toBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight;
    if (detached && toBottom < NEWER_TRIGGER_PX && scroller.scrollHeight > scroller.clientHeight) loadNewer();
    if (view.isNearBottom() && !detached) {
      jumpButton.hidden = true;
      scheduleRead();
    }
  },
  { passive: true },
);
loadOlderButton.addEventListener('click', loadOlder);
loadNewerButton.addEventListener('click', loadNewer);
jumpButton.addEventListener('click', async () => {
  if (detached) await jumpToPresent();
  view.scrollToBottom();
  jumpButton.hidden = true;
  $('composer').focus();
});

const search = new SearchPanel({
  form: $('search-form'),
  input: $('search-input'),
  scope: $('search-scope'),
  panel: $('search-panel'),
  heading: $('search-heading'),
  list: $('search-results'),
  status: $('search-status'),
  more: $('search-more'),
  close: $('search-close'),
  url: config.searchUrl || '/api/search/',
  room: ROOM,
  onError: redirectIfLoggedOut,
});

const sidebar = new Sidebar({
  root: $('sidebar'),
  rooms: $('sidebar-rooms'),
  dms: $('sidebar-dms'),
  toggle: $('sidebar-toggle'),
  toggleBadge: $('sidebar-toggle-badge'),
  roomForm: $('new-room-form'),
  dmForm: $('new-dm-form'),
  directory,
  urls: { rooms: ROOMS_URL, dms: config.dmsUrl || '/api/dms/' },
  onOpen: (slug) => openRoom(slug),
  onError: redirectIfLoggedOut,
});
sidebar.setActive(ROOM);
$('sidebar-backdrop').addEventListener('click', () => sidebar.close());

const notifier = new Notifier({ button: $('notify-enable'), onOpen: (slug) => openRoom(slug) });

const roomMembers = new RoomMembersPanel({
  section: $('room-members'),
  list: $('room-member-list'),
  form: $('member-add-form'),
  input: $('member-add-input'),
  error: $('member-add-error'),
  leave: $('leave-room'),
  me: ME,
  isStaff: Boolean(config.isStaff),
  onLeft: (slug) => {
    conn.leave(slug); // a public room keeps no event for a leave: say it here
    roomGone(slug, `You left ${directory.get(slug)?.name ?? slug}.`);
  },
  onError: redirectIfLoggedOut,
});
roomMembers.show(directory.get(ROOM));
renderHeader();

// Resend anything whose ack is overdue; refresh "3 min ago" labels.
setInterval(() => {
  flushOutbox();
  flushOtherRooms();
}, 5000);
setInterval(() => view.refreshTimes(), 30_000);

// The member list is folded on phones, where it would push the chat down.
const narrow = window.matchMedia('(max-width: 720px)');
$('members-details').open = !narrow.matches;
narrow.addEventListener('change', () => {
  $('members-details').open = !narrow.matches;
});

// Ready to type on arrival, except on touch screens where focus pops up the keyboard.
if (window.matchMedia('(pointer: fine)').matches) $('composer').focus({ preventScroll: true });

// Unsent messages from an earlier visit appear at once and go out after the join.
for (const item of outbox.list()) view.addPending(item);
markWaiting();
history.replaceState({ room: ROOM }, '', location.href);
conn.connect();
loadInitial();
loadDirectory();
