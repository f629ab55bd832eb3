"""Log filters."""

import logging
import re

_QUERY = re.compile(r"\?[^\s\"']*")


class RedactQueryStringFilter(logging.Filter):
    """Replace URL query strings in log records: WebSocket tickets travel there."""

    def filter(self, record):
        if isinstance(record.msg, str) and "?" in record.msg:
            record.msg = _QUERY.sub("?[redacted]", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                _QUERY.sub("?[redacted]", a) if isinstance(a, str) else a
                for a in record.args
            )
        return True
