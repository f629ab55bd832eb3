"""Editing messages, and recovering edits and deletions after a disconnect."""

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.utils import timezone

from chat import services
from chat.models import Message, MessageEdit, Room
from chat.tests.test_consumers import assert_still_serving, joined, signed_in
from chat.tests.test_moderation import (  # noqa: F401 (fixtures)
    admin_client,
    api_call,
    moderator,
    posted,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def room(lobby):
    return lobby


def path(message_id, slug="lobby"):
    return f"/api/rooms/{slug}/messages/{message_id}/"


async def edit(socket, message_id, body, room="lobby"):
    await socket.send_json_to(
        {"type": "edit", "room": room, "id": message_id, "body": body}
    )


def history(message_id):
    return list(
        MessageEdit.objects.filter(message_id=message_id).values_list(
            "previous_body", "editor__username"
        )
    )


# Editing, live


async def test_an_edit_reaches_every_socket_of_the_room_once_committed(
    alice, bob, room
):
    sender, listener = await joined(alice), await joined(bob)
    ack = await posted(sender, "teh plan")
    await listener.receive_json_from()

    await edit(sender, ack["id"], "  the plan  ")

    for socket in (sender, listener):
        event = await socket.receive_json_from()
        assert event["type"] == "message_edited" and event["room"] == "lobby"
        assert event["change"] == 1
        message = event["message"]
        assert {k: message[k] for k in ("id", "seq", "user", "body", "client_id")} == {
            "id": ack["id"],
            "seq": 1,
            "user": "alice",
            "body": "the plan",
            "client_id": None,
        }
        assert message["edited_at"].endswith("Z")
        assert message["created_at"] == ack["created_at"]
    assert await sender.receive_nothing() and await listener.receive_nothing()
    stored = await sync_to_async(Message.objects.get)(pk=ack["id"])
    assert (stored.body, stored.change_seq) == ("the plan", 1)
    assert await sync_to_async(history)(ack["id"]) == [("teh plan", "alice")]
    rest = await api_call(bob, "get", "/api/rooms/lobby/messages/")
    assert [(m["body"], m["edited_at"]) for m in rest.json()["results"]] == [
        ("the plan", message["edited_at"])
    ]
    await sender.disconnect()
    await listener.disconnect()


async def test_the_same_body_again_changes_nothing_and_only_the_sender_hears(
    alice, bob, room
):
    sender, listener = await joined(alice), await joined(bob)
    ack = await posted(sender, "final")
    await listener.receive_json_from()
    await edit(sender, ack["id"], "final ")
    event = await sender.receive_json_from()
    assert (event["type"], event["change"], event["message"]["edited_at"]) == (
        "message_edited",
        0,
        None,
    )
    assert await listener.receive_nothing()
    assert await sync_to_async(history)(ack["id"]) == []
    await sender.disconnect()
    await listener.disconnect()


async def test_rest_edit_returns_the_message_and_tells_the_room(alice, bob, room):
    listener = await joined(bob)
    ack = await posted(await joined(alice), "draft")
    await listener.receive_json_from()
    response = await api_call(alice, "patch", path(ack["id"]), {"body": "done"})
    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["room"], body["body"]) == (ack["id"], "lobby", "done")
    assert body["edited_at"] is not None
    event = await listener.receive_json_from()
    assert event == {
        "type": "message_edited",
        "room": "lobby",
        "message": body,
        "change": 1,
    }


@pytest.mark.parametrize(
    "case,status,code",
    [
        ("someone else's", 403, "forbidden"),
        ("tombstone", 403, "forbidden"),
        ("window closed", 403, "forbidden"),
        ("room locked", 403, "forbidden"),
        ("muted", 403, "forbidden"),
        ("unknown id", 404, "not_found"),
        ("another room's", 404, "not_found"),
        ("empty body", 400, "invalid"),
        ("body too long", 400, "invalid"),
        ("control character", 400, "invalid"),
    ],
)
async def test_a_refused_edit_changes_nothing_over_rest_and_socket(
    alice, bob, room, moderator, settings, case, status, code
):
    settings.VOICEFLOW = {**settings.VOICEFLOW, "EDIT_WINDOW": 60}
    other = await sync_to_async(Room.objects.create)(slug="other", name="Other")
    author = bob if case == "someone else's" else alice
    socket = await joined(alice)
    listener = await joined(bob)
    poster = await joined(author)
    message = (await posted(poster, "original"))["id"]
    await listener.receive_json_from()
    await socket.receive_json_from()
    slug, body = "lobby", "changed"
    if case == "tombstone":
        await database_sync_to_async(services.message_delete)(
            user=alice, room=room, message_id=message
        )
        for receiver in (socket, listener):
            assert (await receiver.receive_json_from())["type"] == "message_deleted"
    elif case == "window closed":
        posted_at = timezone.now() - timedelta(seconds=61)
        await sync_to_async(Message.objects.filter(pk=message).update)(
            created_at=posted_at
        )
    elif case == "room locked":
        await database_sync_to_async(services.room_lock_set)(
            actor=moderator, room=room, locked=True
        )
        for receiver in (socket, listener):
            assert (await receiver.receive_json_from())["type"] == "room_locked"
    elif case == "muted":
        await database_sync_to_async(services.user_mute)(
            actor=moderator, user=alice, duration=timedelta(minutes=5)
        )
    elif case == "unknown id":
        message = 10**9
    elif case == "another room's":
        await sync_to_async(Message.objects.filter(pk=message).update)(room=other)
    elif case == "empty body":
        body = " \n "
    elif case == "body too long":
        body = "x" * 4001
    elif case == "control character":
        body = "bell\x07"

    response = await api_call(alice, "patch", path(message, slug), {"body": body})
    assert response.status_code == status, response.content
    if status != 400:
        assert response.json()["code"] == code
    await edit(socket, message, body, room=slug)
    error = await socket.receive_json_from()
    assert (error["type"], error["code"], error["request"]) == ("error", code, "edit")
    await assert_still_serving(socket)
    assert await listener.receive_nothing()
    stored = await sync_to_async(Message.objects.filter(pk=message).first)()
    changes = 1 if case == "tombstone" else 0
    if stored is not None:
        assert (stored.body, stored.edited_at, stored.change_seq) == (
            "original",
            None,
            changes,
        )
    assert not await sync_to_async(MessageEdit.objects.exists)()
    await sync_to_async(room.refresh_from_db)()
    assert room.last_change == changes  # a refused edit takes no change number
    for each in (socket, listener, poster):
        await each.disconnect()


async def test_the_edit_window_is_a_setting(alice, room, settings):
    socket = await joined(alice)
    ack = await posted(socket, "soon stale")
    settings.VOICEFLOW = {**settings.VOICEFLOW, "EDIT_WINDOW": 0}
    await edit(socket, ack["id"], "too late")
    error = await socket.receive_json_from()
    assert (error["code"], error["request"]) == ("forbidden", "edit")
    assert "0 s" in error["detail"]
    settings.VOICEFLOW = {**settings.VOICEFLOW, "EDIT_WINDOW": 3600}
    await edit(socket, ack["id"], "in time")
    assert (await socket.receive_json_from())["message"]["body"] == "in time"
    await socket.disconnect()


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "edit", "room": "lobby", "id": "1", "body": "x"},
        {"type": "edit", "room": "lobby", "id": True, "body": "x"},
        {"type": "edit", "room": "lobby", "id": 1, "body": 7},
        {"type": "edit", "room": "lobby", "id": 1},
        {"type": "edit", "id": 1, "body": "x"},
    ],
)
async def test_a_malformed_edit_frame_is_invalid(alice, room, frame):
    socket = await joined(alice)
    await posted(socket, "x")
    await socket.send_json_to(frame)
    error = await socket.receive_json_from()
    assert (error["type"], error["request"]) == ("error", "edit")
    assert error["code"] == "invalid"
    await assert_still_serving(socket)
    await socket.disconnect()


async def test_editing_in_a_room_not_joined_is_forbidden(alice, room):
    ack = await posted(await joined(alice), "mine")
    socket = await signed_in(alice)
    await edit(socket, ack["id"], "from outside")
    error = await socket.receive_json_from()
    assert (error["code"], error["request"]) == ("forbidden", "edit")
    await socket.disconnect()


async def test_edits_count_against_the_message_limit(alice, room, set_rate):
    set_rate("message", 3)
    socket = await joined(alice)
    ack = await posted(socket, "v1")
    await edit(socket, ack["id"], "v1")  # unchanged: not counted
    assert (await socket.receive_json_from())["type"] == "message_edited"
    await edit(socket, 10**9, "unknown")  # refused: not counted
    assert (await socket.receive_json_from())["code"] == "not_found"
    await edit(socket, ack["id"], "v2")
    assert (await socket.receive_json_from())["type"] == "message_edited"
    await edit(socket, ack["id"], "v3")
    assert (await socket.receive_json_from())["type"] == "message_edited"

    await edit(socket, ack["id"], "v4")
    error = await socket.receive_json_from()
    assert (error["code"], error["request"]) == ("rate_limited", "edit")
    assert error["retry_after"] > 0
    refused = await api_call(alice, "patch", path(ack["id"]), {"body": "v4"})
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1
    await socket.send_json_to(
        {"type": "message", "room": "lobby", "body": "new", "client_id": "c-9"}
    )
    assert (await socket.receive_json_from())["code"] == "rate_limited"
    stored = await sync_to_async(Message.objects.get)(pk=ack["id"])
    assert stored.body == "v3"
    await socket.disconnect()


def test_the_admin_shows_a_message_edit_history(admin_client, alice, lobby):
    message = services.message_post(user=alice, room=lobby, body="alpha-body").message
    for body in ("beta-body", "gamma-body"):
        services.message_edit_store(
            user=alice, room=lobby, message_id=message["id"], body=body
        )
    page = admin_client.get(f"/admin/chat/message/{message['id']}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "edit history" in text.lower()
    # The current body in the form, then the earlier ones, oldest first.
    assert text.index("gamma-body") < text.index("alpha-body") < text.index("beta-bo")
    assert history(message["id"]) == [("alpha-body", "alice"), ("beta-body", "alice")]


# Recovery after a disconnect: join with since and changes_since


async def _four_posted(alice):
    """A socket of alice's in lobby, and the acks of the four messages she posted."""
    socket = await joined(alice)
    acks = [await posted(socket, f"m{i}") for i in range(1, 5)]
    return socket, acks


async def test_a_rejoin_learns_of_edits_and_deletions_made_while_away(alice, bob, room):
    author, acks = await _four_posted(alice)
    away = await joined(bob, since=0)
    await away.disconnect()  # bob holds seqs 1–4 as of change 0

    await edit(author, acks[0]["id"], "m1, edited")
    await author.send_json_to({"type": "delete", "room": "lobby", "id": acks[1]["id"]})
    await edit(author, acks[2]["id"], "m3, edited")
    await edit(author, acks[2]["id"], "m3, edited again")
    for _ in range(4):
        await author.receive_json_from()
    await posted(author, "m5")

    back = await signed_in(bob)
    await back.send_json_to(
        {"type": "join", "room": "lobby", "since": 4, "changes_since": 0}
    )
    reply = await back.receive_json_from()
    assert reply["type"] == "joined"
    assert (reply["last_seq"], reply["last_change"]) == (5, 4)
    assert [(m["seq"], m["body"]) for m in reply["missed"]] == [(5, "m5")]
    assert [
        (m["seq"], m["body"], m.get("deleted", False), m["edited_at"] is not None)
        for m in reply["changed"]
    ] == [
        (1, "m1, edited", False, True),
        (2, "", True, False),
        (3, "m3, edited again", False, True),
    ]
    assert reply["changed_truncated"] is False

    # Up to date: the next rejoin with the counter it was given gets nothing more.
    await back.send_json_to(
        {"type": "join", "room": "lobby", "since": 5, "changes_since": 4}
    )
    again = await back.receive_json_from()
    assert (again["changed"], again["missed"], again["last_change"]) == ([], [], 4)
    await back.disconnect()
    await author.disconnect()


async def test_changes_to_messages_the_client_never_had_come_in_missed_only(
    alice, bob, room
):
    author, acks = await _four_posted(alice)
    await edit(author, acks[3]["id"], "m4, edited")
    await author.receive_json_from()
    back = await signed_in(bob)
    await back.send_json_to(
        {"type": "join", "room": "lobby", "since": 2, "changes_since": 0}
    )
    reply = await back.receive_json_from()
    assert reply["changed"] == []
    assert [(m["seq"], m["body"]) for m in reply["missed"]] == [
        (3, "m3"),
        (4, "m4, edited"),
    ]
    await back.disconnect()
    await author.disconnect()


async def test_changed_is_capped_and_the_rest_comes_over_rest(
    alice, bob, room, settings
):
    settings.VOICEFLOW = {**settings.VOICEFLOW, "MISSED_LIMIT": 2}
    author, acks = await _four_posted(alice)
    for ack in acks[:3]:
        await edit(author, ack["id"], f"{ack['seq']} edited")
        await author.receive_json_from()
    await author.send_json_to({"type": "delete", "room": "lobby", "id": acks[3]["id"]})
    await author.receive_json_from()

    back = await signed_in(bob)
    await back.send_json_to(
        {"type": "join", "room": "lobby", "since": 4, "changes_since": 0}
    )
    reply = await back.receive_json_from()
    assert [m["seq"] for m in reply["changed"]] == [1, 2]
    assert (reply["changed_truncated"], reply["last_change"]) == (True, 2)

    rest = await api_call(
        bob, "get", "/api/rooms/lobby/messages/?changed_after=2&limit=1"
    )
    page = rest.json()
    assert [(m["seq"], m["body"]) for m in page["results"]] == [(3, "3 edited")]
    assert (page["has_more"], page["last_change"]) == (True, 3)
    rest = await api_call(bob, "get", "/api/rooms/lobby/messages/?changed_after=3")
    page = rest.json()
    assert [(m["seq"], m.get("deleted")) for m in page["results"]] == [(4, True)]
    assert (page["has_more"], page["last_change"]) == (False, 4)
    bad = await api_call(bob, "get", "/api/rooms/lobby/messages/?changed_after=x")
    assert bad.status_code == 400
    await back.disconnect()
    await author.disconnect()


async def test_message_deleted_events_carry_the_change_counter(alice, bob, room):
    author, acks = await _four_posted(alice)
    listener = await joined(bob)
    await edit(author, acks[0]["id"], "edited")
    assert (await listener.receive_json_from())["change"] == 1
    await author.send_json_to({"type": "delete", "room": "lobby", "id": acks[1]["id"]})
    deleted = await listener.receive_json_from()
    assert (deleted["type"], deleted["seq"], deleted["change"]) == (
        "message_deleted",
        2,
        2,
    )
    stored_room = await sync_to_async(Room.objects.get)(slug="lobby")
    assert stored_room.last_change == 2
    await listener.disconnect()
    await author.disconnect()
