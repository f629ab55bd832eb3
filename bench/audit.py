"""Loss-and-duplicate audit: N clients chat through a fault; count what arrived.

    .venv/bin/python bench/audit.py --fault kill9 --clients 8 --seconds 6
    .venv/bin/python bench/audit.py --fault redis-restart
    .venv/bin/python bench/audit.py --fault sigterm --database-url postgres://postgres@127.0.0.1:5432/vf_audit

It starts a private redis-server, two web processes (the Procfile's web line) and the
sweeper on one database (a fresh SQLite file unless --database-url names an existing,
migrated-or-migratable one), or uses --url (one or more running servers; no fault is
injected then). Each client follows the contract: it resends unacked messages with the
same client_id after a reconnect, re-joins with `since`, and fills seq gaps. Half the
clients prefer the process the fault hits. At the end the room's history (REST) is
compared with what each client acked and holds. Prints one line per figure.
"""

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--fault", choices=["none", "kill9", "redis-restart", "sigterm"]
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6, help="traffic duration")
    parser.add_argument("--interval", type=float, default=0.05, help="s between sends")
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    parser.add_argument("--url", action="append", help="running server(s) instead")
    args = parser.parse_args()
    args.fault = args.fault or ("none" if args.url else "kill9")
    return args


def start_deployment(args):
    """(servers, sweeper, redis) started for the audit."""
    database_url = args.database_url or (
        f"sqlite:///{tempfile.mkdtemp(prefix='vf-audit-')}/audit.sqlite3"
    )
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceflow.settings")
    os.environ.setdefault("SECRET_KEY", "audit-only-secret-key")
    import django

    django.setup()
    from voiceflow.tests.servers import RedisServer, ServerProcess, SweeperProcess

    env = {**os.environ, "SECRET_KEY": "audit-only-secret-key"}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    redis = RedisServer().start()
    process_env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis.url,
        "REDIS_KEY_PREFIX": f"audit{uuid.uuid4().hex[:6]}",
        "VOICEFLOW_RATE_LIMIT_MULTIPLIER": "1000",
        "VOICEFLOW_OFFLINE_GRACE": "3",
        "VOICEFLOW_DRAIN_WINDOW": "1",
        "VOICEFLOW_DRAIN_TIMEOUT": "5",
    }
    servers = [ServerProcess(**process_env), ServerProcess(**process_env)]
    for server in servers:
        server.start()
    sweeper = SweeperProcess(servers[1], interval=1).start()
    return servers, sweeper, redis


async def inject(fault, servers, redis, at):
    await asyncio.sleep(at)
    started = time.monotonic()
    if fault == "kill9":
        servers[0].stop(signal.SIGKILL)
    elif fault == "sigterm":  # a deploy: the process drains, a new one takes its port
        await asyncio.to_thread(servers[0].stop, signal.SIGTERM)
        servers[0] = type(servers[0])(port=servers[0].port, **_extra_env(servers[0]))
        await asyncio.to_thread(servers[0].start)
    elif fault == "redis-restart":
        redis.kill()
        await asyncio.sleep(1)
        await asyncio.to_thread(redis.start)
    print(
        f"fault        {fault} at {at:.1f} s, "
        f"done in {time.monotonic() - started:.1f} s"
    )


def _extra_env(server):
    keys = ("DATABASE_URL", "REDIS_URL", "REDIS_KEY_PREFIX")
    return {k: server.env[k] for k in keys} | {
        k: v for k, v in server.env.items() if k.startswith("VOICEFLOW_")
    }


def history(base, token, slug):
    from voiceflow.tests.servers import ServerProcess

    api = ServerProcess.__new__(ServerProcess)
    api.base = base
    messages, after = [], 0
    while True:
        status, page = api.request(
            "GET", f"/api/rooms/{slug}/messages/?after={after}&limit=200", token=token
        )
        assert status == 200, page
        messages += page["results"]
        if not page["has_more"]:
            return messages
        after = page["results"][-1]["seq"]


async def main():
    args = parse_args()
    servers = sweeper = redis = None
    if args.url:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceflow.settings")
        import django

        django.setup()
        from voiceflow.tests.servers import ServerProcess

        bases = [url.rstrip("/") for url in args.url]
    else:
        servers, sweeper, redis = await asyncio.to_thread(start_deployment, args)
        bases = [s.base for s in servers]
    from voiceflow.tests.clients import Client, audit, settle, steady_traffic
    from voiceflow.tests.servers import ServerProcess

    api = ServerProcess.__new__(ServerProcess)
    try:
        api.base = bases[-1]
        run = uuid.uuid4().hex[:6]
        tokens = [api.register(f"audit-{run}-{i}") for i in range(args.clients)]
        slug = f"audit-{run}"
        status, body = api.request(
            "POST", "/api/rooms/", {"name": slug, "slug": slug}, tokens[0]
        )
        assert status == 201, body
        clients = [
            Client(f"c{i}", token, bases if i % 2 == 0 else bases[::-1], room=slug)
            for i, token in enumerate(tokens)
        ]
        runs = [asyncio.ensure_future(c.run()) for c in clients]
        if not await settle(clients, timeout=15):
            raise SystemExit("clients did not connect")
        started = time.monotonic()
        tasks = [steady_traffic(clients, args.seconds, args.interval)]
        if args.fault != "none":
            tasks.append(inject(args.fault, servers, redis, args.seconds / 3))
        await asyncio.gather(*tasks)
        settled = await settle(clients, timeout=30)
        took = time.monotonic() - started
        for c in clients:
            if c.outbox or not c.connected:
                print(
                    f"unsettled    {c.name}: {len(c.outbox)} unacked, "
                    f"connected={c.connected}, last_seq={c.last_seq}"
                )
        stored = await asyncio.to_thread(history, bases[-1], tokens[0], slug)
        report = audit(clients, stored)
        for client in clients:
            client.stop()
        await asyncio.gather(*runs)
        print(
            f"clients      {args.clients} ({sum(c.connects for c in clients)} connects)"
        )
        print(f"settled      {settled} after {took:.1f} s")
        for name in (
            "sent",
            "acked",
            "unacked",
            "stored",
            "delivered",
            "expected_deliveries",
            "lost_acked",
            "lost_deliveries",
            "duplicated",
            "redelivered_frames",
        ):
            print(f"{name:<12} {report[name]}")
        codes = sorted({code for c in clients for code in c.close_codes}, key=str)
        print(f"close codes  {json.dumps(codes)}")
        ok = settled and not (
            report["unacked"]
            or report["lost_acked"]
            or report["lost_deliveries"]
            or report["duplicated"]
        )
        print(
            "result       " + ("OK: nothing lost, nothing duplicated" if ok else "FAIL")
        )
        return 0 if ok else 1
    finally:
        if sweeper:
            sweeper.stop()
        for server in servers or []:
            server.stop()
        if redis:
            redis.kill()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
