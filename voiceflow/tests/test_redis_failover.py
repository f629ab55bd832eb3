"""A deployment's Redis primary (deploy/cluster.py: a replica and three Sentinels)
killed with kill -9 under steady traffic through HAProxy: the Sentinels promote the
replica, every web process finds it by itself, and messages flow across processes
again, none acked lost or duplicated."""

import asyncio
import json
import os
import signal
import urllib.request

import pytest

from bench.audit import history

from .clients import Client, audit, settle, steady_traffic

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.one_pass("shared"),  # a deployment on PostgreSQL, its own Redis
]


class TracingClient(Client):
    """A Client that notes when it first sent each message, and when and on which
    socket it got each ack and each live message."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.connection_id = None
        self.sent_at = {}  # client_id → when first sent
        self.acked_on = {}  # message id → (client_id, connection id of its ack)
        self.live_on = []  # (time, message id, connection id) of each live message

    def send(self, body):
        client_id = super().send(body)
        self.sent_at[client_id] = asyncio.get_running_loop().time()
        return client_id

    async def _handle(self, socket, data):
        kind = data.get("type")
        if kind == "hello":
            self.connection_id = data["connection_id"]
        elif kind == "ack":
            self.acked_on[data["id"]] = (data["client_id"], self.connection_id)
        elif kind == "message":
            now = asyncio.get_running_loop().time()
            self.live_on.append((now, data["id"], self.connection_id))
        await super()._handle(socket, data)


def first_cross_process_delivery(clients, processes, after):
    """Seconds from `after` to the first live message a client got from a web process
    other than the one its author posted it on, of those first sent after `after`."""
    sent_at = {cid: at for client in clients for cid, at in client.sent_at.items()}
    posted = {mid: on for client in clients for mid, on in client.acked_on.items()}
    return min(
        (
            at - after
            for client in clients
            for at, mid, connection in client.live_on
            if mid in posted
            and sent_at[posted[mid][0]] > after
            and processes.get(connection) != processes.get(posted[mid][1])
        ),
        default=None,
    )


async def promoted_after(cluster, port, since, timeout):
    """Seconds from `since` until every Sentinel names `port` as the primary."""
    loop = asyncio.get_running_loop()
    while loop.time() - since < timeout:
        named = await asyncio.gather(
            *(
                asyncio.to_thread(cluster.redis_primary_port, n)
                for n in range(len(cluster.sentinel_ports))
            ),
            return_exceptions=True,
        )
        if all(primary == port for primary in named):
            return loop.time() - since
        await asyncio.sleep(0.05)
    return None


def redis_health(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
        return json.loads(r.read())["services"]["redis"]


async def test_the_redis_primary_killed_under_traffic_fails_over_losing_nothing(
    cluster,
):
    slug, tokens = cluster.room_with_users("failover", 9)  # through the balancer
    clients = [
        TracingClient(f"f{i}", token, [cluster.base], room=slug)
        for i, token in enumerate(tokens)
    ]
    runs = [asyncio.ensure_future(c.run()) for c in clients]
    try:
        assert await settle(clients, timeout=15)
        primary, replica = cluster.redis_ports
        assert cluster.redis_primary_port() == primary
        processes = cluster.connection_processes()
        # Spread over the three web processes, so deliveries cross processes.
        assert {processes[c.connection_id] for c in clients} == {"web1", "web2", "web3"}
        web = {name: cluster.pid(name) for name in processes.values()}

        loop = asyncio.get_running_loop()
        traffic = asyncio.ensure_future(steady_traffic(clients, 9, 0.05))
        await asyncio.sleep(2)
        os.kill(cluster.pid("redis1"), signal.SIGKILL)
        killed_at = loop.time()
        promoted = await promoted_after(cluster, replica, killed_at, timeout=20)
        await traffic
        settling = loop.time()
        assert await settle(clients, timeout=30)
        settled = loop.time() - settling
        first = first_cross_process_delivery(
            clients, cluster.connection_processes(), killed_at
        )
        stored = await asyncio.to_thread(history, cluster.base, tokens[0], slug)
        report = audit(clients, stored)
        health = [
            await asyncio.to_thread(redis_health, port) for port in cluster.web_ports
        ]
        print(
            f"\nprimary killed: replica promoted after {promoted} s, first delivery "
            f"across processes after {first} s; /health redis {health}; settled "
            f"in {settled:.1f} s"
        )
        print(f"audit: {report}")
        assert promoted is not None
        assert first is not None and first < 15
        # Nothing was restarted: the same web processes, all in the balancer.
        assert {name: cluster.pid(name) for name in web} == web
        assert all(os.path.exists(f"/proc/{pid}") for pid in web.values())
        assert set(cluster.server_states().values()) == {"UP"}
        assert health == [True, True, True]
        assert report["acked"] == report["sent"] > 9 * 100  # 20/s each, for 9 s
        assert (report["lost_acked"], report["duplicated"], report["unacked"]) == (
            0,
            0,
            0,
        )
        assert report["lost_deliveries"] == 0
    finally:
        for client in clients:
            client.stop()
        await asyncio.gather(*runs)
