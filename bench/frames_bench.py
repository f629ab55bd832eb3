"""Decoding and checking inbound socket frames (a benchmark, not a test), one process.

    .venv/bin/python bench/frames_bench.py [--number 100000] [--check 200000]

`chat.frames.frame_decode` against the consumer's former way, kept here as `ladder`:
orjson, the envelope checks, the depth walk, then each field by hand (and the
message rules the service applied). Prints µs per frame, best of five runs, for the
common frames and a few refused ones; "+ service" adds the message rules the service
applies again to a decoded message. `--check N` also decodes N random frames both
ways and prints every frame whose outcome differs (reply or values).
"""

import argparse
import json
import os
import random
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceflow.settings")
os.environ.setdefault("SECRET_KEY", "benchmark-only")

import django  # noqa: E402

django.setup()

import orjson  # noqa: E402
from django.conf import settings  # noqa: E402

from chat import frames  # noqa: E402
from chat.errors import Invalid  # noqa: E402
from chat.services import clean_body, clean_client_id, clean_message_id  # noqa: E402
from chat.validators import json_too_deep  # noqa: E402

COMMON = {
    "message": orjson.dumps(
        {
            "type": "message",
            "room": "lobby",
            "body": "Hello there, are we still on for tomorrow?",
            "client_id": "c-6f1d2a9e-0001",
        }
    ).decode(),
    "ping": '{"type":"ping","ts":1767268800000}',
    "typing": '{"type":"typing","room":"lobby","state":"start"}',
    "join": '{"type":"join","room":"lobby","since":42}',
}
REFUSED = {
    "not JSON": "{nope",
    "unknown type": '{"type":"dance"}',
    "empty body": '{"type":"message","room":"lobby","body":" ","client_id":"c-1"}',
    "bad ts": '{"type":"ping","ts":"soon"}',
}
IN_JOINED_ROOM = {"message", "typing", "delete", "edit"}


class Refused(Exception):
    pass


def _room(frame):
    slug = frame.get("room")
    if not isinstance(slug, str) or not slug:
        raise Invalid("room is required.", field="room")
    return slug


def _seq(frame, name, required=False):
    value = frame.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Invalid(f"{name} must be a non-negative integer.", field=name)
    return value


def _fields(kind, frame, joined):
    """The handlers' checks, in their order; `joined` notes where the room's was."""
    if kind == "join":
        return {
            "room": _room(frame),
            "since": _seq(frame, "since"),
            "changes_since": _seq(frame, "changes_since"),
        }
    if kind == "leave":
        return {"room": _room(frame)}
    if kind == "read":
        return {"room": _room(frame), "seq": _seq(frame, "seq", required=True)}
    if kind == "ping":
        ts = frame.get("ts")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise Invalid("ts is required and must be a number.", field="ts")
        return {"ts": ts}
    if kind == "status":
        if frame.get("status") not in ("online", "away"):
            raise Invalid("status must be 'online' or 'away'.", field="status")
        return {"status": frame["status"]}
    room = _room(frame)
    joined.append(room)  # the handler checked the room was joined here
    if kind == "message":
        body = clean_body(frame.get("body"))
        client_id = clean_client_id(frame.get("client_id"))
        return {"room": room, "body": body, "client_id": client_id}
    if kind == "typing":
        if frame.get("state") not in ("start", "stop"):
            raise Invalid("state must be 'start' or 'stop'.", field="state")
        return {"room": room, "state": frame["state"]}
    if kind == "delete":
        return {"room": room, "id": clean_message_id(frame.get("id"))}
    return {  # edit
        "room": room,
        "id": clean_message_id(frame.get("id")),
        "body": clean_body(frame.get("body")),
    }


def ladder(text):
    """The former way: ("frame", kind, values, ref) or ("refused", ...)."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        return ("refused", "Frame is not valid JSON.", None, None, False, False, None)
    if not isinstance(frame, dict):
        return (
            "refused",
            "Frame is not a JSON object.",
            None,
            None,
            False,
            False,
            None,
        )
    kind = frame.get("type")
    client_id = frame.get("client_id")
    ref = client_id if isinstance(client_id, str) and len(client_id) <= 64 else None
    request = kind if isinstance(kind, str) and len(kind) <= 64 else None
    if json_too_deep(frame, settings.VOICEFLOW["MAX_JSON_DEPTH"]):
        return (
            "refused",
            "Frame is nested too deeply.",
            request,
            ref,
            False,
            False,
            None,
        )
    active = kind == "message" or (kind == "typing" and frame.get("state") == "start")
    known = ("join", "leave", "message", "typing", "ping", "status", "delete", "edit")
    if not isinstance(kind, str) or kind not in (*known, "read"):
        detail = f"Unknown frame type {request!r}." if request else "No frame type."
        return ("refused", detail, request, ref, True, active, None)
    joined = []
    try:
        values = _fields(kind, frame, joined)
    except Invalid as error:
        room = joined[0] if joined else None
        return ("refused", error.detail, request, ref, True, active, room)
    return ("frame", kind, values, ref, True, active)


def decoded(text):
    """chat.frames' outcome, in the ladder's terms."""
    frame = frames.frame_decode(text)
    if isinstance(frame, frames.Refusal):
        return (
            "refused",
            frame.error.detail,
            frame.request,
            frame.ref,
            frame.heard,
            frame.active,
            frame.room,
        )
    values = {
        name: getattr(frame, name)
        for name in frame.__struct_fields__
        if name != "client_id" or frame.kind == "message"
    }
    return ("frame", frame.kind, values, frame.ref, True, frame.active)


def typed(outcome):
    """An outcome with each value's type, so 1 and 1.0 differ."""
    if outcome[0] != "frame":
        return outcome
    values = {k: (type(v).__name__, v) for k, v in outcome[2].items()}
    return (*outcome[:2], values, *outcome[3:])


def per_frame_us(fn, text, number):
    best = min(timeit.repeat(lambda: fn(text), number=number, repeat=5))
    return best / number * 1e6


def service_rules(text):
    frame = frames.frame_decode(text)
    clean_body(frame.body)
    clean_client_id(frame.client_id)


VALUES = [
    None,
    True,
    False,
    0,
    -1,
    7,
    2**63,
    -(2**63) - 1,
    2**64,
    2**70,
    1.5,
    1.0,
    -0.0,
    1e300,
    "",
    " ",
    "lobby",
    "No Such!",
    "start",
    "stop",
    "online",
    "away",
    "x" * 65,
    "c" * 64,
    "a\x00b",
    "tab\there",
    "\u200b",
    "é",
    "x" * 4001,
    "  padded  ",
    [],
    [1, [2, [3]]],
    {},
    {"a": {"b": 1}},
]
FIELDS = ["room", "body", "client_id", "since", "changes_since", "id", "seq"]
FIELDS += ["ts", "state", "status", "extra"]
TYPES = ["join", "leave", "message", "typing", "ping", "status", "delete", "edit"]
TYPES += ["read", "dance", "", None, 5, ["message"]]
RAW = [
    '{"type":"ping","ts":1e400}',
    '{"type":"ping","ts":-0}',
    '{"type":"ping","ts":1E2}',
    '{"type":"ping","ts":01}',
    '{"type":"ping","ts":NaN}',
    '{"type":"ping","ts":Infinity}',
    '{"type":"ping","ts":1,"type":"join","room":"lobby"}',
    '{"type":"join","room":"lobby","type":"ping","ts":1}',
    '{"type":"join","room":"a","room":"b"}',
    '{"type":"join","room":"a","room":5}',
    '{"type":"join","room":5,"room":"a"}',
    '{"type":"ping","ts":1,"x":"\\ud800"}',
    '{"type":"ping","ts":1,"x":"\\udc00\\ud800"}',
    '{"type":"message","room":"lobby","body":"\\ud83d\\ude00","client_id":"c"}',
    '{"type":"message","room":"lobby","body":"\\ud83d","client_id":"c"}',
    '{"type":"ping","ts":1,"x":"\\x"}',
    '{"type":"ping","ts":1,"x":"a\tb"}',
    '{"type":"ping","ts":1,"x":"a\x00b"}',
    '\ufeff{"type":"ping","ts":1}',
    ' {"type":"ping","ts":1} ',
    '{"type":"ping","ts":1} x',
    '{"type":"ping","ts":1}{}',
    '{"type":"ping","ts":1,}',
    '{"type":"ping","ts":1',
    '{"type":"ping","ts":1,"x":[[[[[[[1]]]]]]]}',
    '{"type":"ping","ts":1,"x":[[[[[[[[1]]]]]]]]}',
    '{"type":"ping","ts":1,"x":"[[[[[[[[[["}',
    '{"type":"ping","ts":1,"x":1e999999}',
    '{"type":"ping","ts":18446744073709551616}',
    '{"type":"ping","ts":-9223372036854775809}',
    '{"type":"ping","ts":9223372036854775808}',
    '{"type":"ping","ts":18446744073709551615}',
    '{"type":"read","room":"lobby","seq":18446744073709551615}',
    '{"type":"read","room":"lobby","seq":18446744073709551616}',
    '{"type":"ping","ts":1,"client_id":"\\ud800"}',
    '{"type":"ping","ts":1,"client_id":"\ud800"}',
    '{"type":"ping","ts":1,"x":"\ud800"}',
    '{"type":"message","room":"lobby","body":"hi\ud800","client_id":"c"}',
    "",
    " ",
    "null",
    "[]",
    '"join"',
]


def random_text(rng):
    if rng.random() < 0.05:
        return rng.choice(RAW)
    frame = {}
    if rng.random() < 0.95:
        frame["type"] = rng.choice(TYPES)
    for name in rng.sample(FIELDS, rng.randint(0, 5)):
        frame[name] = rng.choice(VALUES)
    if rng.random() < 0.5 and isinstance(frame.get("type"), str):
        plausible = {"room": "lobby", "body": "hi", "ts": 1, "since": 1, "seq": 1}
        plausible |= {"state": "start", "status": "away", "id": 3, "client_id": "c"}
        for name in rng.sample(sorted(plausible), 4):
            frame.setdefault(name, plausible[name])
    items = list(frame.items())
    rng.shuffle(items)  # field order matters to a one-pass decoder
    text = json.dumps(dict(items), ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.05:
        cut = rng.randrange(len(text) + 1)
        text = (
            text[:cut]
            + rng.choice(['"', "{", "}", "[", ",", "\\", " ", ""])
            + text[cut:]
        )
    return text


def check(count, seed):
    rng = random.Random(seed)
    texts = [*RAW, *(random_text(rng) for _ in range(count))]
    differing = 0
    for text in texts:
        try:
            old = typed(ladder(text))
        except Exception as error:  # the former way raising is a finding too
            old = ("raised", repr(error))
        new = typed(decoded(text))
        if old != new:
            differing += 1
            if differing <= 20:
                print(f"DIFFERS {text!r}\n  ladder: {old}\n  frames: {new}")
    return len(texts), differing


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=100_000)
    parser.add_argument("--check", type=int, default=0, help="random frames to compare")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"{'frame':<14} {'ladder µs':>10} {'frames µs':>10} {'+ service':>10}")
    for name, text in {**COMMON, **REFUSED}.items():
        assert typed(ladder(text)) == typed(decoded(text)), name
        old = per_frame_us(ladder, text, args.number)
        new = per_frame_us(frames.frame_decode, text, args.number)
        extra = ""
        if name == "message":
            extra = f"{per_frame_us(service_rules, text, args.number):>10.3f}"
        print(f"{name:<14} {old:>10.3f} {new:>10.3f} {extra}")
    if args.check:
        total, differing = check(args.check, args.seed)
        print(f"checked {total} frames both ways: {differing} differ")


if __name__ == "__main__":
    main()
