"""`python -m voiceflow.server`: the Procfile's web process, uvicorn that drains.

uvicorn alone closes every socket at once with 1012 on SIGTERM, cutting off frames in
hand. This server stops accepting, lets each socket finish the frame it is handling
(its write and ack), closes them with 1012 spread over VOICEFLOW_DRAIN_WINDOW, and then
shuts down as uvicorn does, all within VOICEFLOW_DRAIN_TIMEOUT. It also sets the GIL
switch interval and the garbage collector's thresholds, and freezes what startup built.
"""

import argparse
import asyncio
import gc
import logging
import os
import sys

import uvicorn

logger = logging.getLogger("voiceflow.server")


class DrainingServer(uvicorn.Server):
    async def startup(self, sockets=None):
        # What exists now (modules, the app, settings) lives as long as the process:
        # frozen, the collector never scans it again.
        gc.freeze()
        from django.conf import settings

        if settings.MEMORY_DEBUG_DIR:
            from voiceflow import memory_debug

            memory_debug.install(asyncio.get_running_loop(), settings.MEMORY_DEBUG_DIR)
        await super().startup(sockets=sockets)

    async def shutdown(self, sockets=None):
        from django.conf import settings

        from chat.sockets import sockets_drain

        loop = asyncio.get_running_loop()
        started = loop.time()
        for server in self.servers:
            server.close()  # stop accepting first
        for sock in sockets or []:
            sock.close()
        conf = settings.VOICEFLOW
        timeout = conf["DRAIN_TIMEOUT"]
        try:
            await sockets_drain(conf["DRAIN_WINDOW"], timeout * 0.8)
        except Exception:
            logger.exception("socket drain failed; closing the rest at once")
        # What is left (HTTP requests, sockets still connecting) gets uvicorn's own
        # shutdown, bounded by the rest of the timeout.
        self.config.timeout_graceful_shutdown = max(
            0.1, timeout - (loop.time() - started)
        )
        await super().shutdown()
        await _loop_clients_close()


async def _loop_clients_close():
    """Close the loop's own PostgreSQL and Redis connections, so neither logs an EOF."""
    from voiceflow.db import loop_connections_close
    from voiceflow.redis import redis_clients_close

    try:
        await loop_connections_close()
        await redis_clients_close()
    except Exception:
        logger.warning("closing database and Redis connections failed", exc_info=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("HOST") or "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
    parser.add_argument("--ws-max-size", type=int, default=65536)
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceflow.settings")
    from django.conf import settings

    conf = settings.VOICEFLOW
    # The database threads wait for the GIL after every PostgreSQL reply; with the
    # default 5 ms switch interval and a busy event loop, each insert waited that long
    # several times over (acks/s at 300 msgs/s offered: 222 at 5 ms, 282-293 at 0.5 ms).
    sys.setswitchinterval(settings.GIL_SWITCH_INTERVAL)
    gc.set_threshold(*settings.GC_THRESHOLD)
    if settings.MEMORY_DEBUG_DIR:
        from voiceflow import memory_debug

        memory_debug.tracing_start(settings.TRACEMALLOC_FRAMES)
    config = uvicorn.Config(
        "voiceflow.asgi:application",
        interface="asgi3",
        host=args.host,
        port=args.port,
        http="voiceflow.websocket:UpgradingHttpProtocol",
        ws="voiceflow.websocket:BatchingWebSocketProtocol",
        ws_max_size=args.ws_max_size,
        ws_per_message_deflate=conf["WS_DEFLATE"],
        ws_ping_interval=conf["WS_PING_INTERVAL"],
        ws_ping_timeout=conf["WS_PING_TIMEOUT"],
        lifespan="off",
        server_header=False,
        # uvicorn would trust X-Forwarded-For/-Proto from loopback whatever
        # TRUSTED_PROXIES says; chat.ratelimit.client_ip reads them, for trusted
        # proxies only.
        proxy_headers=False,
    )
    DrainingServer(config).run()


if __name__ == "__main__":
    main()
