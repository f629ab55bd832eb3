"""Search: GET /api/search/ over the messages of rooms the user may see."""

import orjson
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from chat import selectors, services
from chat.models import Message, Room

pytestmark = pytest.mark.django_db


def api_for(user):
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}"
    )
    return client


def search(user, **params):
    response = api_for(user).get("/api/search/", params)
    assert response.status_code == 200, response.content
    return response.json()


def bodies(reply):
    return [m["body"] for m in reply["results"]]


def post(user, room, body):
    return services.message_post(user=user, room=room, body=body).message


@pytest.fixture
def design(db):
    return Room.objects.create(slug="design", name="Design")


def test_search_finds_whole_words_newest_first_with_their_room(
    alice, bob, lobby, design
):
    post(alice, lobby, "The deploy is Friday")
    post(bob, design, "deploy notes: see wiki")
    post(alice, lobby, "lunch?")
    post(bob, lobby, "Friday DEPLOY moved")

    reply = search(alice, q="deploy")
    assert bodies(reply) == [
        "Friday DEPLOY moved",
        "deploy notes: see wiki",
        "The deploy is Friday",
    ]
    assert reply["has_more"] is False
    first = reply["results"][0]
    assert set(first) >= {"id", "room", "seq", "user", "body", "created_at"}
    assert (first["room"], first["user"], first["edited_at"]) == ("lobby", "bob", None)
    assert bodies(search(alice, q="friday deploy")) == [
        "Friday DEPLOY moved",
        "The deploy is Friday",
    ]
    assert bodies(search(alice, q="deploy", room="design")) == [
        "deploy notes: see wiki"
    ]
    assert bodies(search(alice, q="deploy", **{"from": "alice"})) == [
        "The deploy is Friday"
    ]
    assert search(alice, q="deploy", room="nowhere")["results"] == []
    assert search(alice, q="zebra")["results"] == []


def test_search_never_returns_tombstones_and_finds_edited_text(alice, lobby):
    gone = post(alice, lobby, "secret plan")
    kept = post(alice, lobby, "public plan")
    services.message_delete(user=alice, room=lobby, message_id=gone["id"])
    services.message_edit_store(
        user=alice, room=lobby, message_id=kept["id"], body="public roadmap"
    )
    assert search(alice, q="secret")["results"] == []
    assert search(alice, q="plan")["results"] == []
    reply = search(alice, q="roadmap")
    assert bodies(reply) == ["public roadmap"]
    assert reply["results"][0]["edited_at"] is not None


def test_search_never_returns_messages_of_rooms_the_user_may_not_see(
    alice, bob, lobby, design, monkeypatch
):
    post(bob, lobby, "launch in the lobby")
    post(bob, design, "launch in design (private)")
    real = selectors.room_queryset_visible
    seen = []

    def visible(*, user):
        seen.append(user)
        rooms = real(user=user)
        return rooms if user == bob else rooms.exclude(slug="design")

    monkeypatch.setattr(selectors, "room_queryset_visible", visible)
    assert bodies(search(alice, q="launch")) == ["launch in the lobby"]
    assert search(alice, q="launch", room="design")["results"] == []
    assert search(alice, q="private", **{"from": "bob"})["results"] == []
    assert seen and all(user == alice for user in seen)
    assert len(search(bob, q="launch")["results"]) == 2


def test_search_pages_with_a_before_cursor(alice, lobby):
    ids = [post(alice, lobby, f"standup note {i}")["id"] for i in range(5)]
    post(alice, lobby, "unrelated")
    first = search(alice, q="standup", limit=2)
    assert [m["id"] for m in first["results"]] == ids[:-3:-1]
    assert first["has_more"] is True
    cursor = first["results"][-1]["id"]
    second = search(alice, q="standup", limit=2, before=cursor)
    assert [m["id"] for m in second["results"]] == [ids[2], ids[1]]
    last = search(alice, q="standup", limit=2, before=second["results"][-1]["id"])
    assert ([m["id"] for m in last["results"]], last["has_more"]) == ([ids[0]], False)
    assert len(search(alice, q="standup")["results"]) == 5  # default limit 50


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"q": ""},
        {"q": "   "},
        {"q": "x" * 201},
        {"q": "bell\x07"},
        {"q": "ok", "limit": "0"},
        {"q": "ok", "limit": "many"},
        {"q": "ok", "before": "-1"},
        {"q": "ok", "room": "Not A Slug"},
    ],
)
def test_a_bad_search_is_400(alice, lobby, params):
    response = api_for(alice).get("/api/search/", params)
    assert response.status_code == 400, response.content


def test_search_needs_authentication(lobby, client):
    assert client.get("/api/search/", {"q": "x"}).status_code in (401, 403)


def test_search_query_syntax_never_errors(alice, lobby):
    post(alice, lobby, "it's 100% done & shipped")
    for query in ['"unclosed', "a | b", "-", "!!!", "100%", "it's", "&", "or"]:
        reply = search(alice, q=query)
        assert isinstance(reply["results"], list)
    assert bodies(search(alice, q="shipped")) == ["it's 100% done & shipped"]


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the GIN index is PostgreSQL's"
)
def test_postgresql_search_is_served_by_the_gin_index(alice, lobby):
    Message.objects.bulk_create(
        Message(room=lobby, seq=i, user=alice, body=f"note {i}") for i in range(1, 200)
    )
    with CaptureQueriesContext(connection) as queries:
        selectors.messages_search(user=alice, query="note 42", limit=50)
    sql = queries.captured_queries[-1]["sql"]  # the search (after its estimate)
    assert "to_tsvector" in sql
    with connection.cursor() as cursor:
        # Fresh statistics, as autovacuum keeps them: without them the planner takes
        # the lobby's 199 rows for one and reads them through room_id instead.
        cursor.execute("ANALYZE chat_message")
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_indexscan = off")  # not the pkey walk
        cursor.execute(f"EXPLAIN {sql}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "message_body_search" in plan, plan


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL picks between two orders"
)
@pytest.mark.parametrize("estimate", [1, 30, 10**6])
def test_every_way_of_reading_matches_gives_the_same_pages(
    alice, lobby, monkeypatch, estimate
):
    """Few matches estimated: read through the index; many: walked from the newest;
    wildly too many: the bounded walk falls short and the rest is read."""
    ids = [post(alice, lobby, f"retro item {i}")["id"] for i in range(7)]
    for i in range(30):
        post(alice, lobby, f"filler {i}")
    real_explain = type(Message.objects.all()).explain

    def explain(queryset, **options):
        plan = orjson.loads(real_explain(queryset, **options))
        plan[0]["Plan"]["Plan Rows"] = estimate
        return orjson.dumps(plan).decode()

    monkeypatch.setattr(type(Message.objects.all()), "explain", explain)
    monkeypatch.setattr(selectors, "_table_rows_estimate", lambda model: 37)
    first = search(alice, q="retro", limit=3)
    second = search(alice, q="retro", limit=3, before=first["results"][-1]["id"])
    assert [m["id"] for m in first["results"] + second["results"]] == ids[:-7:-1]
    assert (first["has_more"], second["has_more"]) == (True, True)
    assert bodies(search(alice, q='"item 3"')) == ["retro item 3"]
