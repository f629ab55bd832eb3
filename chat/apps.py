from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.db import connections

        from presence.broadcast import use_room_groups
        from presence.signals import user_went_offline

        from .broadcast import room_group
        from .services import on_user_went_offline
        from .store import store_select

        # Presence events reach sockets through chat's room groups.
        use_room_groups(room_group)
        # A user presence declares offline starts an offline queue.
        user_went_offline.connect(on_user_went_offline, dispatch_uid="chat.offline")
        # The hot path's storage, for the database's vendor (no connection is made).
        store_select(connections["default"].vendor)
