"""Rooms, memberships and messages."""

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,49}\Z"
slug_validator = RegexValidator(
    SLUG_PATTERN,
    "1–50 characters: lowercase letters, digits and hyphens, "
    "not starting with a hyphen.",
)


class Room(models.Model):
    class Visibility(models.TextChoices):
        PUBLIC = "public", "public"
        PRIVATE = "private", "private"

    class Kind(models.TextChoices):
        ROOM = "room", "room"
        DIRECT = "direct", "direct messages"

    slug = models.CharField(max_length=50, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=100)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    is_locked = models.BooleanField(default=False)
    # The room's latest seq; bumped under the row lock in the insert's transaction.
    last_seq = models.BigIntegerField(default=0, editable=False)
    # The room's change counter: bumped under the same row lock for every edit and
    # deletion of one of its messages, which takes the new value as its change_seq.
    last_change = models.BigIntegerField(default=0, editable=False)
    # Who may see the room: chat.access. A private room and a DM: its members only.
    visibility = models.CharField(
        max_length=10, choices=Visibility.choices, default=Visibility.PUBLIC
    )
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.ROOM)
    # A DM's members' ids, sorted and comma-joined: unique, so one set of people
    # has one DM even when two of them open it at once. Null for other rooms.
    dm_key = models.CharField(
        max_length=200, null=True, blank=True, unique=True, editable=False
    )

    class Meta:
        ordering = ["slug"]

    @property
    def is_public(self):
        return self.visibility == self.Visibility.PUBLIC

    def __str__(self):
        return self.slug


class Membership(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="memberships")
    joined_at = models.DateTimeField(default=timezone.now)
    # The highest seq the user has read in the room; only ever moves forward.
    last_read_seq = models.BigIntegerField(default=0, db_default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["room", "user"], name="membership_unique")
        ]
        indexes = [models.Index(fields=["user", "room"], name="membership_user_room")]

    def __str__(self):
        return f"{self.user_id}@{self.room_id}"


class Message(models.Model):
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    seq = models.BigIntegerField()
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="messages"
    )
    body = models.TextField()
    client_id = models.CharField(max_length=64, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True)
    edited_at = models.DateTimeField(null=True, blank=True)
    # The room's change counter at this message's latest edit or deletion (0: never
    # changed). A database default: the raw-SQL inserts leave it out.
    change_seq = models.BigIntegerField(default=0, db_default=0, editable=False)
    # Usernames the body mentions (who may see the room), as stored; null when none.
    mentions = models.JSONField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["room", "seq"]
        constraints = [
            # Also the index behind "after seq N" and "newest N" range scans.
            models.UniqueConstraint(fields=["room", "seq"], name="message_room_seq"),
            models.UniqueConstraint(
                fields=["user", "client_id"],
                condition=Q(client_id__isnull=False),
                name="message_user_client_id",
            ),
        ]
        indexes = [
            # "Changed after N" reads; only changed messages are in it, so it stays
            # small and costs nothing on insert.
            models.Index(
                fields=["room", "change_seq"],
                condition=Q(change_seq__gt=0),
                name="message_room_change",
            ),
        ]

    def __str__(self):
        return f"{self.room_id}#{self.seq}"

    @property
    def is_deleted(self):
        return self.deleted_at is not None


class MessageEdit(models.Model):
    """A message's body before one of its edits: the edit history, for moderators."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="edits")
    previous_body = models.TextField()
    edited_at = models.DateTimeField(default=timezone.now)
    editor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )

    class Meta:
        ordering = ["message", "edited_at", "id"]

    def __str__(self):
        return f"{self.message_id} edited at {self.edited_at}"


class MessageMention(models.Model):
    """A user mentioned by a message: what counts a member's unread mentions.

    `room` and `seq` repeat the message's, so the count per room after a member's
    last read seq is a range scan of (user, room, seq).
    """

    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, related_name="mention_rows"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="+")
    seq = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["message", "user"], name="message_mention_unique"
            )
        ]
        indexes = [
            models.Index(fields=["user", "room", "seq"], name="mention_user_room_seq")
        ]

    def __str__(self):
        return f"{self.user_id} in {self.room_id}#{self.seq}"


class Mute(models.Model):
    """A user may not post or type anywhere until `until`."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mutes"
    )
    until = models.DateTimeField()
    reason = models.CharField(max_length=200, blank=True)
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["user", "until"], name="mute_user_until")]

    def __str__(self):
        return f"{self.user_id} until {self.until:%Y-%m-%d %H:%M}"


class ModerationAction(models.Model):
    """Who did what to whom, and when: the moderation audit trail."""

    class Kind(models.TextChoices):
        MESSAGE_DELETE = "message_delete", "delete message"
        ROOM_LOCK = "room_lock", "lock room"
        ROOM_UNLOCK = "room_unlock", "unlock room"
        USER_MUTE = "user_mute", "mute user"
        USER_UNMUTE = "user_unmute", "unmute user"
        USER_KICK = "user_kick", "kick user"

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        on_delete=models.SET_NULL,
        related_name="moderation_actions",
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    target_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    room = models.ForeignKey(
        Room, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.get_kind_display()} by {self.actor_id} at {self.created_at}"


class OfflineMark(models.Model):
    """When a user went offline: their offline queue holds what others posted since.

    Set by presence's `user_went_offline` hook; taken (deleted) on their next connect.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        primary_key=True,
        on_delete=models.CASCADE,
        related_name="+",
    )
    since = models.DateTimeField()

    def __str__(self):
        return f"{self.user_id} offline since {self.since}"
