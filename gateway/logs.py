"""Log formats: `text` (one readable line) or `json` (one JSON object per line, for log
pipelines), for the gateway's own loggers and uvicorn's alike.

Both add the id of the request being served (`gateway.reqctx`) to every record logged while
serving it, so an error line can be matched with its access line and with the upstream's logs.
The access line (`gateway.access`) carries its fields as attributes (`extra=`), which the JSON
format writes as fields of their own.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import msgspec

from gateway import reqctx

ACCESS_LOGGER = "gateway.access"
FORMATS = ("text", "json")
# The fields of an access record (`extra=` of `gateway.access`), in the order written.
ACCESS_FIELDS = ("method", "route", "path", "status", "duration_ms", "key", "model_group",
                 "upstream_calls", "client")

_encode = msgspec.json.Encoder().encode


def _request_id(record: logging.LogRecord) -> str | None:
    rid = getattr(record, "request_id", None)
    return rid if isinstance(rid, str) else reqctx.request_id()


class TextFormatter(logging.Formatter):
    """`2026-11-30 07:00:00,123 INFO gateway.access: GET ... request_id=…`"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = _request_id(record)
        if rid and record.name != ACCESS_LOGGER:  # the access line has it already
            first, nl, rest = line.partition("\n")
            line = f"{first} request_id={rid}{nl}{rest}"
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per record: `ts` (UTC, ISO 8601), `level`, `logger`, `message`, `pid`,
    `request_id` when serving one, the access fields, and `exc` for a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        rid = _request_id(record)
        if rid:
            out["request_id"] = rid
        for name in ACCESS_FIELDS:
            if name in record.__dict__:
                out[name] = record.__dict__[name]
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return _encode(out).decode()


def logging_config(level: str = "info", fmt: str = "text") -> dict[str, Any]:
    """A `logging.config.dictConfig` for the whole process (uvicorn applies it in each worker):
    everything to stderr in one format; uvicorn's own access log off (the gateway writes its
    own)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    formatter = "gateway.logs.JSONFormatter" if fmt == "json" else "gateway.logs.TextFormatter"
    lvl = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"gateway": {"()": formatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "gateway",
                                "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": lvl},
        "loggers": {
            "uvicorn": {"handlers": [], "level": lvl, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": lvl, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


def configure(level: str = "info", fmt: str = "text") -> None:
    import logging.config

    logging.config.dictConfig(logging_config(level, fmt))

