"""The Redis channel layer: channels-redis pub/sub, publishing on a pipelined client."""

from channels_redis.pubsub import RedisPubSubChannelLayer

from voiceflow.redis import RedisAddress, layer_host
from voiceflow.runtime import runtime


class PubSubChannelLayer(RedisPubSubChannelLayer):
    """channels-redis's pub/sub layer; `group_send` publishes through PipelinedRedis.

    channels-redis publishes under a per-process lock, one round trip at a time, so
    every room's broadcasts queued behind each other; here the PUBLISHes of one loop
    turn leave in one write. Subscribing and receiving stay channels-redis's own.

    `shards`: the Redis servers (URLs, or RedisAddress keywords: the store's Redis
    through Sentinel), each group and channel on one of them by channels-redis's
    consistent hash of its name.
    """

    def __init__(self, *args, shards, **kwargs):
        self.shards = [
            RedisAddress(**shard) if isinstance(shard, dict) else RedisAddress(shard)
            for shard in shards
        ]
        if not self.shards:
            raise ValueError("PubSubChannelLayer needs at least one Redis shard.")
        hosts = [layer_host(address) for address in self.shards]
        super().__init__(*args, hosts=hosts, **kwargs)

    async def group_send(self, group, message):
        """Publish `message` once to the group; every subscribed process gets it."""
        layer = self._get_layer()
        channel = layer._get_group_channel_name(group)
        # On the shard channels-redis subscribes the group on: its own choice.
        shard = layer._shards.index(layer._get_shard(channel))
        client = runtime().redis(self.shards[shard])
        await client.publish(channel, self.serialize(message))
