"""Page forms."""

from django import forms

from .models import slug_validator


class RoomCreateForm(forms.Form):
    name = forms.CharField(max_length=100)
    slug = forms.CharField(
        max_length=50,
        required=False,
        validators=[slug_validator],
        help_text="Optional: made from the name when left empty.",
    )
