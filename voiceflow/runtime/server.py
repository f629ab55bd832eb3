"""`python -m voiceflow.runtime.server`: the Procfile's web line, uvicorn that drains.

uvicorn alone closes every socket at once with 1012 on SIGTERM, cutting off frames in
hand. This server stops accepting, lets each socket finish the frame it is handling
(its write and ack), closes them with 1012 spread over VOICEFLOW_DRAIN_WINDOW, and then
shuts down as uvicorn does, all within VOICEFLOW_DRAIN_TIMEOUT. It also sets the GIL
switch interval and the garbage collector's thresholds, and freezes what startup built.

With WEB_CONCURRENCY=N (N > 1, shared mode) this process binds the listening socket
and supervises N worker processes that accept on it, each such a server: SIGTERM or
SIGINT drains every worker, then the supervisor exits; a worker that dies otherwise
is started again.
"""

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import uvicorn

from voiceflow.runtime import runtime, runtime_close

logger = logging.getLogger("voiceflow.runtime.server")


def _resolve(waiter):
    if not waiter.done():
        waiter.set_result(None)


class DrainingServer(uvicorn.Server):
    # While the main loop waits: its loop and the future that wakes it.
    _wake: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None = None

    @property
    def should_exit(self):
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value):
        self._should_exit = value
        wake = self._wake
        if value and wake is not None:
            # Set by a signal handler too, between any two bytecodes: woken the
            # thread-safe way.
            wake[0].call_soon_threadsafe(_resolve, wake[1])

    async def main_loop(self):
        """uvicorn's, without waking every 0.1 s to see whether to exit: once a
        second (the Date header's resolution), and at once when should_exit is set."""
        loop = asyncio.get_running_loop()
        while not await self.on_tick(0):  # tick 0: the Date header is refreshed
            waiter = loop.create_future()
            timer = loop.call_later(1.0, _resolve, waiter)
            self._wake = (loop, waiter)
            try:
                if not self.should_exit:  # not set since on_tick looked
                    await waiter
            finally:
                self._wake = None
                timer.cancel()

    async def startup(self, sockets=None):
        from django.conf import settings

        # The database threads wait for the GIL after every PostgreSQL reply; with the
        # default 5 ms switch interval and a busy event loop, each insert would wait
        # that long several times over.
        sys.setswitchinterval(settings.GIL_SWITCH_INTERVAL)
        gc.set_threshold(*settings.GC_THRESHOLD)
        runtime().serving = True  # the process's one: its loop's clients, hub...
        # What exists now (modules, the app, settings) lives as long as the process:
        # frozen, the collector never scans it again.
        gc.freeze()
        if settings.MEMORY_DEBUG_DIR:
            from voiceflow import memory_debug

            memory_debug.install(asyncio.get_running_loop(), settings.MEMORY_DEBUG_DIR)
        await super().startup(sockets=sockets)
        if sockets is not None:  # a worker: drain if the supervisor is gone
            self._orphan_watch = asyncio.ensure_future(self._supervisor_watch())

    async def _supervisor_watch(self):
        parent = os.getppid()
        while not self.should_exit:
            await asyncio.sleep(1)
            if os.getppid() != parent:
                logger.warning(
                    "the supervisor is gone; draining",
                    extra={"event": "worker_orphaned"},
                )
                self.should_exit = True

    async def shutdown(self, sockets=None):
        from django.conf import settings

        from chat.sockets import sockets_drain
        from voiceflow.health import draining_start

        draining_start()
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
        try:
            await runtime_close()
        except Exception:
            logger.warning("closing the runtime's connections failed", exc_info=True)


class Supervisor:
    """N workers on one inherited listening socket; restarts those that die.

    One socket (one accept queue) rather than a socket per worker with SO_REUSEPORT:
    a worker killed with connections waiting in its own queue would lose them, while
    here the others accept them; and a worker busy with a burst accepts less.
    """

    # A worker that dies this soon after starting, this many times in a row, stops
    # the supervisor: the app itself is broken, restarting it would only spin.
    QUICK_DEATH = 5.0
    QUICK_DEATHS_MAX = 3

    def __init__(self, sock, argv, workers, drain_timeout):
        self.sock = sock
        self.argv = argv
        self.count = workers
        self.drain_timeout = drain_timeout
        self.workers = {}  # slot -> (Popen, started at)
        self.quick_deaths = 0
        self.stopping = False
        self.failed = False

    def _spawn(self, slot):
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "voiceflow.runtime.server",
                *self.argv,
                "--worker-fd",
                str(self.sock.fileno()),
            ],
            pass_fds=[self.sock.fileno()],
        )
        self.workers[slot] = (process, time.monotonic())
        logger.info(
            "worker %s started (pid %s)",
            slot,
            process.pid,
            extra={"event": "worker_started", "worker": slot, "pid": process.pid},
        )

    def _stop(self, signum, frame):
        self.stopping = True

    def _reap(self):
        for slot, (process, started) in list(self.workers.items()):
            code = process.poll()
            if code is None:
                continue
            del self.workers[slot]
            if self.stopping:
                continue
            logger.error(
                "worker %s (pid %s) died with %s; starting another",
                slot,
                process.pid,
                code,
                extra={
                    "event": "worker_died",
                    "worker": slot,
                    "pid": process.pid,
                    "code": code,
                },
            )
            if time.monotonic() - started < self.QUICK_DEATH:
                self.quick_deaths += 1
            else:
                self.quick_deaths = 0
            if self.quick_deaths >= self.QUICK_DEATHS_MAX:
                logger.error(
                    "workers die at start; stopping",
                    extra={"event": "workers_failing"},
                )
                self.failed = self.stopping = True
                return
            self._spawn(slot)

    def run(self):
        """Serve until SIGTERM or SIGINT; then drain every worker and return."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        for slot in range(1, self.count + 1):
            self._spawn(slot)
        while not self.stopping:
            self._reap()
            time.sleep(0.1)
        # Closed here too, so once the workers close theirs new connections are
        # refused (a balancer retries elsewhere) instead of waiting in the queue.
        self.sock.close()
        logger.info(
            "draining %s workers",
            len(self.workers),
            extra={"event": "workers_draining"},
        )
        for process, _ in self.workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.drain_timeout + 5
        for process, _ in self.workers.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return 1 if self.failed else 0


def _workers(settings):
    """How many worker processes to run: WEB_CONCURRENCY, but one in embedded mode."""
    if settings.WEB_CONCURRENCY > 1 and settings.EMBEDDED:
        logger.warning(
            "WEB_CONCURRENCY=%s ignored: embedded mode (no REDIS_URL) keeps the "
            "channel layer, presence and tickets in one process's memory; "
            "running one process",
            settings.WEB_CONCURRENCY,
            extra={"event": "web_concurrency_ignored"},
        )
        return 1
    return settings.WEB_CONCURRENCY


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("HOST") or "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
    parser.add_argument("--ws-max-size", type=int, default=65536)
    parser.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceflow.settings")
    from django.conf import settings
    from django.utils.log import configure_logging

    conf = settings.VOICEFLOW
    if settings.MEMORY_DEBUG_DIR:
        from voiceflow import memory_debug

        memory_debug.tracing_start(settings.TRACEMALLOC_FRAMES)
    config = uvicorn.Config(
        "voiceflow.asgi:application",
        interface="asgi3",
        host=args.host,
        port=args.port,
        http="voiceflow.runtime.websocket:UpgradingHttpProtocol",
        ws="voiceflow.runtime.websocket:BatchingWebSocketProtocol",
        ws_max_size=args.ws_max_size,
        ws_per_message_deflate=conf["WS_DEFLATE"],
        ws_ping_interval=conf["WS_PING_INTERVAL"] or None,  # 0: no keepalive pings
        ws_ping_timeout=conf["WS_PING_TIMEOUT"],
        lifespan="off",
        server_header=False,
        # uvicorn would trust X-Forwarded-For/-Proto from loopback whatever
        # TRUSTED_PROXIES says; chat.ratelimit.client_ip reads them, for trusted
        # proxies only.
        proxy_headers=False,
    )
    if args.worker_fd is not None:
        sock = socket.socket(fileno=args.worker_fd)
        DrainingServer(config).run(sockets=[sock])
        return 0
    configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)
    workers = _workers(settings)
    if workers == 1:
        DrainingServer(config).run()
        return 0
    sock = config.bind_socket()
    passed = ["--host", args.host, "--port", str(args.port)]
    passed += ["--ws-max-size", str(args.ws_max_size)]
    return Supervisor(sock, passed, workers, conf["DRAIN_TIMEOUT"]).run()


if __name__ == "__main__":
    sys.exit(main())
