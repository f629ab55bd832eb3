from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from presence.broadcast import use_room_groups

        from .broadcast import room_group

        # Presence events reach sockets through chat's room groups.
        use_room_groups(room_group)
