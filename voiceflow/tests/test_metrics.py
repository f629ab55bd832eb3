"""GET /metrics: Prometheus text, figures that move, and who may read it."""

import asyncio
import urllib.request

import pytest
import websockets
from django.test import AsyncClient, Client
from prometheus_client.parser import text_string_to_metric_families

from chat.tests.test_consumers import joined, send_message

from .servers import ServerProcess

pytestmark = pytest.mark.django_db(transaction=True)


def samples(text):
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape():
    response = await AsyncClient().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    return samples(response.content.decode())


def value(figures, name, **labels):
    return figures.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_counts_move_when_messages_flow(alice, bob, lobby):
    sender, listener = await joined(alice), await joined(bob)
    before = await scrape()
    await send_message(sender, "counted", "c-1")
    assert (await sender.receive_json_from())["type"] == "ack"
    assert (await sender.receive_json_from())["type"] == "message"
    assert (await listener.receive_json_from())["type"] == "message"
    await send_message(sender, "", "c-2")  # refused: invalid
    assert (await sender.receive_json_from())["code"] == "invalid"
    after = await scrape()

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("voiceflow_messages_stored_total") == 1
    assert moved("voiceflow_frames_received_total", type="message") == 2
    assert moved("voiceflow_frames_sent_total", type="ack") == 1
    assert moved("voiceflow_frames_sent_total", type="message") == 2
    assert moved("voiceflow_errors_total", code="invalid") == 1
    assert moved("voiceflow_message_store_seconds_count") == 1
    assert moved("voiceflow_fanout_seconds_count") == 1
    assert value(after, "voiceflow_sockets") - value(before, "voiceflow_sockets") == 0
    await sender.disconnect()
    await listener.disconnect()


async def test_the_socket_gauge_follows_connections(alice, lobby):
    before = value(await scrape(), "voiceflow_sockets")
    socket = await joined(alice)
    assert value(await scrape(), "voiceflow_sockets") == before + 1
    await socket.disconnect()
    assert value(await scrape(), "voiceflow_sockets") == before


def test_every_operations_metric_is_exposed(db):
    text = Client().get("/metrics").content.decode()
    families = {family.name for family in text_string_to_metric_families(text)}
    assert {
        "voiceflow_sockets",
        "voiceflow_frames_received",
        "voiceflow_frames_sent",
        "voiceflow_messages_stored",
        "voiceflow_message_store_seconds",
        "voiceflow_db_batch_size",
        "voiceflow_fanout_seconds",
        "voiceflow_rate_limited",
        "voiceflow_errors",
        "voiceflow_sweep_runs",
        "voiceflow_sweep_removals",
        "voiceflow_socket_shed",
        "voiceflow_socket_overflow_closed",
    } <= families


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1"])
def test_loopback_clients_may_read_metrics(address):
    assert Client(REMOTE_ADDR=address).get("/metrics").status_code == 200


@pytest.mark.parametrize(
    "address",
    # Private networks too: a load balancer on one would make /metrics public.
    ["10.1.2.3", "192.168.0.9", "172.20.0.4", "fd00::1", "203.0.113.7", "8.8.8.8"]
    + ["2001:4860::1", "junk"],
)
def test_other_clients_are_refused_without_the_token(address, settings):
    settings.METRICS_TOKEN = ""
    assert Client(REMOTE_ADDR=address).get("/metrics").status_code == 403


def test_behind_a_trusted_proxy_the_forwarded_client_decides(settings):
    settings.METRICS_TOKEN = ""
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    proxied = Client(REMOTE_ADDR="127.0.0.1")
    assert (
        proxied.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.7").status_code == 403
    )
    assert proxied.get("/metrics").status_code == 200
    settings.TRUSTED_PROXIES = []  # an untrusted peer's header is ignored
    assert (
        proxied.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.7").status_code == 200
    )


def test_the_metrics_token_opens_it_to_others(settings):
    settings.METRICS_TOKEN = "s3cret-scraper"
    client = Client(REMOTE_ADDR="203.0.113.7")
    assert (
        client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-scraper").status_code
        == 200
    )
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert (
        client.get("/metrics", HTTP_AUTHORIZATION="Token s3cret-scraper").status_code
        == 403
    )
    assert client.get("/metrics").status_code == 403


def test_multiprocess_mode_adds_up_the_processes_files(lobby, tmp_path):
    servers = [
        ServerProcess(PROMETHEUS_MULTIPROC_DIR=str(tmp_path)).start() for _ in range(2)
    ]
    try:
        token = servers[0].register("alice")

        async def connect_and_scrape():
            sockets = [await websockets.connect(s.socket_url(token)) for s in servers]
            for socket in sockets:
                await socket.recv()  # hello
            text = await asyncio.to_thread(
                lambda: (
                    urllib.request.urlopen(servers[1].base + "/metrics").read().decode()
                )
            )
            for socket in sockets:
                await socket.close()
            return samples(text)

        figures = asyncio.run(connect_and_scrape())
        assert value(figures, "voiceflow_sockets") == 2  # one per process, summed
        assert value(figures, "voiceflow_frames_sent_total", type="hello") == 2
    finally:
        for server in servers:
            server.stop()
