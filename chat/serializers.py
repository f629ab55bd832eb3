"""Input validation for the REST API (output is chat.payloads)."""

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from .models import Room
from .validators import validate_name_text, validate_new_username


class RegisterSerializer(serializers.Serializer):
    username = serializers.CharField(
        max_length=150, validators=[UnicodeUsernameValidator(), validate_new_username]
    )
    password = serializers.CharField(max_length=128, trim_whitespace=False)

    def validate(self, attrs):
        user = get_user_model()(username=attrs["username"])
        try:
            validate_password(attrs["password"], user)
        except DjangoValidationError as error:
            raise serializers.ValidationError(
                {"password": list(error.messages)}
            ) from error
        return attrs


class RoomCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, validators=[validate_name_text])
    slug = serializers.CharField(max_length=50, required=False, allow_blank=True)
    visibility = serializers.ChoiceField(
        Room.Visibility.choices, default=Room.Visibility.PUBLIC
    )


class DmOpenSerializer(serializers.Serializer):
    # The list's rules live in chat.services.dm_open.
    users = serializers.JSONField()


class MemberAddSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)


class ReadSerializer(serializers.Serializer):
    seq = serializers.IntegerField(min_value=0)


class MessagePostSerializer(serializers.Serializer):
    # Body and client_id rules live in chat.services, shared with the socket path.
    body = serializers.JSONField()
    client_id = serializers.JSONField(required=False, allow_null=True)


class MessageEditSerializer(serializers.Serializer):
    body = serializers.JSONField()  # the rules: chat.services.clean_body


class RoomSerializer(serializers.ModelSerializer):
    """A room as its viewer sees it (chat.selectors.rooms_for's annotations).

    A DM's `name` is its other members' usernames; `last_read_seq`, `unread` and
    `mentions` are the viewer's, null in a room they are not a member of; the counts
    cover the messages up to `last_seq`, read in the same statement.
    """

    name = serializers.SerializerMethodField()
    member_count = serializers.IntegerField(read_only=True)
    online_count = serializers.SerializerMethodField()
    last_read_seq = serializers.IntegerField(read_only=True, allow_null=True)
    unread = serializers.SerializerMethodField()
    mentions = serializers.SerializerMethodField()
    created_by = serializers.SerializerMethodField()

    class Meta:
        model = Room
        fields = [
            "slug",
            "name",
            "created_at",
            "is_locked",
            "visibility",
            "kind",
            "member_count",
            "online_count",
            "last_read_seq",
            "unread",
            "mentions",
            "last_seq",
            "created_by",
        ]

    def get_name(self, room):
        others = self.context.get("dm_names", {}).get(room.pk)
        return ", ".join(others) if others else room.name

    def get_online_count(self, room):
        return self.context.get("online_counts", {}).get(room.slug, 0)

    def get_unread(self, room):
        return None if room.last_read_seq is None else room.unread

    def get_created_by(self, room):
        return getattr(room, "created_by_name", None)

    def get_mentions(self, room):
        return None if room.last_read_seq is None else room.unread_mentions
