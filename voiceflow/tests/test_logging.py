"""Logs: one JSON object per line in production, readable lines in development; what
happened to sockets and moderation, never message bodies or tickets."""

import asyncio
import json
import logging

import pytest
import websockets

from voiceflow.logging import JsonFormatter, TextFormatter

from .servers import ServerProcess

pytestmark = pytest.mark.django_db(transaction=True)


def a_record(**extra):
    record = logging.LogRecord(
        "chat.consumers", logging.INFO, __file__, 1, "socket %s", ("x",), None
    )
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_the_message_and_the_extra_fields():
    line = JsonFormatter().format(a_record(event="socket_connected", user_id=7))
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["message"] == "socket x" and entry["level"] == "INFO"
    assert entry["logger"] == "chat.consumers" and entry["time"].endswith("Z")
    assert (entry["event"], entry["user_id"]) == ("socket_connected", 7)


def test_text_lines_are_readable():
    line = TextFormatter().format(a_record(event="socket_connected", user_id=7))
    assert line.endswith("chat.consumers: socket x [event=socket_connected user_id=7]")


def test_a_production_server_logs_socket_events_as_json_without_secrets(lobby):
    server = ServerProcess().start()
    try:
        token = server.register("alice")
        url = server.socket_url(token)
        ticket = url.split("ticket=")[1]

        async def chat():
            async with websockets.connect(url) as socket:
                await socket.recv()  # hello
                await socket.send(
                    json.dumps(
                        {"type": "message", "room": "lobby", "body": "secret-body-one"}
                    )
                )
                assert json.loads(await socket.recv())["code"] == "forbidden"
                await socket.send(json.dumps({"type": "join", "room": "lobby"}))
                await socket.recv()
                await socket.send(
                    json.dumps(
                        {"type": "message", "room": "lobby", "body": "secret-body-two"}
                    )
                )
                await socket.recv()
            async with websockets.connect(f"{server.ws_url}?ticket=spent") as socket:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await socket.recv()
                assert closed.value.rcvd.code == 4401
            await asyncio.sleep(0.3)

        asyncio.run(chat())
    finally:
        server.stop()
    log = server.output()
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]
    events = {entry.get("event"): entry for entry in entries}
    connected = events["socket_connected"]
    assert connected["user_id"] and connected["client"] == "127.0.0.1"
    assert (events["socket_refused"]["code"], events["socket_refused"]["user_id"]) == (
        4401,
        None,
    )
    refused = events["frame_refused"]
    assert (refused["code"], refused["request"]) == ("forbidden", "message")
    assert events["socket_disconnected"]["code"] == 1000
    # uvicorn's own open/accepted/close lines say less than those, once per socket.
    messages = {entry["message"] for entry in entries}
    assert not messages & {"connection open", "connection closed"}
    assert not any(message.endswith("[accepted]") for message in messages)
    assert ticket not in log
    assert "secret-body" not in log


def test_moderation_actions_are_logged(alice, lobby, caplog, django_user_model):
    from chat import services

    moderator = django_user_model.objects.create_superuser("mod", password="x-Pass-123")
    with caplog.at_level(logging.INFO, logger="chat"):
        services.user_kick(actor=moderator, user=alice, reason="flood")
    record = next(
        r for r in caplog.records if getattr(r, "event", None) == "moderation"
    )
    assert (record.action, record.actor_id, record.target_user_id) == (
        "user_kick",
        moderator.pk,
        alice.pk,
    )
