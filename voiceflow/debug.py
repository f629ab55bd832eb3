"""Error reports (Django's debug page, mailed reports) without secrets in them."""

import re

from django.views import debug

# The credentials of a URL (`scheme://user:password@host`, or a DSN's key@host).
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")
# Frame variables whose value mentions a password (a credentials dict, a serializer).
_PASSWORD_TEXT = re.compile(r"passw", re.I)


class SafeExceptionReporterFilter(debug.SafeExceptionReporterFilter):
    """Django's filter, also in DEBUG, and for credentials in URLs and frame values.

    Django's own stops filtering when DEBUG is on, but a debug page is shown to
    whoever makes the error, passwords and all.
    """

    hidden_settings = re.compile(
        "API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|DSN", flags=re.I
    )

    def is_active(self, request):
        return True

    def cleanse_setting(self, key, value):
        cleansed = super().cleanse_setting(key, value)
        if isinstance(cleansed, str):
            return _URL_CREDENTIALS.sub(rf"\1{self.cleansed_substitute}@", cleansed)
        return cleansed

    def get_traceback_frame_variables(self, request, tb_frame):
        posted = self._posted_secrets(request)
        return [
            (
                name,
                self.cleansed_substitute if self._leaks(name, value, posted) else value,
            )
            for name, value in super().get_traceback_frame_variables(request, tb_frame)
        ]

    def _posted_secrets(self, request):
        names = getattr(request, "sensitive_post_parameters", None) or ()
        post = getattr(request, "POST", None) or {}
        if names == "__ALL__":
            names = list(post)
        return [value for name in names for value in post.getlist(name) if value]

    def _leaks(self, name, value, posted):
        if value == self.cleansed_substitute:
            return False
        if self.hidden_settings.search(name):
            return True
        try:
            text = repr(value)
        except Exception:
            return True
        return bool(
            _PASSWORD_TEXT.search(text)
            or _URL_CREDENTIALS.search(text)
            or any(secret in text for secret in posted)
        )
