"""Inbound frames (chat.frames): each frame type's schema, and each kind of bad input
refused with the protocol's reply, whichever way the frame was decoded."""

import json

import hypothesis
import pytest
from asgiref.sync import sync_to_async
from hypothesis import strategies as st

from chat import frames
from chat.models import Message
from chat.tests.test_consumers import json_values, signed_in


def decode(frame):
    return frames.frame_decode(frame if isinstance(frame, str) else json.dumps(frame))


def reply(outcome):
    """A refusal as the error frame's fields (code, detail, request, ref)."""
    assert isinstance(outcome, frames.Refusal), outcome
    error = outcome.error
    return (error.code, error.detail, outcome.request, outcome.ref)


@pytest.mark.parametrize(
    "frame,expected",
    [
        (
            {"type": "message", "room": "lobby", "body": "  hi  ", "client_id": "c-1"},
            frames.Message(room="lobby", body="hi", client_id="c-1"),
        ),
        (
            {"type": "message", "room": "lobby", "body": "hi", "client_id": None},
            frames.Message(room="lobby", body="hi"),
        ),
        ({"type": "ping", "ts": 1767268800000}, frames.Ping(ts=1767268800000)),
        ({"type": "ping", "ts": 1.5}, frames.Ping(ts=1.5)),
        (
            {"type": "typing", "room": "lobby", "state": "stop"},
            frames.Typing(room="lobby", state="stop"),
        ),
        ({"type": "join", "room": "lobby"}, frames.Join(room="lobby")),
        (
            {"type": "join", "room": "lobby", "since": 0, "changes_since": None},
            frames.Join(room="lobby", since=0),
        ),
        ({"type": "leave", "room": "x"}, frames.Leave(room="x")),
        ({"type": "status", "status": "away"}, frames.Status(status="away")),
        ({"type": "delete", "room": "r", "id": 7}, frames.Delete(room="r", id=7)),
        (
            {"type": "edit", "room": "r", "id": 7, "body": " new "},
            frames.Edit(room="r", id=7, body="new"),
        ),
        ({"type": "read", "room": "r", "seq": 0}, frames.Read(room="r", seq=0)),
        # Fields no frame has are ignored; a client_id names any frame in `ref`.
        (
            {"type": "ping", "ts": 1, "pad": [[1]], "client_id": "p-1"},
            frames.Ping(ts=1, client_id="p-1"),
        ),
    ],
)
def test_each_frame_type_decodes_to_its_typed_frame(frame, expected):
    decoded = decode(frame)
    assert decoded == expected
    assert decoded.kind == frame["type"]
    if "ts" in frame:  # an integer stays one: the pong echoes it as sent
        assert type(decoded.ts) is type(frame["ts"])


INVALID = "invalid"
BAD_FRAMES = [
    # Not a frame at all: no request, no ref.
    ("not JSON", "{nope", "Frame is not valid JSON.", None, None),
    ("cut short", '{"type": "ping", "ts": 1', "Frame is not valid JSON.", None, None),
    (
        "two values",
        '{"type": "ping", "ts": 1} {}',
        "Frame is not valid JSON.",
        None,
        None,
    ),
    ("empty", "", "Frame is not valid JSON.", None, None),
    (
        "lone surrogate",
        '{"type": "ping", "ts": 1, "x": "\\ud800"}',
        "Frame is not valid JSON.",
        None,
        None,
    ),
    ("an array", "[1, 2]", "Frame is not a JSON object.", None, None),
    ("a string", '"join"', "Frame is not a JSON object.", None, None),
    ("null", "null", "Frame is not a JSON object.", None, None),
    # An object: named by its type and client_id where they are fit to echo.
    (
        "nested too deeply",
        {"type": "ping", "ts": 1, "x": [[[[[[[[1]]]]]]]]},
        "Frame is nested too deeply.",
        "ping",
        None,
    ),
    (
        "unknown type",
        {"type": "dance", "client_id": "c-9"},
        "Unknown frame type 'dance'.",
        "dance",
        "c-9",
    ),
    ("no type", {"room": "lobby"}, "No frame type.", None, None),
    ("a type not a string", {"type": 5}, "No frame type.", None, None),
    (
        "an overlong type",
        {"type": "t" * 65, "client_id": "c" * 65},
        "No frame type.",
        None,
        None,
    ),
    ("room missing", {"type": "join"}, "room is required.", "join", None),
    ("room empty", {"type": "leave", "room": ""}, "room is required.", "leave", None),
    (
        "room not a string",
        {"type": "read", "room": 5, "seq": 1},
        "room is required.",
        "read",
        None,
    ),
    (
        "since negative",
        {"type": "join", "room": "r", "since": -1},
        "since must be a non-negative integer.",
        "join",
        None,
    ),
    (
        "since a boolean",
        {"type": "join", "room": "r", "since": True},
        "since must be a non-negative integer.",
        "join",
        None,
    ),
    (
        "since a float",
        {"type": "join", "room": "r", "since": 1.0},
        "since must be a non-negative integer.",
        "join",
        None,
    ),
    (
        "changes_since a string",
        {"type": "join", "room": "r", "changes_since": "1"},
        "changes_since must be a non-negative integer.",
        "join",
        None,
    ),
    (
        "seq missing",
        {"type": "read", "room": "r"},
        "seq must be a non-negative integer.",
        "read",
        None,
    ),
    (
        "seq null",
        {"type": "read", "room": "r", "seq": None},
        "seq must be a non-negative integer.",
        "read",
        None,
    ),
    (
        "state unknown",
        {"type": "typing", "room": "r", "state": "paused"},
        "state must be 'start' or 'stop'.",
        "typing",
        None,
    ),
    (
        "status unknown",
        {"type": "status", "status": "busy"},
        "status must be 'online' or 'away'.",
        "status",
        None,
    ),
    (
        "ts missing",
        {"type": "ping"},
        "ts is required and must be a number.",
        "ping",
        None,
    ),
    (
        "ts null",
        {"type": "ping", "ts": None},
        "ts is required and must be a number.",
        "ping",
        None,
    ),
    (
        "ts a boolean",
        {"type": "ping", "ts": False},
        "ts is required and must be a number.",
        "ping",
        None,
    ),
    (
        "ts a string",
        {"type": "ping", "ts": "1"},
        "ts is required and must be a number.",
        "ping",
        None,
    ),
    (
        "id a boolean",
        {"type": "delete", "room": "r", "id": True},
        "id must be an integer.",
        "delete",
        None,
    ),
    (
        "id missing",
        {"type": "edit", "room": "r", "body": "b"},
        "id must be an integer.",
        "edit",
        None,
    ),
    (
        "body missing",
        {"type": "message", "room": "r", "client_id": "c-1"},
        "body must be a string.",
        "message",
        "c-1",
    ),
    (
        "body null",
        {"type": "message", "room": "r", "body": None},
        "body must be a string.",
        "message",
        None,
    ),
    (
        "body blank",
        {"type": "message", "room": "r", "body": "   ", "client_id": "c-1"},
        "body is empty.",
        "message",
        "c-1",
    ),
    (
        "body too long",
        {"type": "message", "room": "r", "body": "x" * 4001},
        "body is longer than 4000 characters.",
        "message",
        None,
    ),
    (
        "body with NUL",
        {"type": "edit", "room": "r", "id": 1, "body": "a\x00b"},
        "body contains control characters.",
        "edit",
        None,
    ),
    (
        "client_id empty",
        {"type": "message", "room": "r", "body": "b", "client_id": ""},
        "client_id must be a string of 1–64 characters.",
        "message",
        "",
    ),
    (
        "client_id too long",
        {"type": "message", "room": "r", "body": "b", "client_id": "c" * 65},
        "client_id must be a string of 1–64 characters.",
        "message",
        None,
    ),
    (
        "client_id a number",
        {"type": "message", "room": "r", "body": "b", "client_id": 5},
        "client_id must be a string of 1–64 characters.",
        "message",
        None,
    ),
    (
        "client_id with a control character",
        {"type": "message", "room": "r", "body": "b", "client_id": "c\x01"},
        "client_id contains control characters.",
        "message",
        "c\x01",
    ),
]


@pytest.mark.parametrize(
    "name,frame,detail,request_type,ref", BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES]
)
def test_each_kind_of_bad_frame_is_refused_with_its_reply(
    name, frame, detail, request_type, ref
):
    assert reply(decode(frame)) == (INVALID, detail, request_type, ref)


def test_a_binary_frame_is_refused():
    assert reply(frames.binary_refusal()) == (
        INVALID,
        "Frames must be JSON text.",
        None,
        None,
    )


def test_the_first_bad_field_is_reported_in_the_schemas_order_not_the_texts():
    text = '{"client_id": 5, "body": "", "type": "message", "room": "r"}'
    assert reply(frames.frame_decode(text))[1] == "body is empty."
    text = '{"since": -1, "room": 7, "type": "join"}'
    assert reply(frames.frame_decode(text))[1] == "room is required."
    text = '{"body": 1, "id": "x", "type": "edit", "room": "r"}'
    assert reply(frames.frame_decode(text))[1] == "id must be an integer."


def test_a_bad_field_of_a_frame_into_a_room_names_the_room_to_check_first():
    # The consumer refuses a room the socket has not joined before a bad field.
    assert decode({"type": "message", "room": "r", "body": ""}).room == "r"
    assert decode({"type": "typing", "room": "r", "state": "?"}).room == "r"
    assert decode({"type": "delete", "room": "r", "id": None}).room == "r"
    assert decode({"type": "message", "room": "", "body": ""}).room is None
    assert decode({"type": "join", "room": "r", "since": -1}).room is None
    assert decode({"type": "read", "room": "r"}).room is None


@pytest.mark.parametrize(
    "frame,counted,heard,active",
    [
        ("[]", False, False, False),
        ({"type": "ping", "x": [[[[[[[[1]]]]]]]]}, True, False, False),
        ({"type": "dance"}, True, True, False),
        ({"type": "typing", "room": "", "state": "start"}, True, True, True),
        ({"type": "typing", "room": "", "state": "stop"}, True, True, False),
        ({"type": "message", "room": "r"}, True, True, True),
    ],
)
def test_a_refused_object_still_counts_for_presence_as_a_frame(
    frame, counted, heard, active
):
    refusal = decode(frame)
    assert (refusal.counted, refusal.heard, refusal.active) == (counted, heard, active)


def test_activity_of_decoded_frames():
    assert decode({"type": "message", "room": "r", "body": "b"}).active
    assert decode({"type": "typing", "room": "r", "state": "start"}).active
    assert not decode({"type": "typing", "room": "r", "state": "stop"}).active
    assert not decode({"type": "ping", "ts": 1}).active


def test_the_depth_bound_follows_the_setting(settings):
    frame = {"type": "ping", "ts": 1, "x": [[1]]}  # the frame, then two levels
    settings.VOICEFLOW = {**settings.VOICEFLOW, "MAX_JSON_DEPTH": 3}
    assert decode(frame) == frames.Ping(ts=1)
    settings.VOICEFLOW = {**settings.VOICEFLOW, "MAX_JSON_DEPTH": 2}
    assert reply(decode(frame))[1] == "Frame is nested too deeply."


def test_brackets_inside_strings_are_not_nesting():
    body = "[" * 20 + "{" * 20
    frame = decode({"type": "message", "room": "r", "body": body})
    assert frame == frames.Message(room="r", body=body)


def test_frames_over_the_byte_limit_are_too_large():
    limit = 65536
    assert not frames.frame_too_large("x" * limit)
    assert frames.frame_too_large("x" * (limit + 1))
    assert not frames.frame_too_large("é" * (limit // 2))  # two bytes each
    assert frames.frame_too_large("é" * (limit // 2) + "x")
    assert frames.frame_too_large(b"x" * (limit + 1))
    assert not frames.frame_too_large("\ud800" * 100)  # never crashes


# Both ways of decoding (msgspec straight to the Struct; orjson, then field by field)
# must agree on every text: the first is only a faster way to the second's answer.

values = json_values | st.sampled_from(["", " x ", "lobby", "start", "away", "\x00"])
field_names = st.sampled_from(
    ["type", "room", "body", "client_id", "since", "changes_since", "id", "seq"]
    + ["ts", "state", "status", "pad"]
)
frame_types = st.sampled_from(sorted(frames.TYPES) + ["dance"])


@st.composite
def frame_texts(draw):
    frame = {"type": draw(frame_types | values)}
    for name in draw(st.lists(field_names, max_size=5, unique=True)):
        frame[name] = draw(values)
    items = draw(st.permutations(list(frame.items())))
    text = json.dumps(dict(items), ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):  # a duplicated key, or a stray character
        cut = draw(st.integers(0, len(text)))
        extra = draw(st.sampled_from(['"type": "ping", ', "{", "]", "\\", '"\\ud800"']))
        text = text[:cut] + extra + text[cut:]
    return text


def outcome(decoded):
    if isinstance(decoded, frames.Refusal):
        return decoded._replace(error=(decoded.error.code, decoded.error.detail))
    return (type(decoded), {k: (type(v), v) for k, v in msgspec_items(decoded)})


def msgspec_items(frame):
    return [(name, getattr(frame, name)) for name in frame.__struct_fields__]


@hypothesis.settings(max_examples=3000, deadline=None)
@hypothesis.given(text=frame_texts() | st.text(max_size=30))
def test_both_ways_of_decoding_agree(text):
    assert outcome(frames.frame_decode(text)) == outcome(
        frames._frame_decode_checked(text)
    )


# Through a socket


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "frame",
    [
        {"type": "message", "room": "lobby", "body": "", "client_id": "c-1"},
        {"type": "typing", "room": "lobby", "state": "later", "client_id": "c-1"},
        {"type": "edit", "room": "lobby", "id": "x", "body": "b", "client_id": "c-1"},
    ],
)
async def test_a_bad_frame_into_a_room_not_joined_is_refused_for_the_room(
    alice, lobby, frame
):
    socket = await signed_in(alice)
    await socket.send_json_to(frame)
    error = await socket.receive_json_from()
    assert (error["code"], error["request"], error["ref"]) == (
        "forbidden",
        frame["type"],
        "c-1",
    )
    await socket.send_json_to({**frame, "room": "nowhere"})
    assert (await socket.receive_json_from())["code"] == "not_found"
    await socket.send_json_to({"type": "join", "room": "lobby"})
    assert (await socket.receive_json_from())["type"] == "joined"
    await socket.send_json_to(frame)  # joined: now the field is what is wrong
    assert (await socket.receive_json_from())["code"] == "invalid"
    assert not await sync_to_async(Message.objects.exists)()
    await socket.disconnect()
