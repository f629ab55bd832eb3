"""Server-rendered pages: sign up, log in, room list, room."""

import functools

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.debug import sensitive_post_parameters

from . import access, selectors, services
from .forms import LoginForm, RoomCreateForm, SignupForm, refusal_status
from .models import Room

LOBBY = "lobby"


def _refusals_answered(view):
    """A page whose form was refused by a rate limit answers 429 (or 503), not 200."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        context = getattr(response, "context_data", None) or {}
        status = refusal_status(context.get("form"))
        if status:
            response.status_code = status
        return response

    return wrapper


login_view = _refusals_answered(
    auth_views.LoginView.as_view(authentication_form=LoginForm)
)
# The admin's login form (chat.admin sets it) counts against the same limits.
admin_login_view = _refusals_answered(admin.site.login)


def _render(request, template, context, form):
    return render(request, template, context, status=refusal_status(form) or 200)


@sensitive_post_parameters("password1", "password2")
def signup(request):
    if request.user.is_authenticated:
        return redirect("room_list")
    form = SignupForm(request.POST or None, request=request)
    if request.method == "POST":
        if not form.is_valid():
            form.rate_refund()
        else:
            user = form.save()
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            if Room.objects.filter(slug=LOBBY).exists():
                return redirect("room", slug=LOBBY)
            return redirect("room_list")
    return _render(request, "registration/signup.html", {"form": form}, form)


@login_required
def room_list(request):
    form = RoomCreateForm(request.POST or None, request=request)
    if request.method == "POST":
        if form.is_valid():
            try:
                room = services.room_create(user=request.user, **form.cleaned_data)
            except ValidationError as error:
                for field, messages in error.message_dict.items():
                    for message in messages:
                        form.add_error(field if field in form.fields else None, message)
            else:
                return redirect("room", slug=room.slug)
        form.rate_refund()  # only rooms created count
    rooms = selectors.room_list().filter(
        pk__in=selectors.room_queryset_visible(user=request.user).values("pk")
    )
    page = Paginator(rooms, settings.VOICEFLOW["ROOM_PAGE_SIZE"]).get_page(
        request.GET.get("page")
    )
    return _render(
        request,
        "chat/room_list.html",
        {"rooms": page, "page": page, "form": form},
        form,
    )


@login_required
def room(request, slug):
    room = get_object_or_404(
        selectors.room_queryset_visible(user=request.user), slug=slug
    )
    name = selectors.room_name_for(user=request.user, room=room)
    is_moderator = access.user_can_moderate(user=request.user)
    client_config = {
        "room": room.slug,
        "roomName": name,
        "roomKind": room.kind,
        "roomVisibility": room.visibility,
        "roomLocked": room.is_locked,
        "user": request.user.username,
        "isStaff": request.user.is_staff,
        "roomsUrl": reverse("api-rooms"),
        "dmsUrl": reverse("api-dms"),
        "wsPath": "/ws/chat/",
        "messagesUrl": reverse("api-room-messages", args=[room.slug]),
        "presenceUrl": reverse("api-room-presence", args=[room.slug]),
        "searchUrl": reverse("api-search"),
        "heartbeatInterval": settings.VOICEFLOW["HEARTBEAT_INTERVAL"],
        "editWindow": settings.VOICEFLOW["EDIT_WINDOW"],
        # Delete on others' messages too (never in DMs); the server checks again on
        # every delete. isModerator is what the page applies to the rooms it opens.
        "canModerate": is_moderator and room.kind == Room.Kind.ROOM,
        "isModerator": is_moderator,
    }
    return render(
        request,
        "chat/room.html",
        {"room": room, "room_name": name, "client_config": client_config},
    )
