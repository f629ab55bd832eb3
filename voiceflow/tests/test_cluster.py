"""A deployment through HAProxy (deploy/cluster.py): a web process killed with kill -9
loses no acked message and duplicates none; its clients come back through the
balancer on the others."""

import asyncio
import json
import os
import signal

import pytest
import websockets

from bench.audit import history

from .clients import Client, audit, settle, steady_traffic, ticket_url

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.one_pass("shared"),
]


async def recovery_after(clients, killed_at, timeout):
    """Seconds from the kill until every client whose socket it closed is joined
    again (through the balancer, so on another process); None if not in time."""
    loop = asyncio.get_running_loop()
    closes = {c: len(c.close_codes) for c in clients}
    connects = {c: c.connects for c in clients}
    while loop.time() - killed_at < timeout:
        hit = [c for c in clients if len(c.close_codes) > closes[c]]
        if hit and all(c.connected and c.connects > connects[c] for c in hit):
            return loop.time() - killed_at, len(hit)
        await asyncio.sleep(0.02)
    return None, 0


async def test_a_web_process_killed_behind_haproxy_loses_and_duplicates_nothing(
    cluster,
):
    slug, tokens = cluster.room_with_users("cluster", 9)  # through the balancer
    clients = [
        Client(f"c{i}", token, [cluster.base], room=slug)
        for i, token in enumerate(tokens)
    ]
    runs = [asyncio.ensure_future(c.run()) for c in clients]
    try:
        assert await settle(clients, timeout=15)
        assert set(cluster.server_states().values()) == {"UP"}
        # A client's own X-Forwarded-For is not believed: only HAProxy's address is
        # a trusted proxy, and HAProxy adds the client's address after it.
        url = await asyncio.to_thread(ticket_url, cluster.base, tokens[0])
        forged = {"X-Forwarded-For": "203.0.113.9"}
        async with websockets.connect(url, additional_headers=forged) as socket:
            connection = json.loads(await socket.recv())["connection_id"]
        assert cluster.logged_client(connection) == "127.0.0.1"

        loop = asyncio.get_running_loop()

        async def kill_after(seconds):
            await asyncio.sleep(seconds)
            os.killpg(cluster.pid("web1"), signal.SIGKILL)  # it and any workers
            return loop.time()

        traffic = asyncio.ensure_future(steady_traffic(clients, 6, 0.05))
        killed_at = await kill_after(2)
        recovery, moved = await recovery_after(clients, killed_at, timeout=15)
        await traffic
        assert await settle(clients, timeout=20)
        states = cluster.server_states()
        stored = await asyncio.to_thread(history, cluster.base, tokens[0], slug)
        report = audit(clients, stored)
        print(f"\nkill -9: {moved} clients back in {recovery} s; HAProxy {states}")
        print(f"audit: {report}")
        assert moved >= 1 and recovery < 10
        assert states["web1"].startswith("DOWN")
        assert report["acked"] == report["sent"] > 9 * 50  # 20/s each, for 6 s
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
