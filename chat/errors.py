"""Refusals shared by the socket and REST transports, named by the contract's codes."""


class ChatError(Exception):
    """A request was refused; `code` is the contract's error code."""

    code = "invalid"
    http_status = 400

    def __init__(self, detail, *, field=None, retry_after=None):
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.retry_after = retry_after


class Invalid(ChatError):
    code, http_status = "invalid", 400


class NotFound(ChatError):
    code, http_status = "not_found", 404


class Forbidden(ChatError):
    code, http_status = "forbidden", 403


class RateLimited(ChatError):
    code, http_status = "rate_limited", 429


class Unavailable(ChatError):
    code, http_status = "unavailable", 503
