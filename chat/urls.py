from django.contrib.auth import views as auth_views
from django.urls import path

from . import api, views

api_urlpatterns = [
    path("auth/register/", api.RegisterView.as_view(), name="api-register"),
    path("auth/token/", api.TokenView.as_view(), name="api-token"),
    path("ws-ticket/", api.WsTicketView.as_view(), name="api-ws-ticket"),
    path("rooms/", api.RoomListView.as_view(), name="api-rooms"),
    path("dms/", api.DmView.as_view(), name="api-dms"),
    path("rooms/<str:slug>/", api.RoomDetailView.as_view(), name="api-room"),
    path(
        "rooms/<str:slug>/messages/",
        api.RoomMessagesView.as_view(),
        name="api-room-messages",
    ),
    path(
        "rooms/<str:slug>/messages/<int:message_id>/",
        api.RoomMessageView.as_view(),
        name="api-room-message",
    ),
    path("search/", api.SearchView.as_view(), name="api-search"),
    path(
        "rooms/<str:slug>/presence/",
        api.RoomPresenceView.as_view(),
        name="api-room-presence",
    ),
    path(
        "rooms/<str:slug>/members/",
        api.RoomMembersView.as_view(),
        name="api-room-members",
    ),
    path(
        "rooms/<str:slug>/members/<str:username>/",
        api.RoomMemberView.as_view(),
        name="api-room-member",
    ),
    path("rooms/<str:slug>/read/", api.RoomReadView.as_view(), name="api-room-read"),
    path(
        "rooms/<str:slug>/membership/",
        api.MembershipView.as_view(),
        name="api-room-membership",
    ),
]

page_urlpatterns = [
    path("", views.room_list, name="room_list"),
    path("rooms/<slug:slug>/", views.room, name="room"),
    path("signup/", views.signup, name="signup"),
    path("login/", views.login_view, name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
