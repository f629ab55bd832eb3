"""Moderation in the Django admin: every action goes through chat.services, so it is
recorded and reaches live sockets."""

from datetime import timedelta

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from . import access, services
from .forms import AdminLoginForm, AdminUserAddForm, AdminUserEditForm, RoomAdminForm
from .models import Membership, Message, MessageEdit, ModerationAction, Mute, Room

User = get_user_model()

# Admin logins count against the page's login limits (chat.forms).
admin.site.login_form = AdminLoginForm


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    form = RoomAdminForm
    list_display = [
        "slug",
        "name",
        "visibility",
        "kind",
        "is_locked",
        "last_seq",
        "created_by",
        "created_at",
    ]
    list_filter = ["visibility", "kind", "is_locked", "created_at"]
    search_fields = ["slug", "name"]
    list_select_related = ["created_by"]
    # DMs are opened through the API only (their key and members go together).
    readonly_fields = ["last_seq", "created_at", "is_locked", "kind"]
    raw_id_fields = ["created_by"]
    show_full_result_count = False
    actions = ["lock_rooms", "unlock_rooms"]

    def get_readonly_fields(self, request, obj=None):
        # Sockets subscribe by slug: renaming a live room would orphan them. Joined
        # sockets keep the visibility they joined under: it is fixed at creation.
        fixed = ["slug", "visibility"]
        return [*self.readonly_fields, *fixed] if obj else self.readonly_fields

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        # Created as on the page and the API: a private room's creator (the user
        # picked, else the admin) is its first member, or only staff could see it.
        room = services.room_create(
            user=obj.created_by or request.user,
            name=obj.name,
            slug=obj.slug,
            visibility=obj.visibility,
        )
        obj.pk, obj.created_by = room.pk, room.created_by

    @admin.action(
        description="Lock selected rooms (reading still works)", permissions=["change"]
    )
    def lock_rooms(self, request, queryset):
        self._set_lock(request, queryset, True)

    @admin.action(description="Unlock selected rooms", permissions=["change"])
    def unlock_rooms(self, request, queryset):
        self._set_lock(request, queryset, False)

    def _set_lock(self, request, queryset, locked):
        changed = sum(
            services.room_lock_set(actor=request.user, room=room, locked=locked)
            for room in queryset
        )
        verb = "locked" if locked else "unlocked"
        self.message_user(request, f"{changed} room(s) {verb}.", messages.SUCCESS)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "room", "joined_at"]
    search_fields = ["user__username", "room__slug"]
    list_select_related = ["user", "room"]
    raw_id_fields = ["user", "room"]
    show_full_result_count = False


class DeletedFilter(admin.SimpleListFilter):
    title = "deleted"
    parameter_name = "deleted"

    def lookups(self, request, model_admin):
        return [("no", "live"), ("yes", "deleted")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(deleted_at__isnull=self.value() == "no")
        return queryset


class MessageEditInline(admin.TabularInline):
    """The edit history: each earlier body, when it was replaced and by whom."""

    model = MessageEdit
    fields = ["edited_at", "editor", "previous_body"]
    readonly_fields = fields
    ordering = ["edited_at", "id"]
    extra = 0
    can_delete = False
    verbose_name = "earlier version"
    verbose_name_plural = "edit history (earlier bodies, oldest first)"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("editor")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    # Built for 100,000s of rows: newest first by primary key, no full counts, room
    # picked by slug in the search box instead of a filter listing every room.
    list_display = [
        "id",
        "room",
        "seq",
        "user",
        "short_body",
        "created_at",
        "edited_at",
        "deleted_at",
    ]
    list_filter = [DeletedFilter]
    search_fields = ["body"]
    search_help_text = "A room slug or a username (exact), else words of the body."
    list_select_related = ["room", "user"]
    list_per_page = 50
    ordering = ["-id"]
    raw_id_fields = ["room", "user"]
    readonly_fields = [
        "room",
        "seq",
        "user",
        "body",
        "client_id",
        "created_at",
        "edited_at",
        "deleted_at",
    ]
    inlines = [MessageEditInline]
    show_full_result_count = False
    actions = ["delete_messages"]

    def get_search_results(self, request, queryset, search_term):
        # An exact room or user narrows by its indexed key instead of OR-ing it with
        # a body scan, which would read the whole table.
        term = search_term.strip()
        if term:
            room = Room.objects.filter(slug=term).values_list("pk", flat=True)
            if room:
                return queryset.filter(room_id=room[0]), False
            user = User.objects.filter(username=term).values_list("pk", flat=True)
            if user:
                return queryset.filter(user_id=user[0]), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="body")
    def short_body(self, message):
        return "(deleted)" if message.deleted_at else message.body[:80]

    def has_delete_permission(self, request, obj=None):
        # Hard deletes would leave seq gaps; moderators soft-delete (a tombstone).
        return False

    def has_add_permission(self, request):
        return False

    def has_moderate_permission(self, request):
        # Whoever may delete others' messages on the page and the API, and no one else.
        return access.user_can_moderate(user=request.user)

    @admin.action(
        description="Delete selected messages (tombstones, live)",
        permissions=["moderate"],
    )
    def delete_messages(self, request, queryset):
        count = services.messages_delete(actor=request.user, messages=list(queryset))
        self.message_user(request, f"{count} message(s) deleted.", messages.SUCCESS)


@admin.register(Mute)
class MuteAdmin(admin.ModelAdmin):
    list_display = ["user", "until", "reason", "by", "created_at"]
    search_fields = ["=user__username"]
    list_select_related = ["user", "by"]
    raw_id_fields = ["user"]
    fields = ["user", "until", "reason"]
    show_full_result_count = False

    def has_change_permission(self, request, obj=None):
        return False  # unmute from the user list, so sockets hear of it

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        mute = services.user_mute(
            actor=request.user,
            user=obj.user,
            duration=obj.until - obj.created_at,
            reason=obj.reason,
        )
        obj.pk = mute.pk


@admin.register(ModerationAction)
class ModerationActionAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "kind",
        "actor",
        "target_user",
        "room",
        "message_id",
        "reason",
    ]
    list_filter = ["kind"]
    search_fields = ["=actor__username", "=target_user__username", "=room__slug"]
    list_select_related = ["actor", "target_user", "room"]
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def _mute_action(minutes, label):
    def mute(modeladmin, request, queryset):
        for user in queryset:
            services.user_mute(
                actor=request.user, user=user, duration=timedelta(minutes=minutes)
            )
        modeladmin.message_user(request, f"{len(queryset)} user(s) muted for {label}.")

    mute.__name__ = f"mute_{minutes}_minutes"
    return admin.action(description=f"Mute for {label}", permissions=["change"])(mute)


if admin.site.is_registered(User):
    admin.site.unregister(User)


@admin.register(User)
class ModeratedUserAdmin(UserAdmin):
    add_form = AdminUserAddForm
    form = AdminUserEditForm
    show_full_result_count = False
    actions = [
        _mute_action(15, "15 minutes"),
        _mute_action(60, "1 hour"),
        _mute_action(24 * 60, "24 hours"),
        "unmute_users",
        "kick_users",
    ]

    @admin.action(description="Unmute", permissions=["change"])
    def unmute_users(self, request, queryset):
        count = sum(services.user_unmute(actor=request.user, user=u) for u in queryset)
        self.message_user(request, f"{count} user(s) unmuted.")

    @admin.action(description="Kick (close all their sockets)", permissions=["change"])
    def kick_users(self, request, queryset):
        for user in queryset:
            services.user_kick(actor=request.user, user=user)
        self.message_user(request, f"{queryset.count()} user(s) kicked.")
