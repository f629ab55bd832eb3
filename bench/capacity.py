"""Per-unit costs for the capacity model (docs/scaling.md, "Capacity").

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/vfbench \
        .venv/bin/python bench/capacity.py --rates 100,400 --sockets 3000

Starts a private redis-server and one web process (the Procfile's web line) on the
PostgreSQL database named in DATABASE_URL (a scratch one: it is migrated and gets
users, rooms and messages), then measures with bench/load.py, from /proc and Redis'
INFO:

- connects: `load.py idle --sockets N` (N/10 users, N/100 rooms), while its sockets
  open: CPU per socket opened (ticket, connect, hello, join);
- pings: the same sockets held, each pinging every --ping-interval s (above the
  presence touch interval, so each ping also touches presence, as at the 25 s
  heartbeat): CPU per ping, net of the idle process; and memory per socket;
- messages: `load.py fanout` (10 rooms x 20 members, 10 s) at each of --rates; the
  web process's and Redis' CPU per message between the first and the last rate (the
  set-up, the same in every run, cancels out), Redis commands per message, and the
  posts per group-commit statement at each rate.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,400", help="fan-out msgs/s, in all")
    parser.add_argument("--sockets", type=int, default=3000)
    parser.add_argument("--ping-interval", type=float, default=5.5)
    parser.add_argument("--window", type=float, default=30, help="s of pings")
    return parser.parse_args()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Redis:
    """A private redis-server: its CPU (INFO cpu) and calls per command."""

    def __init__(self):
        self.port = free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def info(self, section):
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), "INFO", section],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return dict(line.split(":", 1) for line in out.splitlines() if ":" in line[:60])

    def sample(self):
        cpu = self.info("cpu")
        calls = {
            name.removeprefix("cmdstat_"): int(value.split(",")[0].split("=")[1])
            for name, value in self.info("commandstats").items()
        }
        return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]), calls


def batches(url):
    """(posts, group-commit statements) so far: the process's voiceflow_db_batch_size
    histogram in /metrics (open to loopback)."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    values = dict(
        line.rsplit(" ", 1)
        for line in text.splitlines()
        if line.startswith("voiceflow_db_batch_size_")
    )
    return float(values["voiceflow_db_batch_size_sum"]), float(
        values["voiceflow_db_batch_size_count"]
    )


def web_start(env):
    port = free_port()
    line = next(
        line.split(":", 1)[1].strip()
        for line in (ROOT / "Procfile").read_text().splitlines()
        if line.startswith("web:")
    )
    log = open(f"/tmp/vf-capacity-{port}.log", "wb")
    process = subprocess.Popen(
        ["bash", "-c", f"exec {line}"],
        cwd=ROOT,
        env={**env, "PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(url + "/health/ready", timeout=1):
                return process, url
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the web process did not come up (log: {log.name})")


def load(url, pid, *args):
    command = [sys.executable, "bench/load.py", *args, "--url", url, "--json"]
    command += ["--server-pid", str(pid)]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)


def sockets_open(url):
    with urllib.request.urlopen(url + "/health", timeout=5) as response:
        return json.loads(response.read())["metrics"]["sockets"]["connections"]


def delta(before, after):
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def main():
    args = parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("DATABASE_URL must name a scratch PostgreSQL database")
    redis = Redis()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "REDIS_URL": redis.url,
        "HOST": "127.0.0.1",
        "SECRET_KEY": os.environ.get("SECRET_KEY", "benchmark-only"),
        "VOICEFLOW_RATE_LIMIT_MULTIPLIER": "1000",
        "VOICEFLOW_FAST_PASSWORD_HASHER": "1",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    web, url = web_start(env)
    try:
        idle = 10.0
        server = cpu_seconds(web.pid)
        time.sleep(idle)
        idle_rate = (cpu_seconds(web.pid) - server) / idle
        hold = args.ping_interval + args.window + 3
        holding = load(
            url,
            web.pid,
            "idle",
            "--sockets", str(args.sockets),
            "--users", str(args.sockets // 10),
            "--rooms", str(args.sockets // 100),
            "--concurrency", "32",
            "--hold", str(hold),
            "--ping-interval", str(args.ping_interval),
        )  # fmt: skip
        while sockets_open(url) == 0:  # users and rooms first
            time.sleep(0.05)
        opened, server = sockets_open(url), cpu_seconds(web.pid)
        rcpu, _ = redis.sample()
        while (now_open := sockets_open(url)) < args.sockets:
            if holding.poll() is not None:
                raise SystemExit("load.py idle ended before every socket was open")
            time.sleep(0.2)
        n = now_open - opened
        rcpu2, _ = redis.sample()
        print(f"connect  web {(cpu_seconds(web.pid) - server) * 1e3 / n:.2f} ms")
        print(f"connect  Redis {(rcpu2 - rcpu) * 1e3 / n:.2f} ms ({n} sockets)")
        time.sleep(args.ping_interval)  # every socket in its ping cycle
        server = cpu_seconds(web.pid)
        rcpu, calls = redis.sample()
        time.sleep(args.window)
        rcpu2, calls2 = redis.sample()
        pings = args.sockets / args.ping_interval * args.window
        net = cpu_seconds(web.pid) - server - idle_rate * args.window
        print(f"ping     web {net * 1e3 / pings:.3f} ms (net of idle)")
        print(f"ping     Redis {(rcpu2 - rcpu) * 1e6 / pings:.1f} us")
        per = {
            name: round(count / pings, 2)
            for name, count in delta(calls, calls2).items()
        }
        print(f"ping     Redis calls {json.dumps(per)}")
        out = json.loads(holding.communicate(timeout=300)[0])
        print(f"sockets  {out['open']} open, {out['kb_per_socket']:.1f} KB each")
        runs = []
        for rate in args.rates.split(","):
            server = cpu_seconds(web.pid)
            rcpu, calls = redis.sample()
            posts, statements = batches(url)
            fanout = ["fanout", "--rooms", "10", "--members", "20", "--rate", rate]
            out = json.loads(load(url, web.pid, *fanout).communicate(timeout=300)[0])
            rcpu2, calls2 = redis.sample()
            runs.append(
                {
                    "rate": float(rate),
                    "sent": out["sent"],
                    "acked": out["acked"],
                    "p99_ms": round(out["p99_ms"], 1),
                    "server_s": cpu_seconds(web.pid) - server,
                    "redis_s": rcpu2 - rcpu,
                    "calls": delta(calls, calls2),
                    "posts_per_statement": round(
                        (batches(url)[0] - posts)
                        / max(1, batches(url)[1] - statements),
                        2,
                    ),
                }
            )
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "calls"}))
        low, high = runs[0], runs[-1]
        n = high["sent"] - low["sent"]
        calls = delta(low["calls"], high["calls"])
        print(f"message  web {(high['server_s'] - low['server_s']) * 1e3 / n:.3f} ms")
        print(f"message  Redis {(high['redis_s'] - low['redis_s']) * 1e6 / n:.1f} us")
        per = {name: round(count / n, 1) for name, count in calls.items()}
        print(f"message  Redis calls {json.dumps({k: v for k, v in per.items() if v})}")

    finally:
        web.terminate()
        web.wait(30)
        redis.process.terminate()
        redis.process.wait(10)


if __name__ == "__main__":
    main()
