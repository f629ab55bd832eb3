"""Rules for user-supplied text and JSON; each rule lives here once."""

import re

from django.core.exceptions import ValidationError

# Message bodies: C0 and C1 control characters, except tab (\x09) and newline (\x0a).
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Names: every control character, and the bidi embeddings, overrides and isolates
# (U+202A–U+202E, U+2066–U+2069) that make one name display as another.
NAME_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def validate_name_text(value):
    """Usernames and room names: no control characters and no bidi overrides."""
    if NAME_UNSAFE_CHARS.search(value):
        raise ValidationError(
            "Control characters and bidirectional overrides are not allowed.",
            code="unsafe_characters",
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
