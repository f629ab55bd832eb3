"""A VoiceFlow deployment on one machine: `make cluster` / `make cluster-down`.

    python deploy/cluster.py start [--port 8000] [--database-url postgres://...]
    python deploy/cluster.py status
    python deploy/cluster.py roll
    python deploy/cluster.py stop

`start` runs, all on 127.0.0.1: a private Redis primary, a replica of it and three
Sentinels that fail over to the replica, PgBouncer in transaction pooling in front of
PostgreSQL, three web processes (the Procfile's web line, WEB_CONCURRENCY
workers each), the sweeper, and HAProxy (deploy/haproxy.cfg) balancing the web
processes. Pid files, logs and generated configuration go under --state (default
.cluster/, git-ignored). `roll` replaces the web processes one at a time behind
HAProxy (a rolling deploy: each is taken out of HAProxy, drained, started again from
the Procfile on its port, and put back once HAProxy's own check passes), then the
sweeper. `stop` stops HAProxy, drains the web processes (SIGTERM) and stops the rest.
Other VOICEFLOW_* and WEB_CONCURRENCY variables in the environment reach the web
processes as they are, at `start` and at `roll`.
"""

import argparse
import csv
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
WEB_COUNT = 3  # deploy/haproxy.cfg names three servers
SENTINEL_COUNT = 3  # the fewest that still fail over with one of them down
HAPROXY_SOURCE = "127.0.0.2"  # HAProxy's address towards the web processes
# Stopped in this order: the balancer first, so no new client lands on a process
# that is going away; the stores last, so draining processes can still use them.
STOP_ORDER = ["haproxy", *(f"web{n}" for n in range(1, WEB_COUNT + 1))]
STOP_ORDER += ["sweeper", "pgbouncer"]
# The Sentinels before the Redis servers: no failover on the way out.
STOP_ORDER += [
    *(f"sentinel{n}" for n in range(1, SENTINEL_COUNT + 1)),
    "redis2",
    "redis1",
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status", "roll"])
    parser.add_argument("--state", type=Path, default=ROOT / ".cluster")
    parser.add_argument("--port", type=int, default=8000, help="HAProxy's port")
    parser.add_argument("--stats-port", type=int, default=8404)
    parser.add_argument(
        "--web-ports",
        default="8101,8102,8103",
        help=f"{WEB_COUNT} comma-separated ports of the web processes",
    )
    parser.add_argument("--redis-port", type=int, default=6380, help="the primary's")
    parser.add_argument("--redis-replica-port", type=int, default=6381)
    parser.add_argument(
        "--sentinel-ports",
        default="26380,26381,26382",
        help=f"{SENTINEL_COUNT} comma-separated ports of the Redis Sentinels",
    )
    parser.add_argument("--pgbouncer-port", type=int, default=6432)
    parser.add_argument(
        "--database-url",
        default="postgres://postgres@127.0.0.1:5432/voiceflow_cluster",
        help="PostgreSQL (created and migrated if missing), or sqlite:////path "
        "(no PgBouncer then)",
    )
    parser.add_argument(
        "--no-migrate", action="store_true", help="the database is migrated already"
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=20,
        help="stop, roll: seconds a web process has to exit after SIGTERM before it "
        "is killed: above VOICEFLOW_DRAIN_TIMEOUT (10 s) + 5 s",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="roll: seconds between taking a web process out of HAProxy and its "
        "SIGTERM, for connections HAProxy opened just before to be accepted",
    )
    return parser.parse_args(argv)


def port_free(port):
    with socket.socket() as sock:
        # As the servers bind: a port left in TIME_WAIT by the last run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until(check, what, timeout=20, process=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise SystemExit(f"{what} exited at start:\n{tail}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not come up within {timeout} s (log: {log})")


def http_status(url, timeout=2):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def port_open(port):
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


class State:
    """The --state directory: pid files, logs, generated configuration."""

    def __init__(self, path):
        self.path = Path(path).resolve()
        self.logs = self.path / "logs"

    def pid(self, name):
        try:
            return int((self.path / f"{name}.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def alive(self, name):
        pid = self.pid(name)
        if pid is None:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"  # exited, not yet reaped

    def start(self, name, argv, env=None, cwd=ROOT):
        """Start `argv` in a session of its own, logging to logs/<name>.log."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.path / f"{name}.pid").write_text(f"{process.pid}\n")
        return process, log

    def stop(self, name, timeout):
        """SIGTERM, then SIGKILL to its whole session after `timeout` seconds."""
        pid = self.pid(name)
        if pid is not None and self.alive(name):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.alive(name) and time.monotonic() < deadline:
                time.sleep(0.1)
                _reap(pid)
            if self.alive(name):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        (self.path / f"{name}.pid").unlink(missing_ok=True)


def _reap(pid):
    """Collect `pid` if it is our own exited child (a test's cluster)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# Redis: a primary and a replica, watched by three Sentinels (a quorum of two), which
# the web processes and the sweeper ask for the primary. Timings for one machine: a
# primary silent for SENTINEL_DOWN_AFTER_MS is down, and a failover not done within
# SENTINEL_FAILOVER_TIMEOUT_MS is given up and tried again later (docs/scaling.md has
# production values).
SENTINEL_MASTER = "voiceflow"
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 2000


def redis_server_start(state, name, port, *options):
    """A private redis-server on `port`, keeping nothing on disk."""
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port)]
    # --dir: a replica writes the primary's snapshot there even with --save "".
    argv += ["--save", "", "--appendonly", "no", "--dir", str(state.path), *options]
    process, log = state.start(name, argv)
    wait_until(lambda: port_open(port), name, process=process, log=log)


def redis_answers(port, check):
    """check(client) on the Redis or Sentinel at `port`; False while it fails."""
    import redis

    client = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
    try:
        return check(client)
    except redis.RedisError:
        return False
    finally:
        client.close()


def redis_start(state, port, replica_port, sentinel_ports):
    """The Redis servers and Sentinels; the settings that make a process use them."""
    redis_server_start(state, "redis1", port)
    redis_server_start(
        state, "redis2", replica_port, "--replicaof", "127.0.0.1", str(port)
    )
    wait_until(
        lambda: redis_answers(
            replica_port,
            lambda r: r.info("replication")["master_link_status"] == "up",
        ),
        "the Redis replica's link to the primary",
    )
    quorum = len(sentinel_ports) // 2 + 1
    for n, sentinel_port in enumerate(sentinel_ports, 1):
        # Sentinel rewrites its file with what it learns (replicas, other Sentinels).
        conf = state.path / f"sentinel{n}.conf"
        conf.write_text(
            f"bind 127.0.0.1\nport {sentinel_port}\ndir {state.path}\n"
            f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {port} {quorum}\n"
            f"sentinel down-after-milliseconds {SENTINEL_MASTER} "
            f"{SENTINEL_DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SENTINEL_MASTER} "
            f"{SENTINEL_FAILOVER_TIMEOUT_MS}\n"
        )
        process, log = state.start(
            f"sentinel{n}", ["redis-server", str(conf), "--sentinel"]
        )
        wait_until(
            lambda p=sentinel_port: port_open(p),
            f"sentinel{n}",
            process=process,
            log=log,
        )
    return {
        # With Sentinel, REDIS_URL gives the database (and a password, if any).
        "REDIS_URL": f"redis://{SENTINEL_MASTER}/0",
        "REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in sentinel_ports),
        "REDIS_SENTINEL_MASTER": SENTINEL_MASTER,
    }


def redis_sentinels_wait(sentinel_ports):
    """Until each Sentinel knows the replica and the other Sentinels (they meet
    through the primary every 2 s): before that a failover would not happen."""

    def knows_all(sentinel):
        master = sentinel.sentinel_master(SENTINEL_MASTER)
        others = len(sentinel_ports) - 1
        return master["num-slaves"] >= 1 and master["num-other-sentinels"] >= others

    wait_until(
        lambda: all(redis_answers(port, knows_all) for port in sentinel_ports),
        "the Redis Sentinels",
    )


def pgbouncer_start(state, port, database_url, pool_size=10):
    """PgBouncer in transaction pooling on `port`, in front of `database_url`'s
    server; the URL that reaches the same database through it."""
    url = urlsplit(database_url)
    user = unquote(url.username or "postgres")
    server = f"host={url.hostname or '127.0.0.1'} port={url.port or 5432}"
    if url.password:
        server += f" user={user} password={unquote(url.password)}"
    state.path.mkdir(parents=True, exist_ok=True)
    users = state.path / "pgbouncer-users.txt"
    users.write_text(f'"{user}" ""\n')
    ini = state.path / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"* = {server}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        # Clients are this machine's own processes; the server checks passwords.
        "auth_type = trust\n"
        f"auth_file = {users}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        "max_client_conn = 2000\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    argv = ["pgbouncer", str(ini)]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        argv[1:1] = ["-u", "nobody"]
        for path in (state.path, users, ini):
            path.chmod(0o755 if path.is_dir() else 0o644)
    process, log = state.start("pgbouncer", argv)
    wait_until(lambda: port_open(port), "pgbouncer", process=process, log=log)
    netloc = f"{url.username}@" if url.username else ""
    if url.password:
        netloc = f"{url.username}:{url.password}@"
    return f"postgres://{netloc}127.0.0.1:{port}{url.path}"


def database_prepare(database_url, env, migrate):
    """Create the PostgreSQL database if missing, then migrate it."""
    if database_url.startswith("postgres"):
        import psycopg

        url = urlsplit(database_url)
        name = unquote(url.path.lstrip("/"))
        server = database_url.replace(url.path, "/postgres", 1)
        with psycopg.connect(server, autocommit=True) as conn:
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [name]
            ).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
    if migrate:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=ROOT,
            env={**env, "DATABASE_URL": database_url},
            check=True,
            stdout=subprocess.DEVNULL,
        )


def procfile_command(name):
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise SystemExit(f"Procfile has no {name} line")


def secret_key(state):
    path = state.path / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def process_env(state, own):
    """The environment of the web processes and the sweeper: this one, with the
    deployment's own variables on top."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or secret_key(state),
        **own,
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def web_start(state, n, port, env):
    """Web process `n` (the Procfile's line, read now) on `port`: (Popen, log)."""
    command = ["bash", "-c", f"exec {procfile_command('web')}"]
    return state.start(f"web{n}", command, {**env, "PORT": str(port)})


def web_wait_ready(port, process, log):
    wait_until(
        lambda: http_status(f"http://127.0.0.1:{port}/health/ready") == 200,
        f"web process on {port}",
        timeout=60,
        process=process,
        log=log,
    )


def sweeper_start(state, env):
    command = ["bash", "-c", f"exec {procfile_command('sweeper')}"]
    return state.start("sweeper", command, env)


def haproxy_command(state, command):
    """One command on HAProxy's admin socket (management guide, "stats socket"):
    its answer."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(state.path / "haproxy.sock"))
        sock.sendall(f"{command}\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer.decode()


def haproxy_set(state, command):
    """A `set ...` command, which answers nothing when it worked."""
    answer = haproxy_command(state, command).strip()
    if answer:
        raise SystemExit(f"HAProxy refused `{command}`: {answer}")


def haproxy_states(state):
    """HAProxy's view of each web process: {"web1": "UP", ...} ("DOWN", "MAINT")."""
    text = haproxy_command(state, "show stat").lstrip("# ")
    return {
        row["svname"]: row["status"]
        for row in csv.DictReader(io.StringIO(text))
        if row["pxname"] == "web" and row["svname"] != "BACKEND"
    }


def haproxy_up(state, names):
    """Whether HAProxy sends traffic to each of `names` ("UP 1/2": one check failed)."""
    states = haproxy_states(state)
    return all(states[name].startswith("UP") for name in names)


def roll(args):
    """Replace every web process, one at a time, then the sweeper (a deploy).

    Each web process is put in maintenance in HAProxy first, so no request and no new
    socket reaches it from then on: it is never sent a request that it would refuse
    while it stops. After --settle seconds (connections HAProxy opened just before
    are accepted by then) it gets SIGTERM and drains: requests in progress are
    answered, sockets are closed with 1012 over VOICEFLOW_DRAIN_WINDOW and their
    clients reconnect through HAProxy to the other processes. Once it has exited,
    the Procfile's web line starts again on the same port (the new code, and the
    VOICEFLOW_* variables of this environment). When it answers /health/ready, it
    leaves maintenance for drain (checked, sent nothing) marked down; once HAProxy's
    own checks pass (rise 2) it is put back in rotation. Then the next one. A process
    is taken out only while all the others are UP.
    """
    state = State(args.state)
    try:
        config = json.loads((state.path / "web.json").read_text())
    except FileNotFoundError:
        raise SystemExit("no cluster here (make cluster)") from None
    if not state.alive("haproxy"):
        raise SystemExit("HAProxy is not running (make cluster-down; make cluster)")
    env = process_env(state, config["env"])
    names = [f"web{n}" for n in range(1, len(config["ports"]) + 1)]
    began = time.monotonic()
    for n, port in enumerate(config["ports"], 1):
        name = f"web{n}"
        others = [other for other in names if other != name]
        wait_until(
            lambda others=others: haproxy_up(state, others),
            f"HAProxy showing {', '.join(others)} UP before taking {name} out",
            timeout=30,
        )
        started = time.monotonic()
        old = state.pid(name)
        haproxy_set(state, f"set server web/{name} state maint")
        time.sleep(args.settle)
        state.stop(name, timeout=args.stop_timeout)
        process, log = web_start(state, n, port, env)
        web_wait_ready(port, process, log)
        # Checked again but sent nothing (drain), marked down: HAProxy's own checks
        # must pass (rise) before it is sent traffic, as for any server coming up.
        haproxy_set(state, f"set server web/{name} state drain")
        haproxy_set(state, f"set server web/{name} health down")
        wait_until(
            lambda name=name: haproxy_states(state)[name] == "DRAIN",
            f"HAProxy's checks of {name} passing",
            log=state.logs / "haproxy.log",
        )
        haproxy_set(state, f"set server web/{name} state ready")
        wait_until(lambda name=name: haproxy_up(state, [name]), f"{name} UP")
        print(
            f"{name} on {port}: pid {old} -> {process.pid}, "
            f"{time.monotonic() - started:.1f} s",
            flush=True,
        )
    # The sweeper runs the same code: between two sweeps, nothing is lost.
    state.stop("sweeper", timeout=5)
    sweeper_start(state, env)
    print(
        f"rolled {len(names)} web processes and the sweeper in "
        f"{time.monotonic() - began:.1f} s"
    )


def start(args):
    state = State(args.state)
    running = [name for name in STOP_ORDER if state.alive(name)]
    if running:
        raise SystemExit(f"already running: {', '.join(running)} (make cluster-down)")
    try:
        _start(args, state)
    except BaseException:
        stop(args)  # what did start: nothing is left running half-way
        raise


def _start(args, state):
    web_ports = [int(port) for port in args.web_ports.split(",")]
    if len(web_ports) != WEB_COUNT:
        raise SystemExit(f"--web-ports takes {WEB_COUNT} ports")
    sentinel_ports = [int(port) for port in args.sentinel_ports.split(",")]
    if len(sentinel_ports) != SENTINEL_COUNT:
        raise SystemExit(f"--sentinel-ports takes {SENTINEL_COUNT} ports")
    sqlite = args.database_url.startswith("sqlite")
    ports = [args.port, args.stats_port, *web_ports]
    ports += [args.redis_port, args.redis_replica_port, *sentinel_ports]
    ports += [] if sqlite else [args.pgbouncer_port]
    taken = [port for port in ports if not port_free(port)]
    if taken:
        raise SystemExit(f"ports in use: {taken}")
    for tool in ["redis-server", "haproxy", *([] if sqlite else ["pgbouncer"])]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not on PATH (.ci/run installs it)")
    state.path.mkdir(parents=True, exist_ok=True)
    metrics = state.path / "metrics"
    shutil.rmtree(metrics, ignore_errors=True)  # emptied at each deploy
    metrics.mkdir()
    # What this deployment sets for its processes (kept for `roll`).
    own = {
        **redis_start(state, args.redis_port, args.redis_replica_port, sentinel_ports),
        # HAProxy connects from here (and clients from 127.0.0.1, not trusted).
        "TRUSTED_PROXIES": HAPROXY_SOURCE,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "HOST": "127.0.0.1",
    }
    database_prepare(
        args.database_url, process_env(state, own), migrate=not args.no_migrate
    )
    if sqlite:
        own["DATABASE_URL"] = args.database_url
    else:
        own["DATABASE_URL"] = pgbouncer_start(
            state, args.pgbouncer_port, args.database_url
        )
        own["DATABASE_POOL_MODE"] = "transaction"
    config = state.path / "web.json"  # may hold the database's password
    config.touch(mode=0o600)
    config.write_text(json.dumps({"ports": web_ports, "env": own}))
    env = process_env(state, own)
    web = [
        (port, *web_start(state, n, port, env)) for n, port in enumerate(web_ports, 1)
    ]
    for port, process, log in web:
        web_wait_ready(port, process, log)
    redis_sentinels_wait(sentinel_ports)  # they meet while the web processes start
    sweeper_start(state, env)
    balancer_env = {
        **os.environ,
        "VF_LISTEN": f"127.0.0.1:{args.port}",
        "VF_STATS": f"127.0.0.1:{args.stats_port}",
        "VF_SOURCE": HAPROXY_SOURCE,
        "VF_ADMIN": str(state.path / "haproxy.sock"),
        **{f"VF_WEB{n}": f"127.0.0.1:{port}" for n, port in enumerate(web_ports, 1)},
    }
    process, log = state.start(
        "haproxy", ["haproxy", "-db", "-f", str(HAPROXY_CFG)], balancer_env
    )
    wait_until(
        lambda: http_status(f"http://127.0.0.1:{args.port}/health/ready") == 200,
        "haproxy",
        process=process,
        log=log,
    )
    print(f"VoiceFlow cluster on http://127.0.0.1:{args.port}/")
    print(f"  HAProxy stats  http://127.0.0.1:{args.stats_port}/")
    print(f"  web processes  {', '.join(map(str, web_ports))}")
    print(f"  database       {env['DATABASE_URL']}")
    print(
        f"  redis          primary {args.redis_port}, replica "
        f"{args.redis_replica_port}, sentinels {env['REDIS_SENTINELS']}"
    )
    print(f"  state, logs    {state.path}")


def stop(args):
    state = State(args.state)
    for name in STOP_ORDER:
        state.stop(name, timeout=args.stop_timeout if name.startswith("web") else 5)
    print("VoiceFlow cluster stopped")


def status(args):
    state = State(args.state)
    for name in STOP_ORDER:
        pid = state.pid(name)
        print(f"{name:<10} {'up' if state.alive(name) else 'down':<5} {pid or ''}")


def main(argv=None):
    args = parse_args(argv)
    commands = {"start": start, "stop": stop, "status": status, "roll": roll}
    commands[args.command](args)


if __name__ == "__main__":
    main()
