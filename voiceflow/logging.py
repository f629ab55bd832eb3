"""Log filters and formatters."""

import json
import logging
import re
import time

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


# LogRecord attributes that are not "extra" fields passed by the caller.
_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
    | {"message", "asctime", "color_message"}  # uvicorn's ANSI copy of the message
)


def _extra(record):
    return {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the extra fields."""

    converter = time.gmtime  # type: ignore[assignment]

    def format(self, record):
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_extra(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Readable lines for development: time, level, logger, message, extras."""

    converter = time.gmtime  # type: ignore[assignment]

    def format(self, record):
        line = (
            f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} "
            f"{record.name}: {record.getMessage()}"
        )
        extra = " ".join(f"{k}={v}" for k, v in _extra(record).items())
        if extra:
            line += f" [{extra}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line
