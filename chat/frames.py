"""Inbound socket frames: one declared schema per type, decoded or refused.

Each frame type is a `msgspec.Struct` tagged by its `"type"`. A frame is decoded
straight into its Struct (msgspec, in C); whatever that refuses, or cannot vouch for,
is decoded again the checked way (orjson, then each field in order) for the refusal's
exact reply, so both ways accept the same frames and a refusal names the first bad
field as the protocol's replies do.
"""

from collections.abc import Callable
from functools import cache
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

import msgspec
import orjson
from django.conf import settings

from .errors import Invalid
from .services import clean_body, clean_client_id, clean_message_id
from .validators import json_too_deep

Slug = Annotated[str, msgspec.Meta(min_length=1)]
Seq = Annotated[int, msgspec.Meta(ge=0)]

# A field's reply when its value is missing or of the wrong kind; fields with a
# service's rule (`Frame.cleaners`) reply with that rule's.
REFUSALS = {
    "room": "room is required.",
    "since": "since must be a non-negative integer.",
    "changes_since": "changes_since must be a non-negative integer.",
    "seq": "seq must be a non-negative integer.",
    "state": "state must be 'start' or 'stop'.",
    "status": "status must be 'online' or 'away'.",
    "ts": "ts is required and must be a number.",
}


# Fields a frame type does not have are left to the checked way, which reads them
# too: orjson refuses numbers out of a float's range wherever they are.
class Frame(
    msgspec.Struct, tag_field="type", kw_only=True, forbid_unknown_fields=True, gc=False
):
    """A client's frame; `client_id`, whatever it holds, only names it in `ref`."""

    client_id: Any = None
    # Fields checked by a service's rule, in order: (name, rule returning the value).
    cleaners: ClassVar[tuple[tuple[str, Callable[[Any], Any]], ...]] = ()
    # Acts in a room the socket joined: not joined is refused before its fields.
    in_joined_room: ClassVar[bool] = False

    @property
    def kind(self) -> str:
        """The frame's `type`."""
        return self.__struct_config__.tag  # type: ignore[return-value]

    @property
    def ref(self) -> str | None:
        """Its client_id for an error's `ref`, if that is a string of at most 64."""
        return _ref(self.client_id)

    @property
    def active(self) -> bool:
        """Whether it is user activity for presence (a message, a typing start)."""
        return False


class Join(Frame, tag="join"):
    """Join a room; `since`, `changes_since`: what the socket has, to catch up."""

    room: Slug
    since: Seq | None = None
    changes_since: Seq | None = None

    def __post_init__(self) -> None:
        _orjson_ints(self.since, self.changes_since)


class Leave(Frame, tag="leave"):
    """Leave a room."""

    room: Slug


class Message(Frame, tag="message"):
    """Post a message; a `client_id` makes its resend idempotent."""

    room: Slug
    body: str
    # client_id: a string of 1–64 characters, or absent or null (its cleaner's rule).
    cleaners = (("body", clean_body), ("client_id", clean_client_id))
    in_joined_room = True

    @property
    def active(self) -> bool:
        return True


class Typing(Frame, tag="typing"):
    """Typing started or stopped in a room."""

    room: Slug
    state: Literal["start", "stop"]
    in_joined_room = True

    @property
    def active(self) -> bool:
        return self.state == "start"


class Delete(Frame, tag="delete"):
    """Delete a message."""

    room: Slug
    id: int
    cleaners = (("id", clean_message_id),)
    in_joined_room = True

    def __post_init__(self) -> None:
        _orjson_ints(self.id)


class Edit(Frame, tag="edit"):
    """Replace a message's body."""

    room: Slug
    id: int
    body: str
    cleaners = (("id", clean_message_id), ("body", clean_body))
    in_joined_room = True

    def __post_init__(self) -> None:
        _orjson_ints(self.id)


class Read(Frame, tag="read"):
    """Mark a room read up to `seq`."""

    room: Slug
    seq: Seq

    def __post_init__(self) -> None:
        _orjson_ints(self.seq)


class Ping(Frame, tag="ping"):
    """Heartbeat; `ts` comes back in the pong."""

    ts: int | float

    def __post_init__(self) -> None:
        _orjson_ints(self.ts)


class Status(Frame, tag="status"):
    """Set this socket's status."""

    status: Literal["online", "away"]


TYPES: dict[str, type[Frame]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (Join, Leave, Message, Typing, Delete, Edit, Read, Ping, Status)
}
_decoder = msgspec.json.Decoder(
    Join | Leave | Message | Typing | Delete | Edit | Read | Ping | Status
)


class Refusal(NamedTuple):
    """A frame refused: its error and the reply's `request` and `ref`."""

    error: Invalid
    request: str | None = None
    ref: str | None = None
    # A JSON object: counted among the frames received, by its type.
    counted: bool = False
    # Within the nesting bound: presence hears of it like any frame (`active`).
    heard: bool = False
    active: bool = False
    # The room of a frame that needs it joined: checked before the bad field.
    room: str | None = None


def frame_too_large(data: str | bytes) -> bool:
    """Whether a frame is over MAX_FRAME_BYTES (the socket closes with 1009)."""
    limit = settings.VOICEFLOW["MAX_FRAME_BYTES"]
    if isinstance(data, bytes):
        return len(data) > limit
    # surrogatepass: a str from a test harness may hold lone surrogates; never crash.
    return len(data) * 4 > limit and len(data.encode("utf-8", "surrogatepass")) > limit


def binary_refusal() -> Refusal:
    """A binary frame's refusal: frames are JSON text."""
    return Refusal(Invalid("Frames must be JSON text."))


def frame_decode(text: str) -> Frame | Refusal:
    """The frame `text` holds, typed and checked, or its Refusal."""
    # Fewer brackets than the nesting bound cannot nest past it, wherever they are.
    if text.count("{") + text.count("[") <= settings.VOICEFLOW["MAX_JSON_DEPTH"]:
        try:
            frame = _decoder.decode(text)
        except Exception:
            pass  # refused, or not for sure: the checked way decides and says why
        else:
            try:
                for name, rule in frame.cleaners:
                    setattr(frame, name, rule(getattr(frame, name)))
            except Invalid as error:  # every field has its type: this is the first
                room = getattr(frame, "room", None)
                return _field_refusal(
                    type(frame), error, frame.kind, frame.ref, frame.active, room
                )
            return frame
    return _frame_decode_checked(text)


def _frame_decode_checked(text: str) -> Frame | Refusal:
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError:
        return Refusal(Invalid("Frame is not valid JSON."))
    if not isinstance(raw, dict):
        return Refusal(Invalid("Frame is not a JSON object."))
    kind = raw.get("type")
    request = kind if isinstance(kind, str) and len(kind) <= 64 else None
    ref = _ref(raw.get("client_id"))
    if json_too_deep(raw, settings.VOICEFLOW["MAX_JSON_DEPTH"]):
        return Refusal(Invalid("Frame is nested too deeply."), request, ref, True)
    active = kind == "message" or (kind == "typing" and raw.get("state") == "start")
    cls = TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        detail = f"Unknown frame type {request!r}." if request else "No frame type."
        return Refusal(Invalid(detail), request, ref, True, True, active)
    try:
        return _fields_checked(cls, raw)
    except Invalid as error:
        return _field_refusal(cls, error, request, ref, active, raw.get("room"))


def _field_refusal(cls, error, request, ref, active, room):
    """A frame of a known type refused for a field: its room is checked first."""
    if not cls.in_joined_room or error.field == "room" or not isinstance(room, str):
        room = None
    return Refusal(error, request, ref, True, True, active, room or None)


def _fields_checked(cls: type[Frame], raw: dict) -> Frame:
    """`cls` from a decoded object, each field checked in turn; else Invalid."""
    values = {}
    for name, required, rule, field_type in _checks(cls):
        if rule is not None:
            values[name] = rule(raw.get(name))
            continue
        value = raw.get(name, msgspec.NODEFAULT)
        if value is msgspec.NODEFAULT:
            if required:
                raise Invalid(REFUSALS[name], field=name)
            continue
        try:
            values[name] = msgspec.convert(value, field_type)
        except msgspec.ValidationError:
            raise Invalid(REFUSALS[name], field=name) from None
    return cls(**values)


@cache
def _checks(cls: type[Frame]) -> list[tuple[str, bool, Callable | None, Any]]:
    """(name, required, its cleaner or None, its type) of each field, in check order."""
    cleaners = dict(cls.cleaners)
    # client_id, which every frame has, is checked last (a message's after its body).
    fields = sorted(msgspec.structs.fields(cls), key=lambda f: f.name == "client_id")
    return [(f.name, f.required, cleaners.get(f.name), f.type) for f in fields]


def _orjson_ints(*values: object) -> None:
    """Refuse integers past 64 bits: orjson reads them as floats (the checked way)."""
    for value in values:
        if type(value) is int and not -(2**63) <= value < 2**64:
            raise ValueError("an integer past 64 bits")


def _ref(client_id: object) -> str | None:
    return client_id if isinstance(client_id, str) and len(client_id) <= 64 else None
