"""Page forms."""

import hashlib

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import (
    AdminUserCreationForm,
    AuthenticationForm,
    UserChangeForm,
    UserCreationForm,
)
from django.core.exceptions import ValidationError
from django.forms.utils import ErrorDict

from . import ratelimit
from .errors import ChatError
from .models import Room, slug_validator
from .validators import validate_name_text, validate_new_username


class RateLimitedForm:
    """A form whose submissions count against rate limits (chat.ratelimit) first.

    Over a limit the form is invalid with one non-field error (code `rate_limited`)
    and nothing else is checked: no password is hashed, nothing is saved.
    `refusal_status(form)` gives the page's HTTP status.
    """

    def rate_limits(self) -> list[tuple[str, str]]:
        return []

    def full_clean(self):
        self.rate_decisions = []
        if self.is_bound:
            try:
                self.rate_decisions = ratelimit.rate_hits_sync(self.rate_limits())
            except ChatError as refusal:
                self._errors = ErrorDict(renderer=self.renderer)
                self.cleaned_data = {}
                self.add_error(None, ValidationError(refusal.detail, code=refusal.code))
                return
        super().full_clean()

    def rate_refund(self):
        ratelimit.rate_refund_sync(self.rate_decisions)
        self.rate_decisions = []


def refusal_status(form) -> int | None:
    """429 or 503 if `form` was refused by a rate limit (or could not check one)."""
    if form is None or not form.is_bound:
        return None
    codes = {error.code for error in form.non_field_errors().as_data()}
    if "rate_limited" in codes:
        return 429
    if "unavailable" in codes:
        return 503
    return None


def _username_key(username):
    # Bounded and case-blind: usernames are unique whatever their case.
    return hashlib.sha256(username.casefold().encode()).hexdigest()[:32]


class LoginLimitMixin(RateLimitedForm):
    """Failed logins count per client IP and per username; a success is refunded."""

    def rate_limits(self):
        ip = ratelimit.request_client_ip(self.request)
        username = str(self.data.get(self.add_prefix("username"), ""))
        return [("login", ip), ("login_user", _username_key(username))]

    def clean(self):
        cleaned = super().clean()
        self.rate_refund()  # reached only when the credentials were right
        return cleaned


class LoginForm(LoginLimitMixin, AuthenticationForm):
    pass


class AdminLoginForm(LoginLimitMixin, AdminAuthenticationForm):
    pass


class UsernameRuleMixin:
    """Usernames by chat.validators.validate_new_username (not super()'s check, which
    returns None for a taken name)."""

    def clean_username(self):
        username = self.cleaned_data.get("username")
        if username:
            validate_new_username(username, user=self.instance)
        return username


class SignupForm(UsernameRuleMixin, RateLimitedForm, UserCreationForm):
    def __init__(self, *args, request, **kwargs):
        super().__init__(*args, **kwargs)
        self.request = request

    def rate_limits(self):
        return [("signup", ratelimit.request_client_ip(self.request))]


class AdminUserAddForm(UsernameRuleMixin, AdminUserCreationForm):
    pass


class AdminUserEditForm(UsernameRuleMixin, UserChangeForm):
    pass


class RoomAdminForm(forms.ModelForm):
    class Meta:
        model = Room
        fields = "__all__"

    def clean_name(self):
        name = self.cleaned_data.get("name")
        if name:
            validate_name_text(name)
        return name


class RoomCreateForm(RateLimitedForm, forms.Form):
    name = forms.CharField(max_length=100, validators=[validate_name_text])
    slug = forms.CharField(
        max_length=50,
        required=False,
        validators=[slug_validator],
        help_text="Optional: made from the name when left empty.",
    )

    def __init__(self, *args, request, **kwargs):
        super().__init__(*args, **kwargs)
        self.request = request

    def rate_limits(self):
        return [("room_create", ratelimit.request_client_ip(self.request))]
