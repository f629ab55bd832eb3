import json
import logging
import os
import subprocess
import sys

import pytest

from voiceflow.logging import RedactQueryStringFilter
from voiceflow.tests.servers import ROOT

PROBE = """
import json
from django.conf import settings
print(json.dumps({
    "debug": settings.DEBUG,
    "layer": settings.CHANNEL_LAYERS["default"]["BACKEND"],
    "cache": settings.CACHES["default"]["BACKEND"],
    "engine": settings.DATABASES["default"]["ENGINE"],
    "db_name": str(settings.DATABASES["default"]["NAME"]),
    "gc_threshold": settings.GC_THRESHOLD,
}))
"""


def load_settings(probe=PROBE, **env):
    clean = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {"REDIS_URL", "DATABASE_URL", "DEBUG", "SECRET_KEY", "ALLOWED_HOSTS"}
    }
    clean["DJANGO_SETTINGS_MODULE"] = "voiceflow.settings"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result


def test_no_environment_means_embedded_mode_without_debug():
    result = load_settings()
    assert result.returncode == 0, result.stderr
    conf = json.loads(result.stdout)
    assert conf["debug"] is False  # DEBUG=1 turns it on (see below)
    assert conf["layer"] == "channels.layers.InMemoryChannelLayer"
    assert conf["cache"].endswith("LocMemCache")
    assert conf["engine"].endswith("sqlite3")


def test_redis_and_database_urls_select_the_shared_backends():
    result = load_settings(
        REDIS_URL="redis://127.0.0.1:6379/5",
        DATABASE_URL="postgres://someone@db.example:5433/chat",
        SECRET_KEY="s3cret",
    )
    assert result.returncode == 0, result.stderr
    conf = json.loads(result.stdout)
    assert conf["debug"] is False
    assert conf["layer"] == "voiceflow.runtime.layers.PubSubChannelLayer"
    assert conf["cache"] == "django_redis.cache.RedisCache"
    assert conf["engine"] == "django.db.backends.postgresql"
    assert conf["db_name"] == "chat"


def test_a_sqlite_database_url_is_honoured(tmp_path):
    result = load_settings(DATABASE_URL=f"sqlite:///{tmp_path}/x.db", SECRET_KEY="s")
    assert json.loads(result.stdout)["db_name"] == f"{tmp_path}/x.db"


@pytest.mark.parametrize(
    "env",
    [
        {"REDIS_URL": "redis://127.0.0.1:6379/5"},
        {"REDIS_URL": "redis://127.0.0.1:6379/5", "DEBUG": "1"},
    ],
)
def test_shared_mode_refuses_to_start_without_a_secret_key(env):
    result = load_settings(**env)
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def record(msg, *args):
    return logging.LogRecord(
        "uvicorn.error", logging.INFO, __file__, 1, msg, args, None
    )


def test_query_strings_are_redacted_from_log_records():
    entry = record(
        '%s - "WebSocket %s" [accepted]', "127.0.0.1:5", "/ws/chat/?ticket=abc"
    )
    RedactQueryStringFilter().filter(entry)
    assert "abc" not in entry.getMessage()
    assert "/ws/chat/?[redacted]" in entry.getMessage()
    inline = record("GET /api/x?ticket=zzz HTTP/1.1")
    RedactQueryStringFilter().filter(inline)
    assert "zzz" not in inline.getMessage()


RATES_PROBE = """
import json
from django.conf import settings
print(json.dumps({
    "multiplier": settings.VOICEFLOW["RATE_LIMIT_MULTIPLIER"],
    "rates": settings.VOICEFLOW["RATE_LIMITS"],
    "trusted": settings.TRUSTED_PROXIES,
}))
"""


def load_rates(**env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOICEFLOW_RATE")}
    clean.pop("REDIS_URL", None)
    clean["DJANGO_SETTINGS_MODULE"] = "voiceflow.settings"
    result = subprocess.run(
        [sys.executable, "-c", RATES_PROBE],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_rate_limits_default_to_the_contract():
    conf = load_rates()
    assert conf["multiplier"] == 1 and conf["trusted"] == []
    assert conf["rates"] == {
        "message": {"limit": 30, "window": 60},
        "typing": {"limit": 60, "window": 60},
        "join": {"limit": 10, "window": 60},
        "rest": {"limit": 1000, "window": 900},
        "connect": {"limit": 60, "window": 60},
        "login": {"limit": 10, "window": 300},
        "login_user": {"limit": 5, "window": 300},
        "signup": {"limit": 5, "window": 3600},
        "room_create": {"limit": 10, "window": 3600},
        "presence": {"limit": 120, "window": 60},
    }


def test_rate_limits_and_trusted_proxies_come_from_the_environment():
    conf = load_rates(
        VOICEFLOW_RATE_LIMIT_MULTIPLIER="1000",
        VOICEFLOW_RATE_MESSAGE="5/10",
        VOICEFLOW_RATE_PRESENCE="3/5",
        TRUSTED_PROXIES="10.0.0.0/8, 127.0.0.1",
    )
    assert conf["multiplier"] == 1000
    assert conf["rates"]["message"] == {"limit": 5, "window": 10}
    assert conf["rates"]["presence"] == {"limit": 3, "window": 5}
    assert conf["trusted"] == ["10.0.0.0/8", "127.0.0.1"]


@pytest.mark.parametrize("value", ["30", "x/60", "0/60", "30/0"])
def test_a_malformed_rate_refuses_to_start(value):
    result = load_settings(VOICEFLOW_RATE_MESSAGE=value)
    assert result.returncode != 0
    assert "VOICEFLOW_RATE_MESSAGE must be LIMIT/SECONDS" in result.stderr


def test_a_malformed_trusted_proxy_refuses_to_start():
    result = load_settings(TRUSTED_PROXIES="10.0.0.0/8, proxy.example")
    assert result.returncode != 0
    assert "TRUSTED_PROXIES: 'proxy.example' is no IP or CIDR" in result.stderr


DB_PROBE = """
import json
from django.conf import settings
db = settings.DATABASES["default"]
print(json.dumps({
    "threads": settings.DB_THREADS,
    "conn_max_age": db["CONN_MAX_AGE"],
    "pool": db.get("OPTIONS", {}).get("pool"),
    "prepared": settings.DB_PREPARED,
    "server_side_cursors": not db.get("DISABLE_SERVER_SIDE_CURSORS", False),
    "web_concurrency": settings.WEB_CONCURRENCY,
}))
"""


def load_db_settings(**env):
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VOICEFLOW_DB")
        and k not in {"DATABASE_URL", "DEBUG", "DATABASE_POOL_MODE", "WEB_CONCURRENCY"}
    }
    clean["DJANGO_SETTINGS_MODULE"] = "voiceflow.settings"
    result = subprocess.run(
        [sys.executable, "-c", DB_PROBE],
        env={**clean, "SECRET_KEY": "s", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result


POSTGRES = "postgres://someone@db.example:5433/chat"


def test_postgresql_gets_two_writers_and_a_pool_sized_for_them():
    result = load_db_settings(DATABASE_URL=POSTGRES)
    assert result.returncode == 0, result.stderr
    conf = json.loads(result.stdout)
    assert conf["threads"] == 2
    assert conf["conn_max_age"] == 0  # Django's pool refuses persistent connections
    assert conf["pool"] == {"min_size": 6, "max_size": 12, "timeout": 10.0}


def test_the_pool_can_be_sized_or_turned_off():
    conf = json.loads(
        load_db_settings(
            DATABASE_URL=POSTGRES,
            VOICEFLOW_DB_THREADS="3",
            VOICEFLOW_DB_POOL_MAX="7",
        ).stdout
    )
    assert (conf["threads"], conf["pool"]["max_size"]) == (3, 7)
    off = json.loads(
        load_db_settings(DATABASE_URL=POSTGRES, VOICEFLOW_DB_POOL_MAX="0").stdout
    )
    assert (off["pool"], off["conn_max_age"]) == (None, 60)


@pytest.mark.parametrize("pool_max", ["4", "8"])
def test_a_pool_no_bigger_than_the_database_threads_is_refused(pool_max):
    # 4 writer threads and 4 socket-read threads each keep a connection.
    result = load_db_settings(
        DATABASE_URL=POSTGRES, VOICEFLOW_DB_THREADS="4", VOICEFLOW_DB_POOL_MAX=pool_max
    )
    assert result.returncode != 0
    assert "VOICEFLOW_DB_POOL_MAX" in result.stderr


def test_transaction_pool_mode_prepares_nothing_and_holds_no_cursor():
    def conf(**env):
        result = load_db_settings(DATABASE_URL=POSTGRES, **env)
        assert result.returncode == 0, result.stderr
        loaded = json.loads(result.stdout)
        return loaded["prepared"], loaded["server_side_cursors"]

    assert conf() == (True, True)
    assert conf(DATABASE_POOL_MODE="session") == (True, True)
    assert conf(DATABASE_POOL_MODE="Transaction") == (False, False)
    # A PgBouncer that tracks prepared statements (1.21+, max_prepared_statements).
    assert conf(DATABASE_POOL_MODE="transaction", VOICEFLOW_DB_PREPARED="1") == (
        True,
        False,
    )
    refused = load_db_settings(DATABASE_URL=POSTGRES, DATABASE_POOL_MODE="statement")
    assert refused.returncode != 0
    assert "DATABASE_POOL_MODE must be 'session' or 'transaction'" in refused.stderr


def test_web_concurrency_is_one_unless_set():
    assert json.loads(load_db_settings().stdout)["web_concurrency"] == 1
    four = load_db_settings(WEB_CONCURRENCY="4")
    assert json.loads(four.stdout)["web_concurrency"] == 4
    refused = load_db_settings(WEB_CONCURRENCY="0")
    assert refused.returncode != 0
    assert "WEB_CONCURRENCY must be at least 1" in refused.stderr


def test_sqlite_has_one_writer_thread_and_no_pool(tmp_path):
    conf = json.loads(
        load_db_settings(DATABASE_URL=f"sqlite:///{tmp_path}/x.db").stdout
    )
    assert (conf["threads"], conf["pool"]) == (1, None)


def test_gc_thresholds_default_high_and_come_from_the_environment():
    assert json.loads(load_settings().stdout)["gc_threshold"] == [20000, 50, 100]
    custom = load_settings(VOICEFLOW_GC_THRESHOLD="700,10,10")
    assert json.loads(custom.stdout)["gc_threshold"] == [700, 10, 10]
    wrong = load_settings(VOICEFLOW_GC_THRESHOLD="700,10")
    assert wrong.returncode != 0
    assert "VOICEFLOW_GC_THRESHOLD" in wrong.stderr


KEEPALIVE_PROBE = """
import json
from django.conf import settings
conf = settings.VOICEFLOW
print(json.dumps([conf["WS_PING_INTERVAL"], conf["WS_PING_TIMEOUT"]]))
"""


def test_the_server_sends_websocket_pings_only_when_asked():
    # Clients heartbeat and silent sockets close after DEAD_AFTER: pings are opt-in.
    assert json.loads(load_settings(KEEPALIVE_PROBE).stdout) == [0, 20]
    asked = load_settings(KEEPALIVE_PROBE, VOICEFLOW_WS_PING_INTERVAL="20")
    assert json.loads(asked.stdout) == [20, 20]


SECURITY_PROBE = """
import json
from django.conf import settings
print(json.dumps({
    "debug": settings.DEBUG,
    "key": settings.SECRET_KEY,
    "hsts": settings.SECURE_HSTS_SECONDS,
    "cookies": settings.SESSION_COOKIE_SECURE,
}))
"""


def load_security(tmp_path, **env):
    key_file = str(tmp_path / ".secret_key")
    return load_settings(SECURITY_PROBE, SECRET_KEY_FILE=key_file, **env)


def test_embedded_mode_makes_a_private_secret_key_once_and_keeps_it(tmp_path):
    first = load_security(tmp_path)
    assert first.returncode == 0, first.stderr
    conf = json.loads(first.stdout)
    assert conf["debug"] is False
    key_file = tmp_path / ".secret_key"
    assert key_file.read_text().strip() == conf["key"]
    assert len(conf["key"]) >= 50 and "insecure" not in conf["key"]
    assert key_file.stat().st_mode & 0o777 == 0o600
    again = json.loads(load_security(tmp_path).stdout)
    assert again["key"] == conf["key"]  # sessions survive a restart


def test_the_generated_key_file_is_ignored_by_git():
    result = subprocess.run(
        ["git", "check-ignore", "-q", ".secret_key"], cwd=ROOT, timeout=30
    )
    assert result.returncode == 0


def test_debug_is_on_only_when_asked_for(tmp_path):
    assert json.loads(load_security(tmp_path, DEBUG="1").stdout)["debug"] is True
    assert json.loads(load_security(tmp_path, DEBUG="0").stdout)["debug"] is False


def test_secure_cookies_turn_on_hsts(tmp_path):
    plain = json.loads(load_security(tmp_path).stdout)
    assert (plain["hsts"], plain["cookies"]) == (0, False)
    secure = json.loads(load_security(tmp_path, SECURE_COOKIES="1").stdout)
    assert (secure["hsts"], secure["cookies"]) == (31536000, True)
    custom = load_security(tmp_path, SECURE_COOKIES="1", SECURE_HSTS_SECONDS="60")
    assert json.loads(custom.stdout)["hsts"] == 60


def test_error_reports_hide_credentials_in_urls(settings, rf):
    from django.views.debug import get_default_exception_reporter_filter

    settings.REDIS_URL = "redis://:hunter2@redis.example:6379/0"
    settings.DATABASE_URL = "postgres://app:hunter3@db.example/chat"
    settings.CACHES = {
        "default": {"LOCATION": "redis://user:hunter4@redis.example:6379/0"}
    }
    settings.SENTRY_DSN = "https://hunter5@sentry.example/1"
    safe = repr(get_default_exception_reporter_filter().get_safe_settings())
    for secret in ("hunter2", "hunter3", "hunter4", "hunter5"):
        assert secret not in safe
    assert "redis.example" in safe  # the rest of the URL still helps debugging
