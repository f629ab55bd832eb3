"""The channel layer's subscriber connections: events routed as read, subscriptions
kept across a lost connection, a silent connection made again."""

import asyncio

from voiceflow.runtime.layers import PubSubChannelLayer


class SilentRedis:
    """A Redis that confirms SUBSCRIBEs, then says nothing more (not even to PING):
    a peer gone without closing the connection."""

    def __init__(self):
        self.connections = 0
        self.subscribed: list[list[bytes]] = []  # the names, per connection

    async def start(self):
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def serve(self, reader, writer):
        self.connections += 1
        names: list[bytes] = []
        self.subscribed.append(names)
        try:
            while line := await reader.readline():
                args = []
                for _ in range(int(line[1:])):
                    size = int((await reader.readline())[1:])
                    args.append((await reader.readexactly(size + 2))[:-2])
                if args[0].upper() == b"SUBSCRIBE":
                    for count, name in enumerate(args[1:], len(names) + 1):
                        names.append(name)
                        writer.write(
                            b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:%d\r\n"
                            % (len(name), name, count)
                        )
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def test_a_silent_subscriber_connection_is_made_again_with_its_groups(settings):
    settings.REDIS_SOCKET_TIMEOUT = 0.3
    redis = await SilentRedis().start()
    layer = PubSubChannelLayer(shards=[f"redis://127.0.0.1:{redis.port}/0"])
    try:
        channel = await layer.new_channel()
        await layer.group_add("room.lobby", channel)
        assert redis.connections == 1
        async with asyncio.timeout(3):
            while redis.connections < 2 or len(redis.subscribed[-1]) < 2:
                await asyncio.sleep(0.02)
        # The new connection subscribed the channel and the group again.
        assert set(redis.subscribed[-1]) == {
            channel.encode(),
            b"asgi__group__room.lobby",
        }
    finally:
        await layer.flush()
        redis.server.close()


async def test_events_go_to_the_callback_as_read_and_queue_without_one(settings):
    layer = PubSubChannelLayer(
        shards=[settings.REDIS_URL] if settings.REDIS_URL else ["redis://127.0.0.1/0"],
        prefix="vf-test:layers:",
    )
    routed: list[dict] = []
    try:
        hub, plain = await layer.new_channel(), await layer.new_channel()
        layer.receive_with(hub, routed.append)
        for channel in (hub, plain):
            await layer.group_add("room.x", channel)
        await layer.group_send("room.x", {"type": "x", "text": "one"})
        assert (await asyncio.wait_for(layer.receive(plain), 2))["text"] == "one"
        assert routed == [{"type": "x", "text": "one"}]
        await layer.group_discard("room.x", plain)
        await layer.group_send("room.x", {"type": "x", "text": "two"})
        async with asyncio.timeout(2):
            while len(routed) < 2:
                await asyncio.sleep(0.01)
        assert [event["text"] for event in routed] == ["one", "two"]
    finally:
        await layer.flush()
