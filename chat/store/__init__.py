"""The hot path's storage: one interface, one implementation per database backend.

The socket path's statements (a post's insert, a join, the user and token lookups of
a connect, the offline mark, the pongs' last seqs) and the room counters that every
write of a message takes go through a MessageStore. ChatConfig.ready() chooses it
once, for the database's vendor: on PostgreSQL `postgres.PostgresStore` (the raw SQL
of `sql`, on the event loop's connections, posts in group commits), elsewhere
`orm.OrmStore` (the ORM, on voiceflow.runtime.db's threads). Both answer every call
alike (chat/tests/test_store.py). The domain rules (validation, refusals and their
reasons, mentions, events) stay in chat.services.
"""

from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol

from chat.models import Room


class Post(NamedTuple):
    """A message to insert."""

    room_id: int
    user_id: int
    body: str
    client_id: str | None
    created_at: datetime
    private: bool  # the room is not public: only a member may post in it


class Taken(NamedTuple):
    """A room counter's new value, with what a write checks alongside."""

    value: int
    is_locked: bool
    mute_id: int | None  # the user's current mute (the longest), if any


Counter = Literal["last_seq", "last_change"]


class MessageStore(Protocol):
    async def message_insert(self, post: Post) -> tuple[int, int] | None:
        """(id, seq) of `post`, stored with its room's next seq and committed.

        None if it was not stored: the room is locked or gone, the poster is muted
        or (a private room) not a member, or the poster stored this client_id
        already (a replay). Posts to one room are numbered in call order.
        """
        ...

    async def room_join(self, *, user: Any, slug: str) -> tuple[Room, bool]:
        """(the room with this slug, whether `user` just became a member).

        NotFound for an unknown slug or a room `user` may not see (chat.access).
        """
        ...

    async def user_active(self, user_id: int) -> Any:
        """The active user with this id, or None; `has_offline_mark` says whether
        they have an offline queue waiting."""
        ...

    async def token_user(self, key: str) -> Any:
        """The active user of this API token, or None (as DRF's TokenAuthentication
        decides)."""
        ...

    async def offline_mark_exists(self, user_id: int) -> bool:
        """True if the user has an offline mark (without taking it)."""
        ...

    async def room_last_seqs(self, slugs: list[str]) -> dict[str, int]:
        """{slug: last_seq} of the rooms with these slugs."""
        ...

    def room_counter_take(
        self, *, room_id: int, counter: Counter, count: int, user_id: int, now: datetime
    ) -> Taken | None:
        """Add `count` to the room's `counter` in the caller's transaction (on its
        thread); None if the room is gone.

        The room's row stays locked to the commit, so what takes numbers from one
        room's counter commits in their order.
        """
        ...


_store: MessageStore | None = None


def store_select(vendor: str) -> MessageStore:
    """Make the store for a database of this vendor this process's (at startup)."""
    global _store
    if vendor == "postgresql":
        from .postgres import PostgresStore

        _store = PostgresStore()
    else:
        from .orm import OrmStore

        _store = OrmStore()
    return _store


def message_store() -> MessageStore:
    """This process's store, chosen at startup (ChatConfig.ready())."""
    if _store is None:
        raise RuntimeError("No message store: chat's AppConfig is not ready.")
    return _store
