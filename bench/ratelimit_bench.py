"""Rate-limiter throughput against real Redis, one process (a benchmark, not a test).

    REDIS_URL=redis://127.0.0.1:6379/12 .venv/bin/python bench/ratelimit_bench.py

Prints checks/s: sequential (async and sync clients), then N concurrent tasks on one
event loop, for allowed hits (ZADD path) and refused hits (a key over its limit), and
the in-memory twin for comparison. Keys use a unique prefix and are deleted afterwards.
"""

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceflow.settings")
os.environ.setdefault("SECRET_KEY", "benchmark-only")

import django  # noqa: E402

django.setup()

import redis  # noqa: E402

from chat.ratelimit import MemoryRateLimiter, RedisRateLimiter  # noqa: E402

PREFIX = f"vfbench:{uuid.uuid4().hex[:8]}"
USERS = 1000  # keys the allowed-hit runs spread over


def key(i):
    return f"{PREFIX}:rl:message:{i % USERS}"


async def sequential(limiter, checks, *, refused):
    latencies = []
    for i in range(checks):
        started = time.perf_counter()
        await limiter.hit(
            key(0 if refused else i), 30 if refused else 10**9, 60, time.time()
        )
        latencies.append(time.perf_counter() - started)
    return latencies


def sequential_sync(limiter, checks, *, refused):
    latencies = []
    for i in range(checks):
        started = time.perf_counter()
        limiter.hit_sync(
            key(0 if refused else i), 30 if refused else 10**9, 60, time.time()
        )
        latencies.append(time.perf_counter() - started)
    return latencies


async def concurrent(limiter, checks, tasks, *, refused):
    per_task = checks // tasks

    async def worker(t):
        for i in range(per_task):
            n = t * per_task + i
            await limiter.hit(
                key(0 if refused else n), 30 if refused else 10**9, 60, time.time()
            )

    started = time.perf_counter()
    await asyncio.gather(*(worker(t) for t in range(tasks)))
    return per_task * tasks / (time.perf_counter() - started)


def report(name, latencies):
    total = sum(latencies)
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[int(len(ms) * 0.99) - 1]
    print(
        f"{name:<58} {len(latencies) / total:>9,.0f} checks/s"
        f"   p50 {statistics.median(ms):.3f} ms   p99 {p99:.3f} ms"
    )


async def main(url, checks, task_counts):
    limiter = RedisRateLimiter(url)
    print(f"Redis {url}, {checks} checks a run, key prefix {PREFIX}")
    await limiter.hit(key(0), 10**9, 60, time.time())  # connect and load the script
    for refused in (False, True):
        label = "refused (key over its limit)" if refused else "allowed (1000 keys)"
        report(
            f"async sequential, {label}",
            await sequential(limiter, checks, refused=refused),
        )
        report(
            f"sync sequential, {label}",
            await asyncio.to_thread(sequential_sync, limiter, checks, refused=refused),
        )
        for tasks in task_counts:
            rate = await concurrent(limiter, checks, tasks, refused=refused)
            name = f"async {tasks} concurrent tasks, {label}"
            print(f"{name:<58} {rate:>9,.0f} checks/s")
    memory = MemoryRateLimiter()
    report("in-memory twin, allowed", await sequential(memory, checks, refused=False))
    client = redis.Redis.from_url(url)
    client.delete(*[key(i) for i in range(USERS)])
    client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--checks", type=int, default=20_000)
    parser.add_argument(
        "--tasks", default="10,50,200", help="comma list of task counts"
    )
    args = parser.parse_args()
    asyncio.run(
        main(args.redis_url, args.checks, [int(t) for t in args.tasks.split(",")])
    )
