"""Rules for user-supplied text and JSON; each rule lives here once."""

import re

from django.core.exceptions import ValidationError

from .errors import Invalid

# Message bodies: C0 and C1 control characters, except tab (\x09) and newline (\x0a).
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Names: every control character, the bidi marks, embeddings, overrides and isolates
# (U+200E, U+200F, U+202A–U+202E, U+2066–U+2069) that make one name display as
# another, and the invisible zero-width characters (U+200B–U+200D, U+2060, U+FEFF)
# that make two names look the same.
NAME_UNSAFE_CHARS = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff]"
)


def text_clean(value, *, field, limit):
    """`value` stripped: a string of 1–`limit` characters without CONTROL_CHARS.

    Else Invalid naming `field` (message bodies, search queries).
    """
    if not isinstance(value, str):
        raise Invalid(f"{field} must be a string.", field=field)
    value = value.strip()
    if not value:
        raise Invalid(f"{field} is empty.", field=field)
    if len(value) > limit:
        raise Invalid(f"{field} is longer than {limit} characters.", field=field)
    if CONTROL_CHARS.search(value):
        raise Invalid(f"{field} contains control characters.", field=field)
    return value


def validate_name_text(value):
    """Usernames and room names: no control, bidi or zero-width characters."""
    if NAME_UNSAFE_CHARS.search(value):
        raise ValidationError(
            "Control characters, bidirectional marks and overrides, and zero-width"
            " characters are not allowed.",
            code="unsafe_characters",
        )


def validate_new_username(value, *, user=None):
    """A username for a new account (or for `user`, renamed): safe characters, and
    free in any letter case.

    The one rule for the sign-up page, the REST API and the admin (Django's own
    creation form compares case insensitively, its model does not).
    """
    from django.contrib.auth import get_user_model

    validate_name_text(value)
    others = get_user_model().objects.filter(username__iexact=value)
    if user is not None and user.pk is not None:
        others = others.exclude(pk=user.pk)
    if others.exists():
        raise ValidationError(
            "A user with that username already exists.", code="unique"
        )


def json_too_deep(value, limit):
    """True if parsed JSON nests containers deeper than `limit` (the top level is 1)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (dict, list)):
            continue
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)
    return False
