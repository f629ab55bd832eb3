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
            raise serializers.ValidationError({"password": list(error.messages)})
        return attrs


class RoomCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, validators=[validate_name_text])
    slug = serializers.CharField(max_length=50, required=False, allow_blank=True)


class MessagePostSerializer(serializers.Serializer):
    # Body and client_id rules live in chat.services, shared with the socket path.
    body = serializers.JSONField()
    client_id = serializers.JSONField(required=False, allow_null=True)


class MessageEditSerializer(serializers.Serializer):
    body = serializers.JSONField()  # the rules: chat.services.clean_body


class RoomSerializer(serializers.ModelSerializer):
    member_count = serializers.IntegerField(read_only=True)
    online_count = serializers.SerializerMethodField()

    class Meta:
        model = Room
        fields = [
            "slug",
            "name",
            "created_at",
            "is_locked",
            "member_count",
            "online_count",
        ]

    def get_online_count(self, room):
        return self.context.get("online_counts", {}).get(room.slug, 0)
