from django.contrib import admin

from .models import Membership, Message, Room


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "is_locked", "last_seq", "created_by", "created_at"]
    list_filter = ["is_locked", "created_at"]
    search_fields = ["slug", "name"]
    list_select_related = ["created_by"]
    readonly_fields = ["last_seq", "created_at"]
    raw_id_fields = ["created_by"]

    def get_readonly_fields(self, request, obj=None):
        # Sockets subscribe by slug: renaming a live room would orphan them.
        return [*self.readonly_fields, "slug"] if obj else self.readonly_fields


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "room", "joined_at"]
    list_filter = ["room"]
    search_fields = ["user__username", "room__slug"]
    list_select_related = ["user", "room"]
    raw_id_fields = ["user", "room"]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "room", "seq", "user", "short_body", "created_at", "deleted_at"]
    list_filter = ["room", "created_at", "deleted_at"]
    search_fields = ["body", "user__username", "client_id"]
    list_select_related = ["room", "user"]
    raw_id_fields = ["room", "user"]
    readonly_fields = ["room", "seq", "user", "client_id", "created_at"]
    show_full_result_count = False

    @admin.display(description="body")
    def short_body(self, message):
        return message.body[:80]
