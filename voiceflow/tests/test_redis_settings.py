"""Where Redis is, from the environment: REDIS_URL, REDIS_SENTINELS with
REDIS_SENTINEL_MASTER, REDIS_LAYER_URLS; malformed values stop the process."""

import json

import pytest

from .test_settings import load_settings

PROBE = """
import json
from django.conf import settings
print(json.dumps({
    "sentinels": settings.REDIS_SENTINELS,
    "master": settings.REDIS_SENTINEL_MASTER,
    "shards": settings.CHANNEL_LAYERS["default"]["CONFIG"]["shards"],
    "cache": settings.CACHES["default"],
}))
"""


def shared(**env):
    result = load_settings(PROBE, SECRET_KEY="s", **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_by_default_everything_is_on_redis_url():
    conf = shared(REDIS_URL="redis://127.0.0.1:6379/5")
    assert conf["sentinels"] == [] and conf["master"] == ""
    assert conf["shards"] == [
        {"url": "redis://127.0.0.1:6379/5", "sentinels": [], "master": ""}
    ]
    assert conf["cache"]["LOCATION"] == "redis://127.0.0.1:6379/5"
    assert "CONNECTION_FACTORY" not in conf["cache"]["OPTIONS"]


def test_sentinels_name_the_primary_of_every_client():
    conf = shared(
        REDIS_URL="redis://:pw@mymaster/2",
        REDIS_SENTINELS="10.0.0.1:26379, sentinel-b:26380,[::1]:26381",
        REDIS_SENTINEL_MASTER="mymaster",
    )
    sentinels = [["10.0.0.1", 26379], ["sentinel-b", 26380], ["::1", 26381]]
    assert (conf["sentinels"], conf["master"]) == (sentinels, "mymaster")
    assert conf["shards"] == [
        {"url": "redis://:pw@mymaster/2", "sentinels": sentinels, "master": "mymaster"}
    ]
    cache = conf["cache"]
    assert cache["LOCATION"] == "redis://:pw@mymaster/2"
    assert cache["OPTIONS"]["CONNECTION_FACTORY"] == (
        "django_redis.pool.SentinelConnectionFactory"
    )
    assert cache["OPTIONS"]["SENTINELS"] == sentinels


def test_layer_urls_shard_the_channel_layer_only():
    conf = shared(
        REDIS_URL="redis://127.0.0.1:6379/5",
        REDIS_LAYER_URLS="redis://10.0.0.1:6379/0, redis://10.0.0.2:6380/0",
    )
    assert conf["shards"] == [
        {"url": "redis://10.0.0.1:6379/0"},
        {"url": "redis://10.0.0.2:6380/0"},
    ]
    assert conf["cache"]["LOCATION"] == "redis://127.0.0.1:6379/5"


SENTINEL = {"REDIS_URL": "redis://mymaster/0", "REDIS_SENTINEL_MASTER": "mymaster"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {**SENTINEL, "REDIS_SENTINELS": "sentinel-a"},
            "REDIS_SENTINELS: 'sentinel-a'",
        ),
        ({**SENTINEL, "REDIS_SENTINELS": "a:1,b:x"}, "REDIS_SENTINELS: 'b:x'"),
        ({**SENTINEL, "REDIS_SENTINELS": "a:0"}, "is not host:port"),
        ({**SENTINEL, "REDIS_SENTINELS": "a:65536"}, "is not host:port"),
        ({**SENTINEL, "REDIS_SENTINELS": ":26379"}, "is not host:port"),
        (
            {"REDIS_URL": "redis://m/0", "REDIS_SENTINELS": "a:26379"},
            "set together",
        ),
        ({"REDIS_URL": "redis://m/0", "REDIS_SENTINEL_MASTER": "m"}, "set together"),
        (
            {"REDIS_SENTINELS": "a:26379", "REDIS_SENTINEL_MASTER": "m"},
            "need REDIS_URL",
        ),
        ({"REDIS_LAYER_URLS": "redis://a:6379/0"}, "need REDIS_URL"),
        (
            {"REDIS_URL": "unix:///run/redis.sock", "REDIS_SENTINELS": "a:26379"}
            | {"REDIS_SENTINEL_MASTER": "m"},
            "redis:// or rediss://",
        ),
        ({"REDIS_URL": "127.0.0.1:6379"}, "REDIS_URL: '127.0.0.1:6379' is no"),
        ({"REDIS_URL": "redis://a/0", "REDIS_LAYER_URLS": "http://b:6379"}, "is no"),
        ({"REDIS_URL": "redis://a/0", "REDIS_LAYER_URLS": "redis://"}, "is no"),
        ({"REDIS_URL": "redis://a/0", "REDIS_LAYER_URLS": "redis://b:x/0"}, "is no"),
        ({"REDIS_URL": "redis://a/0", "REDIS_LAYER_URLS": "redis://b/db1"}, "is no"),
        (
            {"REDIS_URL": "redis://a/0", "REDIS_LAYER_URLS": "redis://b/0,redis://b/0"},
            "names a server twice",
        ),
    ],
)
def test_malformed_redis_settings_refuse_to_start(env, message):
    result = load_settings(PROBE, SECRET_KEY="s", **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr
