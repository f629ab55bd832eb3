"""The socket path's reads, through the process's store (on PostgreSQL, the event
loop's connections)."""

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone
from rest_framework.authtoken.models import Token

from chat import selectors
from chat.models import OfflineMark

# The loop's connections and the threads' are their own: committed rows only.
pytestmark = pytest.mark.django_db(transaction=True)


async def test_an_active_user_is_read_whole_and_an_inactive_one_not_at_all(alice):
    user = await selectors.user_active_aget(alice.pk)
    assert (user.pk, user.username, user.password) == (
        alice.pk,
        "alice",
        alice.password,
    )
    assert user.is_authenticated and not user._state.adding
    alice.is_active = False
    await sync_to_async(alice.save)()
    assert await selectors.user_active_aget(alice.pk) is None
    assert await selectors.user_active_aget(alice.pk + 1000) is None


async def test_the_users_row_says_whether_they_have_an_offline_mark(alice):
    assert (await selectors.user_active_aget(alice.pk)).has_offline_mark is False
    await sync_to_async(OfflineMark.objects.create)(user=alice, since=timezone.now())
    assert (await selectors.user_active_aget(alice.pk)).has_offline_mark is True


async def test_an_offline_mark_is_seen_without_taking_it(alice):
    assert not await selectors.offline_mark_aexists(alice.pk)
    await sync_to_async(OfflineMark.objects.create)(user=alice, since=timezone.now())
    assert await selectors.offline_mark_aexists(alice.pk)
    assert await selectors.offline_mark_aexists(alice.pk)  # still there


async def test_a_token_gives_its_active_user_as_drf_would(alice):
    token = await sync_to_async(Token.objects.create)(user=alice)
    user = await selectors.token_user_aget(token.key)
    assert (user.pk, user.username) == (alice.pk, "alice")
    assert await selectors.token_user_aget("not-a-key") is None
    alice.is_active = False
    await sync_to_async(alice.save)()
    assert await selectors.token_user_aget(token.key) is None
