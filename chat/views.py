"""Server-rendered pages: sign up, room list, room."""

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from . import selectors, services
from .forms import RoomCreateForm, SignupForm
from .models import Room

LOBBY = "lobby"


def signup(request):
    if request.user.is_authenticated:
        return redirect("room_list")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        if Room.objects.filter(slug=LOBBY).exists():
            return redirect("room", slug=LOBBY)
        return redirect("room_list")
    return render(request, "registration/signup.html", {"form": form})


@login_required
def room_list(request):
    form = RoomCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            room = services.room_create(user=request.user, **form.cleaned_data)
        except ValidationError as error:
            for field, messages in error.message_dict.items():
                for message in messages:
                    form.add_error(field if field in form.fields else None, message)
        else:
            return redirect("room", slug=room.slug)
    rooms = selectors.room_list()
    return render(request, "chat/room_list.html", {"rooms": rooms, "form": form})


@login_required
def room(request, slug):
    room = get_object_or_404(Room, slug=slug)
    client_config = {
        "room": room.slug,
        "roomName": room.name,
        "user": request.user.username,
        "wsPath": "/ws/chat/",
        "messagesUrl": reverse("api-room-messages", args=[room.slug]),
        "presenceUrl": reverse("api-room-presence", args=[room.slug]),
        "heartbeatInterval": settings.VOICEFLOW["HEARTBEAT_INTERVAL"],
    }
    return render(
        request, "chat/room.html", {"room": room, "client_config": client_config}
    )
