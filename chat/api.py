"""REST API: thin views that parse, authorize, call a service and reply."""

import functools
import math

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DatabaseError, IntegrityError
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters
from rest_framework import generics, serializers, status
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import AuthenticationFailed, NotAuthenticated
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from presence import selectors as presence_selectors
from voiceflow import metrics
from voiceflow.breaker import UNREACHABLE
from voiceflow.responses import json_send

from . import access, ratelimit, selectors, services
from .auth import header, host_allowed, token_user
from .errors import ChatError, Invalid, Unavailable
from .payloads import message_data
from .serializers import (
    DmOpenSerializer,
    MemberAddSerializer,
    MessageEditSerializer,
    MessagePostSerializer,
    ReadSerializer,
    RegisterSerializer,
    RoomCreateSerializer,
    RoomSerializer,
)
from .tickets import ticket_aissue, ticket_issue


def exception_handler(exc, context):
    """Contract errors keep their HTTP status; field errors name their field."""
    request = context.get("request")
    if (
        isinstance(exc, (NotAuthenticated, AuthenticationFailed))
        and request is not None
    ):
        # DRF throttles after authentication: count refused credentials here, so
        # guessing tokens is limited like any other request.
        try:
            ratelimit.ClientIpThrottle().allow_request(request, context.get("view"))
        except ChatError as refusal:
            exc = refusal
    if isinstance(exc, DjangoValidationError):
        exc = serializers.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        )
    if isinstance(exc, UNREACHABLE):  # what only Redis knows (presence) is unknown
        exc = Unavailable("Redis is unreachable; retry later.")
    if isinstance(exc, ChatError):
        data, status_code, headers = _chat_error(exc)
        return Response(data, status=status_code, headers=headers)
    if isinstance(exc, DatabaseError) and not isinstance(exc, IntegrityError):
        metrics.ERRORS.labels("unavailable").inc()
        return Response(
            {
                "detail": "The database is unavailable; retry later.",
                "code": "unavailable",
            },
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    return drf_exception_handler(exc, context)


def _chat_error(exc):
    """A contract error's body, status and headers; field errors name their field."""
    metrics.ERRORS.labels(exc.code).inc()
    if exc.field and isinstance(exc, Invalid):
        data = {exc.field: [exc.detail]}
    else:
        data = {"detail": exc.detail, "code": exc.code}
    headers = {}
    if exc.retry_after is not None:
        # Whole seconds, rounded up: retrying on time must never be refused again.
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return data, exc.http_status, headers


# Form-encoded credentials are masked in error reports (JSON bodies never show there).
_passwords_hidden = method_decorator(
    sensitive_post_parameters("password"), name="dispatch"
)


@_passwords_hidden
class RegisterView(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []

    def post(self, request):
        serializer = RegisterSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token = services.user_register(**serializer.validated_data)
        return Response({"token": token.key}, status=status.HTTP_201_CREATED)


@_passwords_hidden
class TokenView(ObtainAuthToken):
    # DRF's stock view opts out of throttling; password guessing must not.
    throttle_classes = [ratelimit.ClientIpThrottle]
    # ...and of the project's parsers (its JSON parser has no depth limit).
    parser_classes = api_settings.DEFAULT_PARSER_CLASSES


class WsTicketView(APIView):
    def post(self, request):
        ticket = ticket_issue(request.user.pk)
        return Response(
            {"ticket": ticket, "expires_in": settings.VOICEFLOW["TICKET_TTL"]}
        )


class WsTicketFastPath:
    """ASGI: POST /api/ws-ticket/ with a valid API token, answered on the event loop.

    Every reconnect asks for a ticket. Through Django's handler one costs ~5 ms of CPU,
    mostly thread hops (each middleware hops twice in async mode, a sync view once
    more). Anything else (sessions and their CSRF check, bad tokens, other methods,
    hosts not allowed, the database down) goes on to Django and DRF, answered as ever.
    """

    def __init__(self, app):
        self.app = app

    @functools.cached_property
    def path(self):
        return reverse("api-ws-ticket")

    async def __call__(self, scope, receive, send):
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == self.path
            and host_allowed(scope)
        ):
            user = await self._user(scope)
            if user is not None:
                await self._issue(scope, user, send)
                return
        await self.app(scope, receive, send)

    async def _user(self, scope):
        try:
            return await token_user(header(scope, b"authorization"))
        except DatabaseError:
            return None  # Django answers, with DRF's 503

    async def _issue(self, scope, user, send):
        try:
            decision = await ratelimit.rate_hit(
                "rest", ratelimit.scope_client_ip(scope)
            )
            if not decision.allowed:
                raise decision.refusal("requests")  # as ClientIpThrottle refuses
            ticket = await ticket_aissue(user.pk)
        except ChatError as error:
            await json_send(send, *_chat_error(error))
            return
        body = {"ticket": ticket, "expires_in": settings.VOICEFLOW["TICKET_TTL"]}
        await json_send(send, body, 200, {})


def _room_data(user, rooms, many=False):
    """Rooms (from selectors.rooms_for) as `user` sees them, `online_count` from
    presence (as the presence endpoint)."""
    listed = rooms if many else [rooms]
    counts = async_to_sync(presence_selectors.room_online_counts)(
        [room.slug for room in listed]
    )
    context = {
        "online_counts": counts,
        "dm_names": selectors.dm_names(user=user, rooms=listed),
    }
    return RoomSerializer(rooms, many=many, context=context).data


def _room_response(user, room, code=status.HTTP_200_OK):
    room = selectors.room_for(user=user, slug=room.slug)
    return Response(_room_data(user, room), status=code)


class RoomListView(generics.ListAPIView):
    serializer_class = RoomSerializer

    def get_queryset(self):
        # ?mine=1: only the rooms and DMs the user is a member of (the page's sidebar).
        mine = self.request.query_params.get("mine") in ("1", "true")
        return selectors.rooms_for(user=self.request.user, member_only=mine)

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(_room_data(request.user, page, many=True))

    def post(self, request):
        serializer = RoomCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        # The room page's limit, per client IP; a refused creation is not counted.
        decisions = ratelimit.rate_hits_sync(
            [("room_create", ratelimit.request_client_ip(request))]
        )
        try:
            room = services.room_create(user=request.user, **serializer.validated_data)
        except DjangoValidationError:
            ratelimit.rate_refund_sync(decisions)
            raise
        return _room_response(request.user, room, status.HTTP_201_CREATED)


class DmView(APIView):
    def post(self, request):
        serializer = DmOpenSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        room, created = services.dm_open(
            user=request.user, usernames=serializer.validated_data["users"]
        )
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return _room_response(request.user, room, code)


class RoomDetailView(APIView):
    def get(self, request, slug):
        room = selectors.room_for(user=request.user, slug=slug)
        return Response(_room_data(request.user, room))


class RoomMembersView(APIView):
    def get(self, request, slug):
        room = access.room_get_visible(user=request.user, slug=slug)
        members = selectors.room_members(room=room)
        return Response({"results": [{"username": name} for name in members]})

    def post(self, request, slug):
        room = access.room_get_visible(user=request.user, slug=slug)
        serializer = MemberAddSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        username = serializer.validated_data["username"]
        added = services.room_member_add(
            actor=request.user, room=room, username=username
        )
        code = status.HTTP_201_CREATED if added else status.HTTP_200_OK
        return Response({"username": username}, status=code)


class RoomMemberView(APIView):
    def delete(self, request, slug, username):
        room = access.room_get_visible(user=request.user, slug=slug)
        services.room_member_remove(actor=request.user, room=room, username=username)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RoomReadView(APIView):
    def post(self, request, slug):
        room = access.room_get_visible(user=request.user, slug=slug)
        serializer = ReadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        state, _ = services.membership_read(
            user=request.user, room=room, seq=serializer.validated_data["seq"]
        )
        return Response(state)


class RoomPresenceView(APIView):
    def get(self, request, slug):
        room = access.room_get_visible(user=request.user, slug=slug)
        users = async_to_sync(presence_selectors.room_presence)(room.slug)
        return Response({"users": users})


class RoomMessagesView(APIView):
    def get(self, request, slug):
        room = access.room_get_visible(user=request.user, slug=slug)
        limit = selectors.history_limit(request.query_params.get("limit"))
        changed_after = _seq_param(request, "changed_after")
        if changed_after is not None:
            return self._changed(room, changed_after, limit)
        after = _seq_param(request, "after")
        before = _seq_param(request, "before")
        if after is not None:
            rows, has_more = selectors.messages_after(
                room.id, after, limit, before=before
            )
        elif before is not None:
            rows, has_more = selectors.messages_before(room.id, before, limit)
        else:
            rows, has_more = selectors.messages_latest(room.id, limit)
        results = [message_data(m, room_slug=room.slug) for m in rows]
        return Response({"results": results, "has_more": has_more})

    def _changed(self, room, changed_after, limit):
        rows, has_more = selectors.messages_changed_after(room.id, changed_after, limit)
        # What the reply is complete up to: the next page's changed_after, else the
        # room's counter (read before the rows, which commit in counter order).
        last_change = max(room.last_change, rows[-1].change_seq if rows else 0)
        if has_more:
            last_change = rows[-1].change_seq
        results = [message_data(m, room_slug=room.slug) for m in rows]
        return Response(
            {"results": results, "has_more": has_more, "last_change": last_change}
        )

    def post(self, request, slug):
        room = access.room_get_visible(user=request.user, slug=slug)
        serializer = MessagePostSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = async_to_sync(services.message_send)(
            user=request.user, room=room, **serializer.validated_data
        )
        code = status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
        return Response(result.message, status=code)


class RoomMessageView(APIView):
    def patch(self, request, slug, message_id):
        room = access.room_get_visible(user=request.user, slug=slug)
        serializer = MessageEditSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = async_to_sync(services.message_edit)(
            user=request.user,
            room=room,
            message_id=message_id,
            body=serializer.validated_data["body"],
        )
        return Response(result.event["message"])

    def delete(self, request, slug, message_id):
        room = access.room_get_visible(user=request.user, slug=slug)
        services.message_delete(user=request.user, room=room, message_id=message_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SearchView(APIView):
    def get(self, request):
        params = request.query_params
        query = selectors.search_query_clean(params.get("q"))
        limit = selectors.history_limit(params.get("limit"))
        room = params.get("room") or None
        if room is not None and not selectors.is_room_slug(room):
            raise Invalid("room must be a room slug.", field="room")
        rows, has_more = selectors.messages_search(
            user=request.user,
            query=query,
            room=room,
            author=params.get("from") or None,
            before=_seq_param(request, "before"),
            limit=limit,
        )
        results = [message_data(m) for m in rows]
        return Response({"results": results, "has_more": has_more})


class MembershipView(APIView):
    def delete(self, request, slug):
        room = access.room_get_visible(user=request.user, slug=slug)
        services.membership_end(user=request.user, room=room)
        return Response(status=status.HTTP_204_NO_CONTENT)


def _seq_param(request, name):
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    try:
        seq = int(value)
    except ValueError:
        raise Invalid(f"{name} must be an integer.", field=name) from None
    if seq < 0:
        raise Invalid(f"{name} must not be negative.", field=name)
    return seq
