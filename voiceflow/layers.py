"""The Redis channel layer: channels-redis pub/sub, publishing on a pipelined client."""

from channels_redis.pubsub import RedisPubSubChannelLayer

from .redis import redis_pipelined


class PubSubChannelLayer(RedisPubSubChannelLayer):
    """channels-redis's pub/sub layer; `group_send` publishes through PipelinedRedis.

    channels-redis publishes under a per-process lock, one round trip at a time, so
    every room's broadcasts queued behind each other; here the PUBLISHes of one loop
    turn leave in one write. Subscribing and receiving stay channels-redis's own.
    """

    def __init__(self, *args, hosts=None, **kwargs):
        super().__init__(*args, hosts=hosts, **kwargs)
        if not hosts or len(hosts) != 1:
            raise ValueError("PubSubChannelLayer takes exactly one Redis host.")
        host = hosts[0]
        self.url = host["address"] if isinstance(host, dict) else host

    async def group_send(self, group, message):
        """Publish `message` once to the group; every subscribed process gets it."""
        channel = self._get_layer()._get_group_channel_name(group)
        await redis_pipelined(self.url).publish(channel, self.serialize(message))
