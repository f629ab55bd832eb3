"""Where presence lives: Redis (shared by every process) or memory (embedded mode).

One interface, two backends. Every operation is one round trip (a Lua script) in Redis,
so concurrent processes never see half an update. Times are epoch seconds (floats).

Redis keys, under `<REDIS_KEY_PREFIX>:presence`, each with an expiry renewed on use:
  sockets            ZSET  socket id -> last seen (the sweep finds dead sockets here)
  s:<sid>            HASH  uid, name, proc (server process), seen, away (0/1)
  s:<sid>:rooms      SET   room slugs this socket joined
  u:<uid>            HASH  name, active (last activity), status (last announced), left
  u:<uid>:sockets    SET   the user's socket ids
  u:<uid>:rooms      SET   rooms the user is present in (announced by member_joined)
  r:<slug>           SET   user ids present in the room, as announced (member_joined)
  active             ZSET  uid -> last activity, for users who may turn away
  gone               ZSET  "uid" / "uid|slug" -> when the last socket went (grace)
  status:online      SET   uids announced online  } kept by the scripts that change
  status:away        SET   uids announced away    } them, so /health's totals are
  rooms              SET   slugs whose r:<slug> is not empty } O(1), never a scan
  proc:<process>     STRING a server process's mark: gone means Redis lost its sockets
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings

from voiceflow.breaker import UNREACHABLE, redis_breaker
from voiceflow.redis import redis_key
from voiceflow.runtime import runtime

from .status import OFFLINE, ONLINE, SocketState, UserPresence

if TYPE_CHECKING:
    from voiceflow.runtime.pipelined_redis import PipelinedRedis


@dataclass(frozen=True)
class SocketRemoval:
    """What removing a socket left behind."""

    user_id: int
    username: str
    departed: tuple  # rooms where the user now has no socket (their grace starts)
    sockets_left: int


def _departure(entry):
    uid, _, slug = entry.partition("|")
    return int(uid), slug or None


# Lua shared by the scripts: key names and the user view that status needs.
_LUA_COMMON = """
local P, TTL = ARGV[1], tonumber(ARGV[2])
-- Key names by plain concatenation: table.concat needs a table per call, which cost
-- more than the commands themselves in a room read (hundreds of names per call).
local function k(a, b, c)
  if c then return P .. ':' .. a .. ':' .. b .. ':' .. c end
  if b then return P .. ':' .. a .. ':' .. b end
  return P .. ':' .. a
end
local function keep(...)
  for _, key in ipairs({...}) do redis.call('EXPIRE', key, TTL) end
end
local function holds_room(uid, slug, except)
  for _, o in ipairs(redis.call('SMEMBERS', k('u', uid, 'sockets'))) do
    if o ~= except and redis.call('SISMEMBER', k('s', o, 'rooms'), slug) == 1 then
      return true
    end
  end
  return false
end
local function room_gone(slug)
  if redis.call('SCARD', k('r', slug)) == 0 then
    redis.call('SREM', k('rooms'), slug)
  end
end
-- A user's view; with `slug` (a room read), in place of their rooms the number of
-- their sockets in it, counted in the same pass over the sockets.
local function view(uid, slug)
  local u = redis.call('HMGET', k('u', uid), 'name', 'active', 'status', 'left')
  local socks, n = {}, 0
  for _, sid in ipairs(redis.call('SMEMBERS', k('u', uid, 'sockets'))) do
    local s = redis.call('HMGET', k('s', sid), 'seen', 'away')
    if s[1] then table.insert(socks, s[1]); table.insert(socks, s[2] or '0') end
    if slug then n = n + redis.call('SISMEMBER', k('s', sid, 'rooms'), slug) end
  end
  local last = n
  if not slug then last = redis.call('SMEMBERS', k('u', uid, 'rooms')) end
  return {uid, u[1] or '', u[2] or '', u[3] or '', u[4] or '', socks, last}
end
"""

_SOCKET_ADD = """
local sid, uid, name, proc, now = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local cap = tonumber(ARGV[8])
local n = redis.call('SCARD', k('u', uid, 'sockets'))
if n >= cap then return false end
redis.call('HSET', k('s', sid), 'uid', uid, 'name', name, 'proc', proc,
           'seen', now, 'away', '0')
redis.call('ZADD', k('sockets'), now, sid)
redis.call('SADD', k('u', uid, 'sockets'), sid)
redis.call('HSET', k('u', uid), 'name', name)
redis.call('HDEL', k('u', uid), 'left')
redis.call('ZREM', k('gone'), uid)
if n == 0 and (redis.call('HGET', k('u', uid), 'status') or 'offline') == 'offline' then
  -- Arriving counts as activity; a reload within the grace period does not.
  redis.call('HSET', k('u', uid), 'active', now)
  redis.call('ZADD', k('active'), now, uid)
  keep(k('active'))
end
keep(k('s', sid), k('u', uid, 'sockets'), k('u', uid), k('sockets'), k('gone'))
return view(uid)
"""

_SOCKET_REMOVE = """
local sid, now = ARGV[3], ARGV[4]
redis.call('ZREM', k('sockets'), sid)  -- also when its hash expired: no leftovers
local uid = redis.call('HGET', k('s', sid), 'uid')
if not uid then return false end
local name = redis.call('HGET', k('s', sid), 'name') or ''
local rooms = redis.call('SMEMBERS', k('s', sid, 'rooms'))
redis.call('SREM', k('u', uid, 'sockets'), sid)
redis.call('DEL', k('s', sid), k('s', sid, 'rooms'))
local departed = {}
for _, slug in ipairs(rooms) do
  if not holds_room(uid, slug, nil) then
    table.insert(departed, slug)
    redis.call('ZADD', k('gone'), now, uid .. '|' .. slug)
  end
end
local left = redis.call('SCARD', k('u', uid, 'sockets'))
if left == 0 then
  redis.call('HSET', k('u', uid), 'left', now)
  redis.call('ZADD', k('gone'), now, uid)
end
keep(k('gone'), k('u', uid))
return {uid, name, left, departed}
"""

_SOCKET_TOUCH = """
local sid, now, active = ARGV[3], ARGV[4], ARGV[5]
local uid = redis.call('HGET', k('s', sid), 'uid')
if not uid then return 0 end
redis.call('HSET', k('s', sid), 'seen', now)
redis.call('ZADD', k('sockets'), now, sid)
if active == '1' then
  redis.call('HSET', k('u', uid), 'active', now)
  redis.call('ZADD', k('active'), now, uid)
end
keep(k('s', sid), k('s', sid, 'rooms'), k('u', uid), k('u', uid, 'sockets'),
     k('u', uid, 'rooms'), k('sockets'), k('active'))
for _, slug in ipairs(redis.call('SMEMBERS', k('s', sid, 'rooms'))) do
  keep(k('r', slug))
end
return 1
"""

_SOCKET_SET_AWAY = """
local sid, away, now = ARGV[3], ARGV[4], ARGV[5]
local uid = redis.call('HGET', k('s', sid), 'uid')
if not uid then return false end
redis.call('HSET', k('s', sid), 'away', away)
if away == '0' then
  redis.call('HSET', k('u', uid), 'active', now)
  redis.call('ZADD', k('active'), now, uid)
  keep(k('active'))
end
return uid
"""

_ROOM_ENTER = """
local sid, slug, now, announce = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local uid = redis.call('HGET', k('s', sid), 'uid')
if not uid then return false end
redis.call('SADD', k('s', sid, 'rooms'), slug)
redis.call('ZREM', k('gone'), uid .. '|' .. slug)
local added = 0
if announce == '1' or redis.call('SISMEMBER', k('r', slug), uid) == 1 then
  added = redis.call('SADD', k('r', slug), uid)
  redis.call('SADD', k('rooms'), slug)
  redis.call('SADD', k('u', uid, 'rooms'), slug)
end
redis.call('HSET', k('u', uid), 'active', now)
redis.call('ZADD', k('active'), now, uid)
keep(k('s', sid, 'rooms'), k('r', slug), k('u', uid, 'rooms'), k('u', uid), k('active'),
     k('rooms'))
return {added, view(uid)}
"""

_ROOM_EXIT = """
local sid, slug, now, announce = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local uid = redis.call('HGET', k('s', sid), 'uid')
if not uid then return 0 end
if redis.call('SREM', k('s', sid, 'rooms'), slug) == 0 then return 0 end
if holds_room(uid, slug, sid) then return 0 end
if announce ~= '1' then
  -- Listed until the caller settles this departure (or the sweep, after the grace).
  if redis.call('SISMEMBER', k('r', slug), uid) == 1 then
    redis.call('ZADD', k('gone'), now, uid .. '|' .. slug)
    keep(k('gone'))
  end
  return 0
end
redis.call('ZREM', k('gone'), uid .. '|' .. slug)
redis.call('SREM', k('u', uid, 'rooms'), slug)
local removed = redis.call('SREM', k('r', slug), uid)
room_gone(slug)
return removed
"""

_ROOM_ANNOUNCE = """
local uid, slug = ARGV[3], ARGV[4]
if not holds_room(uid, slug, nil) then return 0 end
if redis.call('SADD', k('r', slug), uid) == 0 then return 0 end
redis.call('SADD', k('rooms'), slug)
redis.call('SADD', k('u', uid, 'rooms'), slug)
keep(k('r', slug), k('rooms'), k('u', uid, 'rooms'))
return 1
"""

_USER_GET = """
return view(ARGV[3])
"""

# A room's set holds its present users: those with a socket there and those whose
# last one left less than the grace period ago (until their departure is settled).
_ROOM_USERS = """
local slug = ARGV[3]
local out = {}
for _, uid in ipairs(redis.call('SMEMBERS', k('r', slug))) do
  table.insert(out, view(uid, slug))
end
return out
"""

_ROOM_COUNTS = """
local out = {}
for i = 3, #ARGV do
  table.insert(out, redis.call('SCARD', k('r', ARGV[i])))
end
return out
"""

_STATUS_SWAP = """
local uid, old, new = ARGV[3], ARGV[4], ARGV[5]
if (redis.call('HGET', k('u', uid), 'status') or 'offline') ~= old then return 0 end
redis.call('HSET', k('u', uid), 'status', new)
redis.call('SREM', k('status', old), uid)
if new ~= 'offline' then redis.call('SADD', k('status', new), uid) end
local active = redis.call('HGET', k('u', uid), 'active')
if new == 'online' and active then
  redis.call('ZADD', k('active'), active, uid)
else
  redis.call('ZREM', k('active'), uid)
end
keep(k('u', uid), k('active'), k('status', 'online'), k('status', 'away'))
return 1
"""

_USERS_IDLE = """
local before = ARGV[3]
local uids = redis.call('ZRANGEBYSCORE', k('active'), '-inf', before)
redis.call('ZREMRANGEBYSCORE', k('active'), '-inf', before)
return uids
"""

_DEPARTURE_SETTLE = """
local uid, slug, before = ARGV[3], ARGV[4], tonumber(ARGV[5])
local entry = slug == '' and uid or (uid .. '|' .. slug)
local at = redis.call('ZSCORE', k('gone'), entry)
if not at or tonumber(at) > before then return 0 end
redis.call('ZREM', k('gone'), entry)
if slug == '' then
  return redis.call('SCARD', k('u', uid, 'sockets')) == 0 and 1 or 0
end
if holds_room(uid, slug, nil) then return 0 end
redis.call('SREM', k('u', uid, 'rooms'), slug)
local removed = redis.call('SREM', k('r', slug), uid)
room_gone(slug)
return removed
"""

_TOTALS = """
return {redis.call('SCARD', k('status', 'online')),
        redis.call('SCARD', k('status', 'away')),
        redis.call('ZCARD', k('sockets')), redis.call('SCARD', k('rooms'))}
"""

# The sweep's repair of the totals' sets after keys expired unseen (e.g. a process
# died with no sweeper running): O(users announced + rooms listed), never a scan.
_TOTALS_REPAIR = """
local fixed = 0
for _, status in ipairs({'online', 'away'}) do
  for _, uid in ipairs(redis.call('SMEMBERS', k('status', status))) do
    if redis.call('HGET', k('u', uid), 'status') ~= status then
      fixed = fixed + redis.call('SREM', k('status', status), uid)
    end
  end
end
for _, slug in ipairs(redis.call('SMEMBERS', k('rooms'))) do
  if redis.call('SCARD', k('r', slug)) == 0 then
    fixed = fixed + redis.call('SREM', k('rooms'), slug)
  end
end
return fixed
"""


_PROCESS_MARK = """
local key = k('proc', ARGV[3])
if redis.call('EXPIRE', key, TTL) == 1 then return 1 end
redis.call('SET', key, '1', 'EX', TTL)
return 0
"""


_NO_ROOMS: frozenset = frozenset()


def _user_view(raw, rooms=None):
    # Positional and inline: a room read makes one per member.
    uid, name, active, status, left, socks, held = raw
    return UserPresence(
        int(uid),
        name,
        float(active) if active else None,
        status or OFFLINE,
        float(left) if left else None,
        tuple(
            [
                SocketState(float(socks[i]), socks[i + 1] == "1")
                for i in range(0, len(socks), 2)
            ]
        ),
        frozenset(held) if rooms is None else rooms,
    )


class RedisPresenceStore:
    """Presence in Redis, shared by every server process and the sweeper.

    While Redis is known to be unreachable (voiceflow.breaker) every operation raises
    RedisDown at once, without waiting for a connection.
    """

    def __init__(self, client: PipelinedRedis, prefix: str, ttl: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl
        self._scripts: dict = {}

    async def _command(self, call, *args):
        redis_breaker.check()
        try:
            return await call(*args)
        except UNREACHABLE as error:
            redis_breaker.failed(error)
            raise

    async def _run(self, source, *args):
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(
                _LUA_COMMON + source
            )
        return await self._command(script, (), [self.prefix, self.ttl, *args])

    async def socket_add(
        self, sid: str, user_id: int, username: str, process: str, now: float, cap: int
    ) -> UserPresence | None:
        raw = await self._run(_SOCKET_ADD, sid, user_id, username, process, now, cap)
        return None if raw is None else _user_view(raw)

    async def socket_remove(self, sid: str, now: float) -> SocketRemoval | None:
        raw = await self._run(_SOCKET_REMOVE, sid, now)
        if not raw:
            return None
        uid, name, left, departed = raw
        return SocketRemoval(int(uid), name, tuple(sorted(departed)), int(left))

    async def socket_touch(self, sid: str, now: float, active: bool = False) -> bool:
        return bool(await self._run(_SOCKET_TOUCH, sid, now, int(active)))

    async def socket_set_away(self, sid: str, away: bool, now: float) -> int | None:
        uid = await self._run(_SOCKET_SET_AWAY, sid, int(away), now)
        return int(uid) if uid else None

    async def room_enter(
        self, sid: str, slug: str, now: float, announce: bool = True
    ) -> tuple[bool, UserPresence] | None:
        raw = await self._run(_ROOM_ENTER, sid, slug, now, int(announce))
        return None if raw is None else (bool(raw[0]), _user_view(raw[1]))

    async def room_exit(
        self, sid: str, slug: str, now: float = 0.0, announce: bool = True
    ) -> bool:
        return bool(await self._run(_ROOM_EXIT, sid, slug, now, int(announce)))

    async def room_announce(self, user_id: int, slug: str) -> bool:
        return bool(await self._run(_ROOM_ANNOUNCE, user_id, slug))

    async def user_get(self, user_id: int) -> UserPresence:
        return _user_view(await self._run(_USER_GET, user_id))

    async def room_users(self, slug: str) -> list[tuple[UserPresence, int]]:
        """The room's present users (their `rooms` left empty: a room read needs
        none) and how many of their sockets joined it."""
        rows = await self._run(_ROOM_USERS, slug)
        return [(_user_view(row, _NO_ROOMS), int(row[6])) for row in rows]

    async def room_counts(self, slugs: list[str]) -> dict[str, int]:
        if not slugs:
            return {}
        counts = await self._run(_ROOM_COUNTS, *slugs)
        return dict(zip(slugs, map(int, counts)))

    async def status_swap(self, user_id: int, old: str, new: str) -> bool:
        return bool(await self._run(_STATUS_SWAP, user_id, old, new))

    async def users_idle(self, before: float) -> list[int]:
        return [int(uid) for uid in await self._run(_USERS_IDLE, before)]

    async def sockets_dead(self, before: float) -> list[tuple[str, float]]:
        rows = await self._command(
            self.client.zrangebyscore, f"{self.prefix}:sockets", "-inf", before, True
        )
        return [(sid, float(seen)) for sid, seen in rows]

    async def departures_due(self, before: float) -> list[tuple[int, str | None]]:
        rows = await self._command(
            self.client.zrangebyscore, f"{self.prefix}:gone", "-inf", before
        )
        return [_departure(entry) for entry in rows]

    async def departure_settle(
        self, user_id: int, slug: str | None, before: float
    ) -> bool:
        return bool(await self._run(_DEPARTURE_SETTLE, user_id, slug or "", before))

    async def totals(self) -> dict[str, int]:
        """Users online and away, live sockets, rooms with someone present: O(1)."""
        online, away, sockets, rooms = await self._run(_TOTALS)
        return {
            "online": int(online),
            "away": int(away),
            "sockets": int(sockets),
            "rooms": int(rooms),
        }

    async def totals_repair(self) -> int:
        """Drop from the totals' sets what expired without a script seeing it."""
        return int(await self._run(_TOTALS_REPAIR))

    async def process_mark(self, process: str) -> bool:
        """Renew `process`'s mark; False if it was missing (set again now)."""
        return bool(await self._run(_PROCESS_MARK, process))


@dataclass
class _Socket:
    user_id: int
    username: str
    process: str
    seen_at: float
    away: bool = False
    rooms: set[str] = field(default_factory=set)


@dataclass
class _User:
    username: str = ""
    active_at: float | None = None
    status: str = OFFLINE
    left_at: float | None = None
    sockets: set[str] = field(default_factory=set)
    rooms: set[str] = field(default_factory=set)


class MemoryPresenceStore:
    """The in-memory twin for the embedded single process (same interface, no awaits).

    Nothing expires on its own here: the process sweeps itself, and a restart clears it.
    """

    def __init__(self):
        self.sockets = {}  # sid -> _Socket
        self.users = {}  # uid -> _User
        self.room_sets = {}  # slug -> set of uids present
        self.active = {}  # uid -> last activity (may turn away)
        self.gone = {}  # (uid, slug|None) -> left at

    def _user(self, uid):
        user = self.users.get(uid)
        if user is None:
            user = self.users[uid] = _User()
        return user

    def _holds_room(self, uid, slug, except_sid=None):
        return any(
            slug in self.sockets[s].rooms
            for s in self._user(uid).sockets
            if s != except_sid
        )

    def _connections(self, uid, slug):
        return sum(slug in self.sockets[s].rooms for s in self._user(uid).sockets)

    def _view(self, uid):
        user = self._user(uid)
        return UserPresence(
            user_id=uid,
            username=user.username,
            active_at=user.active_at,
            announced=user.status,
            left_at=user.left_at,
            sockets=tuple(
                SocketState(self.sockets[s].seen_at, self.sockets[s].away)
                for s in user.sockets
            ),
            rooms=frozenset(user.rooms),
        )

    async def socket_add(
        self, sid: str, user_id: int, username: str, process: str, now: float, cap: int
    ) -> UserPresence | None:
        user = self._user(user_id)
        count = len(user.sockets)
        if count >= cap:
            return None
        self.sockets[sid] = _Socket(user_id, username, process, now)
        user.sockets.add(sid)
        user.username = username
        user.left_at = None
        self.gone.pop((user_id, None), None)
        if count == 0 and user.status == OFFLINE:
            user.active_at = self.active[user_id] = now
        return self._view(user_id)

    async def socket_remove(self, sid: str, now: float) -> SocketRemoval | None:
        sock = self.sockets.pop(sid, None)
        if sock is None:
            return None
        user = self._user(sock.user_id)
        user.sockets.discard(sid)
        departed = []
        for slug in sorted(sock.rooms):
            if not self._holds_room(sock.user_id, slug):
                departed.append(slug)
                self.gone[(sock.user_id, slug)] = now
        if not user.sockets:
            user.left_at = self.gone[(sock.user_id, None)] = now
        return SocketRemoval(
            sock.user_id, sock.username, tuple(departed), len(user.sockets)
        )

    async def socket_touch(self, sid: str, now: float, active: bool = False) -> bool:
        sock = self.sockets.get(sid)
        if sock is None:
            return False
        sock.seen_at = now
        if active:
            self._user(sock.user_id).active_at = self.active[sock.user_id] = now
        return True

    async def socket_set_away(self, sid: str, away: bool, now: float) -> int | None:
        sock = self.sockets.get(sid)
        if sock is None:
            return None
        sock.away = away
        if not away:
            self._user(sock.user_id).active_at = self.active[sock.user_id] = now
        return sock.user_id

    async def room_enter(
        self, sid: str, slug: str, now: float, announce: bool = True
    ) -> tuple[bool, UserPresence] | None:
        sock = self.sockets.get(sid)
        if sock is None:
            return None
        uid = sock.user_id
        sock.rooms.add(slug)
        self.gone.pop((uid, slug), None)
        added = False
        if announce or uid in self.room_sets.get(slug, ()):
            added = self._room_add(uid, slug)
        user = self._user(uid)
        user.active_at = self.active[uid] = now
        return added, self._view(uid)

    def _room_add(self, uid, slug):
        present = self.room_sets.setdefault(slug, set())
        added = uid not in present
        present.add(uid)
        self._user(uid).rooms.add(slug)
        return added

    async def room_exit(
        self, sid: str, slug: str, now: float = 0.0, announce: bool = True
    ) -> bool:
        sock = self.sockets.get(sid)
        if sock is None or slug not in sock.rooms:
            return False
        sock.rooms.discard(slug)
        if self._holds_room(sock.user_id, slug):
            return False
        if not announce:
            if sock.user_id in self.room_sets.get(slug, ()):
                self.gone[(sock.user_id, slug)] = now
            return False
        return self._room_drop(sock.user_id, slug)

    async def room_announce(self, user_id: int, slug: str) -> bool:
        if not self._holds_room(user_id, slug):
            return False
        return self._room_add(user_id, slug)

    def _room_drop(self, uid, slug):
        self.gone.pop((uid, slug), None)
        self._user(uid).rooms.discard(slug)
        present = self.room_sets.get(slug, set())
        if uid not in present:
            return False
        present.discard(uid)
        if not present:
            del self.room_sets[slug]
        return True

    async def user_get(self, user_id: int) -> UserPresence:
        return self._view(user_id)

    async def room_users(self, slug: str) -> list[tuple[UserPresence, int]]:
        return [
            (self._view(uid)._replace(rooms=_NO_ROOMS), self._connections(uid, slug))
            for uid in list(self.room_sets.get(slug, ()))
        ]

    async def room_counts(self, slugs: list[str]) -> dict[str, int]:
        return {slug: len(self.room_sets.get(slug, ())) for slug in slugs}

    async def status_swap(self, user_id: int, old: str, new: str) -> bool:
        user = self._user(user_id)
        if user.status != old:
            return False
        user.status = new
        if new == ONLINE and user.active_at is not None:
            self.active[user_id] = user.active_at
        else:
            self.active.pop(user_id, None)
        self._forget_if_gone(user_id)
        return True

    def _forget_if_gone(self, uid):
        user = self.users.get(uid)
        if user and user.status == OFFLINE and not user.sockets and not user.rooms:
            if not any(key[0] == uid for key in self.gone):
                del self.users[uid]  # nothing left to know about them

    async def users_idle(self, before: float) -> list[int]:
        idle = [uid for uid, at in self.active.items() if at <= before]
        for uid in idle:
            del self.active[uid]
        return idle

    async def sockets_dead(self, before: float) -> list[tuple[str, float]]:
        return [
            (sid, s.seen_at) for sid, s in self.sockets.items() if s.seen_at <= before
        ]

    async def departures_due(self, before: float) -> list[tuple[int, str | None]]:
        return [key for key, at in self.gone.items() if at <= before]

    async def departure_settle(
        self, user_id: int, slug: str | None, before: float
    ) -> bool:
        at = self.gone.get((user_id, slug))
        if at is None or at > before:
            return False
        del self.gone[(user_id, slug)]
        if slug is None:
            return not self._user(user_id).sockets
        if self._holds_room(user_id, slug):
            return False
        dropped = self._room_drop(user_id, slug)
        self._forget_if_gone(user_id)
        return dropped

    def sizes(self) -> dict[str, int]:
        """How many entries each of its indexes holds (for /health)."""
        return {
            "presenceSockets": len(self.sockets),
            "presenceUsers": len(self.users),
            "presenceRooms": len(self.room_sets),
            "presenceActive": len(self.active),
            "presenceGone": len(self.gone),
        }

    async def totals(self) -> dict[str, int]:
        statuses = [u.status for u in self.users.values()]
        return {
            "online": statuses.count(ONLINE),
            "away": statuses.count("away"),
            "sockets": len(self.sockets),
            "rooms": len(self.room_sets),
        }

    async def totals_repair(self) -> int:
        return 0  # nothing here expires on its own

    async def process_mark(self, process: str) -> bool:
        return True  # this store lives and dies with the process


_memory = MemoryPresenceStore()


class _RedisStoreSlot:
    """The process's RedisPresenceStore (its Runtime's app state), on its client."""

    store: RedisPresenceStore | None = None


def memory_store_reset() -> None:
    """Forget everything in the in-memory store (tests)."""
    global _memory
    _memory = MemoryPresenceStore()


def presence_store() -> RedisPresenceStore | MemoryPresenceStore:
    """The store: Redis with REDIS_URL, else this process's memory (embedded)."""
    if not settings.REDIS_URL:
        return _memory
    prefix = redis_key("presence")
    current = runtime()
    slot = current.app_state(_RedisStoreSlot)
    store = slot.store
    if store is None or store.prefix != prefix:
        ttl = settings.VOICEFLOW["PRESENCE_KEY_TTL"]
        store = slot.store = RedisPresenceStore(current.redis(), prefix, ttl)
    return store
