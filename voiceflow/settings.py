"""VoiceFlow settings: every value that comes from the environment is read here.

No environment → the embedded mode (SQLite, in-memory channel layer and cache).
`REDIS_URL` + `DATABASE_URL` → Redis channel layer and cache, PostgreSQL, many
processes.
"""

import ipaddress
import os
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name, default=""):
    return os.environ.get(name, default).strip()


def env_bool(name, default):
    value = env_str(name)
    if not value:
        return default
    return value.lower() in {"1", "true", "yes", "on"}


def env_int(name, default):
    value = env_str(name)
    return int(value) if value else default


def env_float(name, default):
    value = env_str(name)
    return float(value) if value else default


def env_rate(name, default):
    """A rate 'LIMIT/SECONDS' (e.g. '30/60') as {"limit", "window"}."""
    value = env_str(name) or default
    try:
        limit, window = value.split("/")
        rate = {"limit": int(limit), "window": float(window)}
    except ValueError:
        rate = None
    if not rate or rate["limit"] < 1 or rate["window"] <= 0:
        raise ImproperlyConfigured(
            f"{name} must be LIMIT/SECONDS, e.g. 30/60: {value!r}"
        )
    return rate


def env_list(name, default):
    value = env_str(name)
    return (
        [item.strip() for item in value.split(",") if item.strip()]
        if value
        else default
    )


def redis_url_check(name, url):
    """`url` if it is a redis://host[:port][/db], rediss:// or unix:// URL."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # a malformed port raises ValueError
    except ValueError:
        parts = None
    unix = parts is not None and parts.scheme == "unix"
    if (
        parts is None
        or parts.scheme not in ("redis", "rediss", "unix")
        or not (parts.path if unix else parts.hostname)
        or not (unix or parts.path.strip("/").isdigit() or parts.path in ("", "/"))
    ):
        raise ImproperlyConfigured(
            f"{name}: {url!r} is no redis://host[:port][/db], rediss:// or unix:// URL."
        )
    return url


def env_host_ports(name):
    """Comma-separated host:port pairs ([IPv6]:port too) as ((host, port), ...)."""
    pairs = []
    for item in env_list(name, []):
        host, _, port = item.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ImproperlyConfigured(f"{name}: {item!r} is not host:port.")
        pairs.append((host, int(port)))
    return tuple(pairs)


REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    redis_url_check("REDIS_URL", REDIS_URL)
DATABASE_URL = env_str("DATABASE_URL")
EMBEDDED = not REDIS_URL


def secret_key_file(path):
    """The key kept in `path`, made once (random, mode 0600) if the file is missing.

    Written to a temporary file and linked into place, so processes starting at the
    same time never read a half-written key: one link wins, the others read it.
    """
    path = Path(path)
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    if key:
        return key
    from django.core.management.utils import get_random_secret_key

    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(get_random_secret_key() + "\n")
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process made it first: theirs is the key
    finally:
        temporary.unlink()
    return path.read_text().strip()


# Shared mode runs many processes that must sign alike: the key must be given. The
# embedded mode makes its own once and keeps it (git-ignored) next to the database.
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not EMBEDDED:
        raise ImproperlyConfigured("SECRET_KEY must be set when REDIS_URL is set.")
    SECRET_KEY = secret_key_file(env_str("SECRET_KEY_FILE") or BASE_DIR / ".secret_key")
DEBUG = env_bool("DEBUG", default=False)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",  # `manage.py runserver` serves the ASGI app, WebSockets included
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "presence",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "voiceflow.middleware.ContentSecurityPolicyMiddleware",
    "voiceflow.middleware.StaticFilesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "voiceflow.urls"
ASGI_APPLICATION = "voiceflow.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: SQLite file by default, any URL from DATABASE_URL (PostgreSQL: psycopg 3).
CONN_MAX_AGE = env_int("CONN_MAX_AGE", 60)
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=CONN_MAX_AGE,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE takes the write lock at BEGIN, so concurrent writers queue instead of
    # failing with "database is locked" half-way through a transaction.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = (
        0 if DEBUG or not DATABASE_URL else CONN_MAX_AGE
    )
    # A file, not shared-cache memory: it locks like production and a server process
    # started by the end-to-end tests can open it.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "test-db.sqlite3")}
# Message inserts run on this many connections, each room always on the same one
# (FIFO per room, rooms in parallel). Posts queued behind a busy one go out in one
# statement (group commit), so fewer connections mean bigger batches, hence a small
# default on PostgreSQL. SQLite has one writer: more only queue.
DB_THREADS = env_int(
    "VOICEFLOW_DB_THREADS",
    1 if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" else 2,
)
if DB_THREADS < 1:
    raise ImproperlyConfigured("VOICEFLOW_DB_THREADS must be at least 1.")
# How the PostgreSQL server at DATABASE_URL hands out connections: "session" (the
# server itself, or a PgBouncer in session mode) or "transaction" (a PgBouncer in
# transaction mode: each transaction or autocommitted statement may run on another
# server connection, so nothing may outlive one: no prepared statements, no
# server-side cursors held across statements).
DATABASE_POOL_MODE = env_str("DATABASE_POOL_MODE", "session").lower()
if DATABASE_POOL_MODE not in ("session", "transaction"):
    raise ImproperlyConfigured("DATABASE_POOL_MODE must be 'session' or 'transaction'.")
if DATABASE_POOL_MODE == "transaction":
    # .iterator() would DECLARE a cursor WITH HOLD on one server connection and
    # FETCH from another.
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
# The socket path's own connections (message inserts, joins) prepare their statements
# (psycopg's prepare_threshold; Django's connections never do): PostgreSQL then plans
# the insert once per connection, not once per message. Off in transaction pool mode
# unless set: only a PgBouncer of 1.21 or later with max_prepared_statements tracks
# them.
DB_PREPARED = env_bool("VOICEFLOW_DB_PREPARED", DATABASE_POOL_MODE == "session")
# PostgreSQL: a connection pool per process (psycopg-pool). Sync requests run on a
# fresh thread each under ASGI, and a per-thread connection outlived its request until
# the thread was collected: 64 concurrent requests exhausted max_connections. Pooled,
# a request returns its connection at its end and waits for one when all are in use.
# The writer and socket-read threads (DB_THREADS each) hold one each; the rest serve
# requests and database_sync_to_async.
DB_POOL_MAX = env_int("VOICEFLOW_DB_POOL_MAX", 2 * DB_THREADS + 8)
DB_POOL_TIMEOUT = env_float("VOICEFLOW_DB_POOL_TIMEOUT", 10)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and DB_POOL_MAX:
    if DB_POOL_MAX <= 2 * DB_THREADS:
        raise ImproperlyConfigured(
            "VOICEFLOW_DB_POOL_MAX must exceed twice VOICEFLOW_DB_THREADS"
            " (0 = no pool)."
        )
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # a closed connection goes to the pool
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        # Kept open: the database threads, the shared worker thread, /health.
        "min_size": min(2 * DB_THREADS + 2, DB_POOL_MAX),
        "max_size": DB_POOL_MAX,
        "timeout": DB_POOL_TIMEOUT,  # waiting longer for a connection is an error
    }
# Worker processes of the `web` process (voiceflow/runtime/server.py), all accepting on
# its one listening socket. Shared mode only: embedded mode keeps the channel layer,
# presence and tickets in the process's memory, so it runs one whatever this says.
WEB_CONCURRENCY = env_int("WEB_CONCURRENCY", 1)
if WEB_CONCURRENCY < 1:
    raise ImproperlyConfigured("WEB_CONCURRENCY must be at least 1.")
# Seconds a thread may hold the GIL while another waits (the server's database threads
# wait after every PostgreSQL reply; Python's default is 0.005).
GIL_SWITCH_INTERVAL = env_float("VOICEFLOW_GIL_SWITCH_INTERVAL", 0.001)
# The web process's garbage collector thresholds (gc.set_threshold; Python's are
# 700,10,10). With those, a burst of connects runs full collections of the whole
# heap, each stalling the event loop; these make them rare.
try:
    GC_THRESHOLD = tuple(
        int(n) for n in env_list("VOICEFLOW_GC_THRESHOLD", [20000, 50, 100])
    )
except ValueError:
    GC_THRESHOLD = ()
if len(GC_THRESHOLD) != 3 or min(GC_THRESHOLD) < 1:
    raise ImproperlyConfigured(
        "VOICEFLOW_GC_THRESHOLD must be three positive integers."
    )
# Diagnostics, off by default: with a directory, the web process writes memory reports
# there on SIGUSR2 (voiceflow.memory_debug, driven by bench/soak.py --memory-debug);
# with frames > 0 it also traces Python allocations (tracemalloc: slower, more memory).
MEMORY_DEBUG_DIR = env_str("VOICEFLOW_MEMORY_DEBUG_DIR")
TRACEMALLOC_FRAMES = env_int("VOICEFLOW_TRACEMALLOC_FRAMES", 0)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Redis: the channel layer, the cache and the store modules (voiceflow/redis.py
# turns these into where each client connects). REDIS_URL names the server, its
# database and password. With REDIS_SENTINELS the server is whichever the Sentinels
# name as the primary of REDIS_SENTINEL_MASTER, found again after a failover, and
# REDIS_URL gives only the scheme, database and credentials. REDIS_LAYER_URLS
# spreads the channel layer's groups over servers of its own.
REDIS_SENTINELS = env_host_ports("REDIS_SENTINELS")
REDIS_SENTINEL_MASTER = env_str("REDIS_SENTINEL_MASTER")
REDIS_LAYER_URLS = [
    redis_url_check("REDIS_LAYER_URLS", url) for url in env_list("REDIS_LAYER_URLS", [])
]
if bool(REDIS_SENTINELS) != bool(REDIS_SENTINEL_MASTER):
    raise ImproperlyConfigured(
        "REDIS_SENTINELS and REDIS_SENTINEL_MASTER are set together or not at all."
    )
if (REDIS_SENTINELS or REDIS_LAYER_URLS) and not REDIS_URL:
    raise ImproperlyConfigured(
        "REDIS_SENTINELS and REDIS_LAYER_URLS need REDIS_URL (shared mode; with "
        "Sentinel it gives the database and password, e.g. redis://mymaster/0)."
    )
if REDIS_SENTINELS and REDIS_URL.startswith("unix:"):
    raise ImproperlyConfigured(
        "With REDIS_SENTINELS, REDIS_URL is redis:// or rediss://."
    )
if len(set(REDIS_LAYER_URLS)) != len(REDIS_LAYER_URLS):
    raise ImproperlyConfigured("REDIS_LAYER_URLS names a server twice.")
REDIS_MAX_CONNECTIONS = env_int("REDIS_MAX_CONNECTIONS", 1000)
# A channel-layer subscriber silent this long (it pings every third of it) is made
# again: a Redis gone without closing the connection is noticed.
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 30)
REDIS_CONNECT_TIMEOUT = env_float("REDIS_CONNECT_TIMEOUT", 2)
# The store modules (rate limits, presence) never block on Redis: a hung server must
# fail their frame in seconds, not after the channel layer's long read timeout.
REDIS_STORE_TIMEOUT = env_float("REDIS_STORE_TIMEOUT", 2)
# Once Redis is found unreachable, it is asked again (one PING) this often; meanwhile
# every caller takes its fallback at once (voiceflow.breaker).
REDIS_RETRY_INTERVAL = env_float("REDIS_RETRY_INTERVAL", 1.0)
REDIS_KEY_PREFIX = env_str("REDIS_KEY_PREFIX", "vf")

# Proxies whose X-Forwarded-For names the client (IPs or CIDRs); none by default.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", [])
for _proxy in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"TRUSTED_PROXIES: {_proxy!r} is no IP or CIDR."
        ) from None

if REDIS_URL:
    from voiceflow.redis import RedisAddress, cache_config

    _store = {
        "url": REDIS_URL,
        "sentinels": REDIS_SENTINELS,
        "master": REDIS_SENTINEL_MASTER,
    }
    CHANNEL_LAYERS = {
        "default": {
            # Pub/sub publishes once per group and fans out inside each process;
            # it has no per-channel capacity that drops messages under load.
            "BACKEND": "voiceflow.runtime.layers.PubSubChannelLayer",
            "CONFIG": {
                "shards": [{"url": url} for url in REDIS_LAYER_URLS] or [_store],
                "prefix": f"{REDIS_KEY_PREFIX}:layer:",
            },
        }
    }
    CACHES = {
        "default": cache_config(
            RedisAddress(**_store),
            key_prefix=REDIS_KEY_PREFIX,
            timeout=REDIS_CONNECT_TIMEOUT,
            max_connections=REDIS_MAX_CONNECTIONS,
        )
    }
    # Sessions in the database, read through the cache.
    SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# Cache errors ignored (IGNORE_EXCEPTIONS) are still logged, through our handlers.
DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True
DJANGO_REDIS_LOGGER = "voiceflow.cache"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"django.contrib.auth.password_validation.{name}"}
    for name in (
        "UserAttributeSimilarityValidator",
        "MinimumLengthValidator",
        "CommonPasswordValidator",
        "NumericPasswordValidator",
    )
]
# Benchmarks register hundreds of users; a fast hasher keeps that from dominating.
if env_bool("VOICEFLOW_FAST_PASSWORD_HASHER", False):
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "room_list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# WhiteNoise serves straight from the source folders in every mode, so a checkout
# runs without a collectstatic step; set STATIC_ROOT to collect them instead.
STATIC_ROOT = env_str("STATIC_ROOT") or None
WHITENOISE_USE_FINDERS = True
# WhiteNoise's file responses are sync iterators; under ASGI Django reads them whole and
# warns on every static file. Our static files are small, so the warning is only noise.
warnings.filterwarnings(
    "ignore", message="StreamingHttpResponse must consume synchronous iterators"
)

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# HTTPS only once SECURE_COOKIES says the site is served over it (behind a proxy, the
# scheme comes from a TRUSTED_PROXIES' X-Forwarded-Proto).
SECURE_HSTS_SECONDS = env_int(
    "SECURE_HSTS_SECONDS", 31536000 if SESSION_COOKIE_SECURE else 0
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# Error reports (the debug page included) hide passwords, keys and URL credentials.
DEFAULT_EXCEPTION_REPORTER_FILTER = "voiceflow.debug.SafeExceptionReporterFilter"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "chat.api.exception_handler",
    "DEFAULT_PARSER_CLASSES": [
        "chat.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["chat.ratelimit.ClientIpThrottle"],
}

# One JSON object per line in production (log shippers parse them); readable lines in
# embedded development. Extra fields (event, user_id, code, ...) go into the JSON.
LOG_FORMAT = env_str("LOG_FORMAT") or (
    "text" if DEBUG or (EMBEDDED and not DATABASE_URL) else "json"
)
if LOG_FORMAT not in ("json", "text"):
    raise ImproperlyConfigured("LOG_FORMAT must be 'json' or 'text'.")
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "redact_query": {"()": "voiceflow.logging.RedactQueryStringFilter"},
    },
    "formatters": {
        "json": {"()": "voiceflow.logging.JsonFormatter"},
        "text": {"()": "voiceflow.logging.TextFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["redact_query"],
            "formatter": LOG_FORMAT,
        },
    },
    "loggers": {
        # Servers log request paths; tickets travel in query strings.
        "uvicorn.access": {
            "handlers": ["console"],
            "filters": ["redact_query"],
            "propagate": False,
        },
        "uvicorn.error": {
            "handlers": ["console"],
            "filters": ["redact_query"],
            "propagate": False,
        },
        "django.channels.server": {"filters": ["redact_query"]},
        "voiceflow": {"handlers": ["console"], "level": LOG_LEVEL},
        "chat": {"handlers": ["console"], "level": LOG_LEVEL},
        "presence": {"handlers": ["console"], "level": LOG_LEVEL},
    },
}

# Operations: /metrics answers loopback clients (chat.ratelimit.client_ip), others
# with this token as `Authorization: Bearer <token>`. PROMETHEUS_MULTIPROC_DIR is also
# read by prometheus-client itself, which then keeps each process's values in files
# there.
METRICS_TOKEN = env_str("METRICS_TOKEN")
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR")

# The wire contract's numbers (docs/protocol.md); each can be set in the environment.
VOICEFLOW = {
    "MAX_FRAME_BYTES": 65536,
    "MAX_BODY_CHARS": env_int("VOICEFLOW_MAX_BODY_CHARS", 4000),
    "HISTORY_LIMIT_DEFAULT": 50,
    "HISTORY_LIMIT_MAX": 200,
    "MISSED_LIMIT": env_int("VOICEFLOW_MISSED_LIMIT", 100),
    # Seconds after posting during which the author may edit a message.
    "EDIT_WINDOW": env_float("VOICEFLOW_EDIT_WINDOW", 86400),
    # The longest search query (characters) GET /api/search/ accepts.
    "SEARCH_QUERY_MAX_CHARS": env_int("VOICEFLOW_SEARCH_QUERY_MAX_CHARS", 200),
    "TICKET_TTL": env_int("VOICEFLOW_TICKET_TTL", 30),
    "HEARTBEAT_INTERVAL": env_float("VOICEFLOW_HEARTBEAT_INTERVAL", 25),
    # A pong's `last_seq` values are read at most this many seconds before it is sent
    # (one read per process for every socket's pongs, chat.last_seqs).
    "LAST_SEQ_MAX_AGE": env_float("VOICEFLOW_LAST_SEQ_MAX_AGE", 1.0),
    # Seconds each /health check (database, Redis) may take before it counts as down.
    "HEALTH_TIMEOUT": env_float("VOICEFLOW_HEALTH_TIMEOUT", 1.0),
    # Frames and request bodies are flat objects: deeper JSON is refused as invalid.
    "MAX_JSON_DEPTH": env_int("VOICEFLOW_MAX_JSON_DEPTH", 8),
    # Sliding windows (chat.ratelimit); every limit is multiplied at once (load tests).
    "RATE_LIMIT_MULTIPLIER": env_float("VOICEFLOW_RATE_LIMIT_MULTIPLIER", 1),
    "RATE_LIMITS": {
        "message": env_rate("VOICEFLOW_RATE_MESSAGE", "30/60"),  # per user
        "typing": env_rate("VOICEFLOW_RATE_TYPING", "60/60"),  # per user
        "join": env_rate("VOICEFLOW_RATE_JOIN", "10/60"),  # per user
        "rest": env_rate("VOICEFLOW_RATE_REST", "1000/900"),  # per client IP
        "connect": env_rate("VOICEFLOW_RATE_CONNECT", "60/60"),  # per client IP
        # Failed logins (pages and admin; a success is not counted) per client IP
        # and per username; sign-ups per client IP; rooms created (page and REST)
        # per client IP.
        "login": env_rate("VOICEFLOW_RATE_LOGIN", "10/300"),
        "login_user": env_rate("VOICEFLOW_RATE_LOGIN_USER", "5/300"),
        "signup": env_rate("VOICEFLOW_RATE_SIGNUP", "5/3600"),
        "room_create": env_rate("VOICEFLOW_RATE_ROOM_CREATE", "10/3600"),
        # Per user: `status` frames, `leave`s, and joins of a room the socket has
        # joined already (a socket's first join of a room, a reconnect's, is free).
        "presence": env_rate("VOICEFLOW_RATE_PRESENCE", "120/60"),
    },
    # Rooms per page of the server-rendered room list.
    "ROOM_PAGE_SIZE": env_int("VOICEFLOW_ROOM_PAGE_SIZE", 50),
    # Presence and typing (PROTOCOL.md "Presence", "Typing"); seconds unless named.
    "DEAD_AFTER": env_float("VOICEFLOW_DEAD_AFTER", 60),
    "AWAY_AFTER": env_float("VOICEFLOW_AWAY_AFTER", 300),
    "OFFLINE_GRACE": env_float("VOICEFLOW_OFFLINE_GRACE", 10),
    "TYPING_STOP_AFTER": env_float("VOICEFLOW_TYPING_STOP_AFTER", 3),
    "TYPING_FORWARD_INTERVAL": env_float("VOICEFLOW_TYPING_FORWARD_INTERVAL", 1),
    "MAX_SOCKETS_PER_USER": env_int("VOICEFLOW_MAX_SOCKETS_PER_USER", 20),
    # At most one `presence` event per user, and one member event per user and room,
    # per this many seconds from a server process; later changes wait, final state wins.
    "PRESENCE_EVENT_INTERVAL": env_float("VOICEFLOW_PRESENCE_EVENT_INTERVAL", 1),
    # A socket's last-seen time reaches the store at most this often (not every frame).
    "PRESENCE_TOUCH_INTERVAL": env_float("VOICEFLOW_PRESENCE_TOUCH_INTERVAL", 5),
    # How often the embedded web process sweeps itself (the sweeper's --interval).
    "PRESENCE_SWEEP_INTERVAL": env_float("VOICEFLOW_PRESENCE_SWEEP_INTERVAL", 15),
    # Lifetime of every presence key in Redis, renewed while its socket/user is active.
    "PRESENCE_KEY_TTL": env_int("VOICEFLOW_PRESENCE_KEY_TTL", 3600),
    # Offline queue ("Delivery guarantees"): newest N messages per user, none older.
    "OFFLINE_QUEUE_LIMIT": env_int("VOICEFLOW_OFFLINE_QUEUE_LIMIT", 100),
    "OFFLINE_QUEUE_MAX_AGE": env_float("VOICEFLOW_OFFLINE_QUEUE_MAX_AGE", 86400),
    # Graceful shutdown (voiceflow/runtime/server.py): sockets close with 1012 spread
    # over the window; the process exits by the timeout whatever is left.
    "DRAIN_WINDOW": env_float("VOICEFLOW_DRAIN_WINDOW", 2),
    "DRAIN_TIMEOUT": env_float("VOICEFLOW_DRAIN_TIMEOUT", 10),
    # uvicorn's WebSocket keepalive (voiceflow/runtime/server.py), off at 0: a client
    # that answers no ping within the timeout (one that still sends but stopped
    # reading) is closed with 1011. Off by default: clients heartbeat, and a socket
    # silent for DEAD_AFTER is closed anyway; pinging every socket costs CPU.
    "WS_PING_INTERVAL": env_float("VOICEFLOW_WS_PING_INTERVAL", 0),
    "WS_PING_TIMEOUT": env_float("VOICEFLOW_WS_PING_TIMEOUT", 20),
    # permessage-deflate costs ~40 KB of zlib state per socket that negotiates it
    # (browsers do) and CPU per frame, to shrink frames of a few hundred bytes.
    "WS_DEFLATE": env_bool("VOICEFLOW_WS_DEFLATE", False),
    # A socket's output its client has not read yet, in bytes: past the soft cap its
    # typing and presence events are dropped, past the hard cap it closes with 1013.
    "SOCKET_SOFT_BYTES": env_int("VOICEFLOW_SOCKET_SOFT_BYTES", 256 * 1024),
    "SOCKET_HARD_BYTES": env_int("VOICEFLOW_SOCKET_HARD_BYTES", 1024 * 1024),
}
if VOICEFLOW["SOCKET_HARD_BYTES"] < VOICEFLOW["SOCKET_SOFT_BYTES"]:
    raise ImproperlyConfigured(
        "VOICEFLOW_SOCKET_HARD_BYTES must not be below VOICEFLOW_SOCKET_SOFT_BYTES."
    )
