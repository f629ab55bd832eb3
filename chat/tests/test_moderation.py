"""Moderation reaches live sockets: deletes, locks, mutes and kicks."""

import asyncio
import re
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from chat import services
from chat.errors import Forbidden
from chat.models import Message, ModerationAction, Mute, Room
from chat.tests.test_consumers import (
    assert_closed_with,
    assert_still_serving,
    joined,
    send_message,
    signed_in,
)
from chat.tests.test_rooms import team  # noqa: F401 (fixture: a private room)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def room(lobby):
    return lobby


@pytest.fixture
def moderator(django_user_model):
    return django_user_model.objects.create_superuser("mod", password="Mod-Pass-123")


@pytest.fixture
def admin_client(client, moderator):
    client.force_login(moderator)
    return client


def api_for(user):
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


async def api_call(user, method, path, data=None):
    """A REST call as `user` from async test code."""

    def call():
        return getattr(api_for(user), method)(path, data, format="json")

    return await sync_to_async(call)()


async def posted(socket, body="hi", client_id=None):
    """Send a message and return its ack, the socket's own broadcast consumed."""
    await send_message(socket, body, client_id)
    ack = await socket.receive_json_from()
    assert ack["type"] == "ack", ack
    assert (await socket.receive_json_from())["type"] == "message"
    return ack


async def admin_action(client, model, action, ids):
    app = "auth" if model == "user" else "chat"
    response = await sync_to_async(client.post)(
        f"/admin/{app}/{model}/",
        {"action": action, "_selected_action": [str(i) for i in ids]},
    )
    assert response.status_code == 302, response.content[:500]


def actions():
    return list(ModerationAction.objects.values_list("kind", flat=True).order_by("id"))


# Deleting


async def test_a_moderator_bulk_delete_reaches_every_socket_and_leaves_tombstones(
    alice, bob, room, admin_client
):
    sender, listener = await joined(alice), await joined(bob)
    first, second = await posted(sender, "one"), await posted(sender, "two")
    for _ in range(2):
        await listener.receive_json_from()

    await admin_action(
        admin_client, "message", "delete_messages", [first["id"], second["id"]]
    )

    for socket in (sender, listener):
        events = [await socket.receive_json_from() for _ in range(2)]
        assert sorted(events, key=lambda e: e["seq"]) == [
            {
                "type": "message_deleted",
                "room": "lobby",
                "id": first["id"],
                "seq": 1,
                "change": 1,
            },
            {
                "type": "message_deleted",
                "room": "lobby",
                "id": second["id"],
                "seq": 2,
                "change": 2,
            },
        ]
    late = await joined(bob, since=0)  # `missed` shows tombstones in their place
    history = await api_call(bob, "get", "/api/rooms/lobby/messages/")
    tombstones = history.json()["results"]
    assert [(m["seq"], m["body"], m.get("deleted")) for m in tombstones] == [
        (1, "", True),
        (2, "", True),
    ]
    assert await sync_to_async(actions)() == ["message_delete", "message_delete"]
    for socket in (sender, listener, late):
        await socket.disconnect()


async def test_missed_messages_show_deletions_as_tombstones(alice, bob, room):
    sender = await joined(alice)
    ack = await posted(sender, "regret")
    await posted(sender, "fine")
    await database_sync_to_async(services.message_delete)(
        user=alice, room=room, message_id=ack["id"]
    )
    assert (await sender.receive_json_from())["type"] == "message_deleted"
    socket = await signed_in(bob)
    await socket.send_json_to({"type": "join", "room": "lobby", "since": 0})
    missed = (await socket.receive_json_from())["missed"]
    assert [(m["seq"], m["body"], m.get("deleted", False)) for m in missed] == [
        (1, "", True),
        (2, "fine", False),
    ]
    await sender.disconnect()
    await socket.disconnect()


async def test_the_author_deletes_over_the_socket_and_the_room_hears_it(
    alice, bob, room
):
    sender, listener = await joined(alice), await joined(bob)
    ack = await posted(sender, "typo")
    await listener.receive_json_from()
    await sender.send_json_to({"type": "delete", "room": "lobby", "id": ack["id"]})
    expected = {
        "type": "message_deleted",
        "room": "lobby",
        "id": ack["id"],
        "seq": 1,
        "change": 1,
    }
    assert await sender.receive_json_from() == expected
    assert await listener.receive_json_from() == expected
    # Deleting a tombstone again is confirmed to the sender only.
    await sender.send_json_to({"type": "delete", "room": "lobby", "id": ack["id"]})
    assert await sender.receive_json_from() == expected
    assert await listener.receive_nothing()
    message = await sync_to_async(Message.objects.get)(pk=ack["id"])
    assert message.deleted_at is not None and message.body == "typo"  # kept for audit
    await sender.disconnect()
    await listener.disconnect()


@pytest.mark.parametrize(
    "frame,code",
    [
        ({"type": "delete", "room": "lobby", "id": "1"}, "invalid"),
        ({"type": "delete", "room": "lobby", "id": 999999}, "not_found"),
        ({"type": "delete", "room": "lobby", "id": "OTHERS"}, "forbidden"),
        ({"type": "delete", "room": "elsewhere", "id": 1}, "not_found"),
    ],
)
async def test_a_socket_cannot_delete_what_is_not_its_own(
    alice, bob, room, frame, code
):
    author = await joined(bob)
    others = await posted(author)
    if frame["id"] == "OTHERS":
        frame = {**frame, "id": others["id"]}
    socket = await joined(alice)
    await socket.send_json_to(frame)
    error = await socket.receive_json_from()
    assert (error["type"], error["code"], error["request"]) == ("error", code, "delete")
    await assert_still_serving(socket)
    assert not await sync_to_async(
        Message.objects.filter(deleted_at__isnull=False).exists
    )()
    await author.disconnect()
    await socket.disconnect()


async def test_rest_delete_is_for_the_author_only(alice, bob, room):
    listener = await joined(bob)
    ack = await posted(await joined(alice), "mine")
    await listener.receive_json_from()
    path = f"/api/rooms/lobby/messages/{ack['id']}/"
    unknown = "/api/rooms/lobby/messages/999999/"
    elsewhere = f"/api/rooms/nowhere/messages/{ack['id']}/"

    assert (await api_call(bob, "delete", path)).status_code == 403
    assert (await api_call(alice, "delete", unknown)).status_code == 404
    assert (await api_call(alice, "delete", elsewhere)).status_code == 404
    assert await listener.receive_nothing()

    assert (await api_call(alice, "delete", path)).status_code == 204
    event = await listener.receive_json_from()
    assert event == {
        "type": "message_deleted",
        "room": "lobby",
        "id": ack["id"],
        "seq": 1,
        "change": 1,
    }
    assert (await api_call(alice, "delete", path)).status_code == 204  # idempotent
    assert await listener.receive_nothing()
    await listener.disconnect()


# Deleting others' messages: moderators


def grant(user, codename="delete_message"):
    from django.contrib.auth.models import Permission

    user.user_permissions.add(Permission.objects.get(codename=codename))


@pytest.fixture
def deleter(django_user_model):
    """A moderator who is neither staff nor a superuser: the permission alone."""
    user = django_user_model.objects.create_user("dora", password="Dora-Pass-123")
    grant(user)
    return user


def deletions():
    return list(
        ModerationAction.objects.filter(kind="message_delete")
        .order_by("id")
        .values_list("actor__username", "target_user__username", "reason")
    )


@pytest.mark.parametrize("who", ["superuser", "permission", "group"])
def test_a_moderator_deletes_anyones_message_and_is_its_recorded_actor(
    alice, room, moderator, deleter, django_user_model, who
):
    if who == "group":
        from django.contrib.auth.models import Group, Permission

        group = Group.objects.create(name="moderators")
        group.permissions.add(Permission.objects.get(codename="delete_message"))
        actor = django_user_model.objects.create_user("gus", password="Gus-Pass-123")
        actor.groups.add(group)
    else:
        actor = moderator if who == "superuser" else deleter
    first = services.message_post(user=alice, room=room, body="spam").message
    result = services.message_delete(user=actor, room=room, message_id=first["id"])
    assert result.deleted and result.event == {
        "room": "lobby",
        "id": first["id"],
        "seq": 1,
        "change": 1,
    }
    room.refresh_from_db()
    assert room.last_change == 1
    assert deletions() == [(actor.username, "alice", "by a moderator")]
    again = services.message_delete(user=actor, room=room, message_id=first["id"])
    assert not again.deleted and len(deletions()) == 1


def test_the_authors_deletion_is_recorded_as_before(alice, room):
    mine = services.message_post(user=alice, room=room, body="oops").message
    services.message_delete(user=alice, room=room, message_id=mine["id"])
    assert deletions() == [("alice", "alice", "by its author")]


@pytest.mark.parametrize(
    "permissions", [[], ["change_message", "view_message"]], ids=["none", "change"]
)
def test_staff_alone_do_not_delete_others_messages(
    alice, room, django_user_model, permissions
):
    staff = django_user_model.objects.create_user(
        "stan", password="Stan-Pass-123", is_staff=True
    )
    for codename in permissions:
        grant(staff, codename)
    theirs = services.message_post(user=alice, room=room, body="mine").message
    with pytest.raises(Forbidden, match="author or a moderator"):
        services.message_delete(user=staff, room=room, message_id=theirs["id"])
    assert not Message.objects.filter(deleted_at__isnull=False).exists()
    assert deletions() == []


def test_a_moderator_is_a_participant_like_any_other_in_a_dm(alice, bob, deleter):
    dm, _ = services.dm_open(user=alice, usernames=["bob", "dora"])
    theirs = services.message_post(user=bob, room=dm, body="between us").message
    with pytest.raises(Forbidden):
        services.message_delete(user=deleter, room=dm, message_id=theirs["id"])
    mine = services.message_post(user=deleter, room=dm, body="mine").message
    assert services.message_delete(user=deleter, room=dm, message_id=mine["id"]).deleted


async def test_a_moderator_deletes_over_the_socket_and_a_rejoin_learns_of_it(
    alice, bob, room, deleter
):
    author, listener = await joined(alice), await joined(bob)
    mod = await joined(deleter)
    ack = await posted(author, "spam")
    await posted(author, "fine")
    for socket in (listener, mod):
        for _ in range(2):
            assert (await socket.receive_json_from())["type"] == "message"
    await listener.disconnect()  # away while it is deleted

    await mod.send_json_to({"type": "delete", "room": "lobby", "id": ack["id"]})
    expected = {
        "type": "message_deleted",
        "room": "lobby",
        "id": ack["id"],
        "seq": 1,
        "change": 1,
    }
    assert await mod.receive_json_from() == expected
    assert await author.receive_json_from() == expected
    assert await sync_to_async(deletions)() == [("dora", "alice", "by a moderator")]

    back = await signed_in(bob)
    await back.send_json_to(
        {"type": "join", "room": "lobby", "since": 2, "changes_since": 0}
    )
    rejoined = await back.receive_json_from()
    assert rejoined["last_change"] == 1
    assert [(m["id"], m.get("deleted")) for m in rejoined["changed"]] == [
        (ack["id"], True)
    ]
    for socket in (author, mod, back):
        await socket.disconnect()


async def test_a_revoked_moderator_is_refused_on_a_socket_opened_before(
    alice, room, deleter
):
    author, mod = await joined(alice), await joined(deleter)
    first, second = await posted(author, "one"), await posted(author, "two")
    for _ in range(2):
        await mod.receive_json_from()
    await mod.send_json_to({"type": "delete", "room": "lobby", "id": first["id"]})
    assert (await mod.receive_json_from())["type"] == "message_deleted"
    assert (await author.receive_json_from())["type"] == "message_deleted"

    await sync_to_async(deleter.user_permissions.clear)()
    await mod.send_json_to({"type": "delete", "room": "lobby", "id": second["id"]})
    error = await mod.receive_json_from()
    assert (error["type"], error["code"], error["request"]) == (
        "error",
        "forbidden",
        "delete",
    )
    assert await author.receive_nothing()
    for socket in (author, mod):
        await socket.disconnect()


async def test_rest_delete_by_a_moderator_author_other_and_outsider(
    alice, bob, make_user, room, team, deleter
):
    carol = await sync_to_async(make_user)("carol")
    listener, author = await joined(alice), await joined(bob)
    open_msg = await posted(author, "in the lobby")
    await listener.receive_json_from()
    hidden = await sync_to_async(services.message_post)(
        user=bob, room=team, body="in the team room"
    )
    lobby_path = f"/api/rooms/lobby/messages/{open_msg['id']}/"
    team_path = f"/api/rooms/team/messages/{hidden.message['id']}/"

    assert (await api_call(carol, "delete", lobby_path)).status_code == 403
    # A moderator who may not see the private room: as if it did not exist.
    outsider = await api_call(deleter, "delete", team_path)
    assert outsider.status_code == 404 and outsider.json()["code"] == "not_found"
    assert await listener.receive_nothing()

    assert (await api_call(deleter, "delete", lobby_path)).status_code == 204
    assert await listener.receive_json_from() == {
        "type": "message_deleted",
        "room": "lobby",
        "id": open_msg["id"],
        "seq": 1,
        "change": 1,
    }
    # A member of the private room, they may delete there too; the author as ever.
    await sync_to_async(services.room_join)(user=deleter, room=team)
    assert (await api_call(deleter, "delete", team_path)).status_code == 204
    assert (await api_call(bob, "delete", team_path)).status_code == 204
    assert await sync_to_async(deletions)() == [
        ("dora", "bob", "by a moderator"),
        ("dora", "bob", "by a moderator"),
    ]
    for socket in (listener, author):
        await socket.disconnect()


def test_the_admins_delete_action_is_offered_to_moderators_only(
    client, django_user_model, alice, lobby
):
    message = Message.objects.create(room=lobby, seq=1, user=alice, body="hi")
    changer = django_user_model.objects.create_user(
        "changer", password="Change-Pass-123", is_staff=True
    )
    for codename in ("view_message", "change_message"):
        grant(changer, codename)
    staff_moderator = django_user_model.objects.create_user(
        "staffmod", password="Staff-Mod-123", is_staff=True
    )
    for codename in ("view_message", "delete_message"):
        grant(staff_moderator, codename)
    offered = b'value="delete_messages"'
    client.force_login(changer)
    assert offered not in client.get("/admin/chat/message/").content
    client.force_login(staff_moderator)
    assert offered in client.get("/admin/chat/message/").content
    response = client.post(
        "/admin/chat/message/",
        {"action": "delete_messages", "_selected_action": [str(message.pk)]},
    )
    assert response.status_code == 302
    message.refresh_from_db()
    assert message.deleted_at is not None


# Locking


async def test_a_locked_room_refuses_posts_live_and_unlocking_reopens_it(
    alice, room, admin_client
):
    socket = await joined(alice)
    await admin_action(admin_client, "room", "lock_rooms", [room.pk])
    assert await socket.receive_json_from() == {
        "type": "room_locked",
        "room": "lobby",
        "locked": True,
    }
    await send_message(socket, "anyone?", "c-1")
    error = await socket.receive_json_from()
    assert (error["code"], error["ref"]) == ("forbidden", "c-1")
    assert "locked" in error["detail"]
    rest = await api_call(
        alice, "post", "/api/rooms/lobby/messages/", {"body": "rest?"}
    )
    assert rest.status_code == 403
    await socket.send_json_to({"type": "join", "room": "lobby", "since": 0})
    assert (await socket.receive_json_from())["type"] == "joined"  # reading works

    await admin_action(admin_client, "room", "unlock_rooms", [room.pk])
    assert (await socket.receive_json_from())["locked"] is False
    assert (await posted(socket, "open again"))["seq"] == 1  # refusals left no gap
    assert await sync_to_async(actions)() == ["room_lock", "room_unlock"]
    await socket.disconnect()


# Muting


async def test_a_muted_user_is_refused_with_the_time_left_and_ping_still_works(
    alice, bob, room, moderator
):
    socket, listener = await joined(alice), await joined(bob)
    await database_sync_to_async(services.user_mute)(
        actor=moderator, user=alice, duration=timedelta(minutes=10), reason="spam"
    )
    await send_message(socket, "still here?", "c-m")
    error = await socket.receive_json_from()
    assert (error["code"], error["request"], error["ref"]) == (
        "forbidden",
        "message",
        "c-m",
    )
    assert re.search(
        r"muted for another (10 min|9 min \d+ s) \(until ", error["detail"]
    )
    await socket.send_json_to({"type": "typing", "room": "lobby", "state": "start"})
    error = await socket.receive_json_from()
    assert (error["code"], error["request"]) == ("forbidden", "typing")
    assert "muted for another" in error["detail"]
    await assert_still_serving(socket)
    await socket.send_json_to({"type": "leave", "room": "lobby"})
    assert (await socket.receive_json_from())["type"] == "left"
    await socket.send_json_to({"type": "join", "room": "lobby"})
    assert (await socket.receive_json_from())["type"] == "joined"
    rest = await api_call(alice, "post", "/api/rooms/lobby/messages/", {"body": "rest"})
    assert rest.status_code == 403 and "muted" in rest.json()["detail"]
    assert await listener.receive_nothing()
    assert not await sync_to_async(Message.objects.exists)()
    await socket.disconnect()
    await listener.disconnect()


async def typing_refused(socket):
    """Send typing then ping; True if typing was refused before the pong came."""
    await socket.send_json_to({"type": "typing", "room": "lobby", "state": "start"})
    await socket.send_json_to({"type": "ping", "ts": 1})
    refused = False
    while (frame := await socket.receive_json_from())["type"] != "pong":
        refused = refused or frame.get("code") == "forbidden"
    return refused


async def until_typing(socket, refused, attempts=50):
    for _ in range(attempts):
        if await typing_refused(socket) == refused:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_mute_and_unmute_reach_a_socket_that_already_checked(
    alice, room, moderator
):
    socket = await joined(alice)
    assert not await typing_refused(socket)  # the socket now holds "not muted"
    await database_sync_to_async(services.user_mute)(
        actor=moderator, user=alice, duration=timedelta(hours=1)
    )
    assert await until_typing(socket, refused=True)
    assert await database_sync_to_async(services.user_unmute)(
        actor=moderator, user=alice
    )
    assert await until_typing(socket, refused=False)
    assert (await posted(socket, "back"))["seq"] == 1
    assert await sync_to_async(actions)() == ["user_mute", "user_unmute"]
    await socket.disconnect()


async def test_an_expired_mute_no_longer_refuses(alice, room, moderator):
    await sync_to_async(Mute.objects.create)(
        user=alice, until=await sync_to_async(_past)(), by=moderator
    )
    socket = await joined(alice)
    assert not await typing_refused(socket)
    assert (await posted(socket))["seq"] == 1
    await socket.disconnect()


def _past():
    return timezone.now() - timedelta(seconds=1)


async def test_muting_from_the_user_admin_is_live(alice, room, admin_client):
    socket = await joined(alice)
    await admin_action(admin_client, "user", "mute_60_minutes", [alice.pk])
    await send_message(socket, "x")
    error = await socket.receive_json_from()
    assert error["code"] == "forbidden"
    assert re.search(r"muted for another (1 h|59 min \d+ s) ", error["detail"])
    assert await sync_to_async(
        Mute.objects.filter(user=alice, by__username="mod").exists
    )()
    await socket.disconnect()


def test_a_mute_with_an_end_time_is_added_in_admin(admin_client, alice, lobby):
    until = timezone.now() + timedelta(hours=2)
    response = admin_client.post(
        "/admin/chat/mute/add/",
        {
            "user": alice.pk,
            "until_0": until.strftime("%Y-%m-%d"),
            "until_1": until.strftime("%H:%M:%S"),
            "reason": "cool down",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    mute = Mute.objects.get(user=alice)
    assert abs((mute.until - until).total_seconds()) < 5 and mute.reason == "cool down"
    assert mute.by.username == "mod"
    assert actions() == ["user_mute"]
    with pytest.raises(Forbidden, match="muted for another"):
        services.message_post(user=alice, room=lobby, body="hi")


# Kicking


async def test_a_kick_closes_every_socket_of_the_user_with_4403(
    alice, bob, room, admin_client
):
    tabs = [await joined(alice), await signed_in(alice)]
    other = await joined(bob)
    await admin_action(admin_client, "user", "kick_users", [alice.pk])
    for tab in tabs:
        await assert_closed_with(tab, 4403)
    await assert_still_serving(other)
    assert await sync_to_async(actions)() == ["user_kick"]
    action = await sync_to_async(
        ModerationAction.objects.select_related("actor", "target_user").get
    )()
    assert (action.actor.username, action.target_user.username) == ("mod", "alice")
    await other.disconnect()


def test_the_audit_trail_is_read_only_in_admin(admin_client, alice, lobby, moderator):
    services.user_kick(actor=moderator, user=alice, reason="flood")
    listing = admin_client.get("/admin/chat/moderationaction/")
    assert listing.status_code == 200 and b"flood" in listing.content
    action = ModerationAction.objects.get()
    assert (
        admin_client.get(
            f"/admin/chat/moderationaction/{action.pk}/change/"
        ).status_code
        == 200
    )
    assert (
        admin_client.post(
            f"/admin/chat/moderationaction/{action.pk}/delete/"
        ).status_code
        == 403
    )
    assert admin_client.get("/admin/chat/moderationaction/add/").status_code == 403
    assert ModerationAction.objects.count() == 1


def test_the_message_admin_lists_a_big_table_in_a_few_queries(
    admin_client, alice, lobby, django_assert_max_num_queries
):
    Message.objects.bulk_create(
        Message(room=lobby, seq=i, user=alice, body=f"m{i}") for i in range(1, 501)
    )
    Room.objects.filter(pk=lobby.pk).update(last_seq=500)
    with django_assert_max_num_queries(8):
        page = admin_client.get("/admin/chat/message/?q=lobby")
    assert (
        page.status_code == 200
        and b"m500" in page.content
        and b"m400" not in page.content
    )
    assert admin_client.get("/admin/chat/message/?deleted=yes").status_code == 200


# Permissions


@pytest.mark.parametrize(
    "model, action",
    [
        ("room", "lock_rooms"),
        ("room", "unlock_rooms"),
        ("message", "delete_messages"),
        ("user", "mute_15_minutes"),
        ("user", "unmute_users"),
        ("user", "kick_users"),
    ],
)
def test_staff_with_only_the_view_permission_cannot_moderate(
    client, django_user_model, alice, lobby, model, action
):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user(
        "viewer", password="View-Only-123", is_staff=True
    )
    viewer.user_permissions.set(
        Permission.objects.filter(
            codename__in=["view_room", "view_message", "view_user"]
        )
    )
    message = Message.objects.create(room=lobby, seq=1, user=alice, body="hi")
    lobby.is_locked = action == "unlock_rooms"
    lobby.save()
    target = {"room": lobby.pk, "message": message.pk, "user": alice.pk}[model]
    client.force_login(viewer)
    app = "auth" if model == "user" else "chat"
    listing = client.get(f"/admin/{app}/{model}/")
    assert listing.status_code == 200  # they may look
    assert f'value="{action}"'.encode() not in listing.content
    response = client.post(
        f"/admin/{app}/{model}/",
        {"action": action, "_selected_action": [str(target)]},
    )
    # Refused as an action not on offer (or, with none on offer, no action at all).
    assert response.status_code in (200, 302)
    lobby.refresh_from_db()
    assert lobby.is_locked is (action == "unlock_rooms")
    assert not Message.objects.filter(deleted_at__isnull=False).exists()
    assert actions() == []


def test_the_admin_applies_the_name_rules(
    admin_client, alice, lobby, django_user_model
):
    added = admin_client.post(
        "/admin/auth/user/add/",
        {
            "username": "ALICE",
            "usable_password": "true",
            "password1": "Correct-Horse-9",
            "password2": "Correct-Horse-9",
        },
    )
    assert added.status_code == 200 and b"already exists" in added.content
    renamed = admin_client.post(
        f"/admin/chat/room/{lobby.pk}/change/",
        {"name": "Lob\u200bby", "created_by": ""},
    )
    assert renamed.status_code == 200 and b"not allowed" in renamed.content
    lobby.refresh_from_db()
    assert lobby.name == "Lobby"
    assert django_user_model.objects.filter(username__iexact="alice").count() == 1
