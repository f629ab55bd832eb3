"""Page forms."""

from django import forms
from django.contrib.auth.forms import UserCreationForm

from .models import slug_validator
from .validators import validate_name_text


class SignupForm(UserCreationForm):
    def clean_username(self):
        username = super().clean_username()
        validate_name_text(username)
        return username


class RoomCreateForm(forms.Form):
    name = forms.CharField(max_length=100, validators=[validate_name_text])
    slug = forms.CharField(
        max_length=50,
        required=False,
        validators=[slug_validator],
        help_text="Optional: made from the name when left empty.",
    )
