// Entry point of the room page: wires history (REST), the socket, the outbox and the UI.

import { Alerts } from './alerts.js';
import { fetchMessages, getJSON } from './api.js';
import { Composer } from './composer.js';
import { ChatConnection } from './connection.js';
import { MemberList } from './members.js';
import { MessageView } from './message-view.js';
import { Outbox } from './outbox.js';
import { SearchPanel } from './search.js';
import { Timeline, isMessage } from './timeline.js';
import { TypingIndicator, TypingSender } from './typing.js';

const config = JSON.parse(document.getElementById('vf-config').textContent);
const ROOM = config.room;
const ME = config.user;
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
// ?at=<seq>: open the room at that message (from a search result) instead of the end.
const AT_SEQ = Number.parseInt(new URLSearchParams(location.search).get('at') ?? '', 10);

const $ = (id) => document.getElementById(id);
const scroller = $('message-scroller');
const log = $('message-log');
const loadOlderButton = $('load-older');
const loadNewerButton = $('load-newer');
const jumpButton = $('jump-latest');
const baseTitle = document.title;

const alerts = new Alerts($('error-region'));
const timeline = new Timeline(ROOM);
const outbox = new Outbox(ME, ROOM);
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
  scheduleGapCheck();
}

// Older pages are not news: keep the live region from reading them all out.
function quietly(change) {
  log.setAttribute('aria-live', 'off');
  const result = change();
  requestAnimationFrame(() => log.setAttribute('aria-live', 'polite'));
  return result;
}

async function loadInitial() {
  for (let attempt = 0; ; attempt += 1) {
    try {
      if (AT_SEQ > 0) await showAround(AT_SEQ);
      else showNewestPage(await fetchMessages(config.messagesUrl, { limit: PAGE_SIZE }));
      break;
    } catch (err) {
      if (redirectIfLoggedOut(err)) return;
      alerts.show('Could not load messages. Retrying…', { timeout: 5000 });
      await sleep(Math.min(30_000, 1000 * 2 ** attempt));
    }
  }
  historyLoaded = true;
  $('message-loading').hidden = true;
  updateHistoryEdge();
  view.scrollToBottom();
  if (AT_SEQ > 0) showTarget(AT_SEQ);
  for (const frame of earlyFrames) handleFrame(frame);
  earlyFrames = [];
  // Join only now, so `since` covers everything after the page we just rendered. While
  // detached from the present, no `missed`: the reader pages forward instead.
  conn.join(ROOM, () => (detached ? {} : { since: timeline.lastSeq, changes_since: lastChange }));
}

// Load the messages on both sides of `seq` (the message itself included).
async function showAround(seq) {
  const [older, newer] = await Promise.all([
    fetchMessages(config.messagesUrl, { before: seq + 1, limit: AROUND + 1 }),
    fetchMessages(config.messagesUrl, { after: seq, limit: AROUND }),
  ]);
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
  try {
    const page = await fetchMessages(config.messagesUrl, { after: newestLoaded, limit: PAGE_SIZE });
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
  try {
    const page = await fetchMessages(config.messagesUrl, { before: timeline.minSeq, limit: PAGE_SIZE });
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
  try {
    for (let pages = 0; timeline.hasGap; pages += 1) {
      if (pages === MAX_GAP_PAGES) {
        await reloadNewest(); // too far behind: show the present, scroll back for the rest
        break;
      }
      const after = timeline.lastSeq;
      const page = await fetchMessages(config.messagesUrl, { after, limit: GAP_PAGE_SIZE });
      addMessages(page.results, 'catchup');
      if (!page.hasMore && timeline.hasGap) {
        timeline.acceptGap(); // the server has nothing there: do not wait forever
        break;
      }
      if (timeline.lastSeq === after) break; // no progress; the next jump retries
    }
  } catch (err) {
    if (!redirectIfLoggedOut(err)) {
      fillingGap = false;
      scheduleGapCheck((err.retryAfter || 5) * 1000);
      return;
    }
  }
  fillingGap = false;
}

async function reloadNewest() {
  showNewestPage(await fetchMessages(config.messagesUrl, { limit: PAGE_SIZE }));
  updateHistoryEdge();
  view.scrollToBottom();
}

async function loadPresence() {
  if (!config.presenceUrl) return;
  try {
    const data = await getJSON(config.presenceUrl);
    if (Array.isArray(data?.users)) members.setAll(data.users);
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

function onAck(frame) {
  if (frame.room !== ROOM || typeof frame.client_id !== 'string') return;
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
  // Typing is best effort; its refusals (e.g. while muted) would only be noise.
  if (request === 'typing' || request === 'ping' || request === 'status') return;
  if (request === 'edit' && view.editFailed(text)) return;
  if (request === 'join' && (code === 'rate_limited' || code === 'unavailable')) {
    setTimeout(() => conn.rejoin(ROOM), retryAfter * 1000);
    return;
  }
  alerts.show(text);
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
      break;
    case 'left':
      if (frame.room === ROOM) setJoined(false);
      break;
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
      if (typeof frame.user === 'string') members.setStatus(frame.user, frame.status);
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
  try {
    for (let pages = 0; pages < MAX_GAP_PAGES; pages += 1) {
      const url = new URL(config.messagesUrl, location.origin);
      url.searchParams.set('changed_after', String(lastChange));
      url.searchParams.set('limit', String(GAP_PAGE_SIZE));
      const data = await getJSON(url.pathname + url.search);
      applyChanges(Array.isArray(data?.results) ? data.results : []);
      if (Number.isInteger(data?.last_change)) lastChange = data.last_change;
      if (!data?.has_more) break;
    }
  } catch (err) {
    redirectIfLoggedOut(err); // otherwise the next join asks again
  } finally {
    fetchingChanges = false;
  }
}

function withoutType(frame) {
  const { type, ...message } = frame;
  return message;
}

const BUFFERED_BEFORE_HISTORY = new Set(['message', 'offline_messages', 'message_deleted', 'message_edited']);

conn.addEventListener('frame', (event) => {
  const frame = event.detail;
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
  }
});

scroller.addEventListener(
  'scroll',
  () => {
    if (scroller.scrollTop < OLDER_TRIGGER_PX && scroller.scrollHeight > scroller.clientHeight) loadOlder();
    const toBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight;
    if (detached && toBottom < NEWER_TRIGGER_PX && scroller.scrollHeight > scroller.clientHeight) loadNewer();
    if (view.isNearBottom() && !detached) jumpButton.hidden = true;
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

new SearchPanel({
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

// Resend anything whose ack is overdue; refresh "3 min ago" labels.
setInterval(() => flushOutbox(), 5000);
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
conn.connect();
loadInitial();
