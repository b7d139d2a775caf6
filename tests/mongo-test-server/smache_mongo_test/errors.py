"""Error replies with a numeric ``code`` and a ``codeName``, as MongoDB sends.

Drivers decide what to do with a failure (retry, resume a change stream,
surface a duplicate key) from ``code`` alone, and mongoeco's wire server
leaves it out of many replies. Every error reply of the test server goes
through :func:`error_reply` or :func:`complete_error_fields`.
"""

from __future__ import annotations

import logging
from typing import Any

from mongoeco.error_catalog import SERVER_CODE_NAMES
from mongoeco.errors import MongoEcoError, PyMongoError
from mongoeco.wire._executor_support import build_error_document

LOG = logging.getLogger("smache-mongo-test-server")

INTERNAL_ERROR = 1
BAD_VALUE = 2
UNAUTHORIZED = 13
TYPE_MISMATCH = 14
ILLEGAL_OPERATION = 20
NAMESPACE_NOT_FOUND = 26
CURSOR_NOT_FOUND = 43
NO_MATCHING_DOCUMENT = 47
NAMESPACE_EXISTS = 48
COMMAND_NOT_FOUND = 59
INVALID_NAMESPACE = 73
INVALID_RESUME_TOKEN = 260
CHANGE_STREAM_FATAL_ERROR = 280
CHANGE_STREAM_HISTORY_LOST = 286
DUPLICATE_KEY = 11000
UNRECOGNIZED_PIPELINE_STAGE = 40324
IDL_UNKNOWN_FIELD = 40415
CONFLICTING_RESUME_OPTIONS = 40674

CODE_NAMES: dict[int, str] = {
    **SERVER_CODE_NAMES,
    INTERNAL_ERROR: "InternalError",
    BAD_VALUE: "BadValue",
    UNAUTHORIZED: "Unauthorized",
    TYPE_MISMATCH: "TypeMismatch",
    ILLEGAL_OPERATION: "IllegalOperation",
    NAMESPACE_NOT_FOUND: "NamespaceNotFound",
    CURSOR_NOT_FOUND: "CursorNotFound",
    NO_MATCHING_DOCUMENT: "NoMatchingDocument",
    NAMESPACE_EXISTS: "NamespaceExists",
    COMMAND_NOT_FOUND: "CommandNotFound",
    INVALID_NAMESPACE: "InvalidNamespace",
    INVALID_RESUME_TOKEN: "InvalidResumeToken",
    CHANGE_STREAM_FATAL_ERROR: "ChangeStreamFatalError",
    CHANGE_STREAM_HISTORY_LOST: "ChangeStreamHistoryLost",
    DUPLICATE_KEY: "DuplicateKey",
    IDL_UNKNOWN_FIELD: "IDLUnknownField",
}

# Substrings of mongoeco's messages (lower case) and the code MongoDB uses
# for the same failure; the first match wins.
_MESSAGE_CODES: tuple[tuple[str, int], ...] = (
    ("duplicate key", DUPLICATE_KEY),
    ("unsupported wire command", COMMAND_NOT_FOUND),
    ("no such command", COMMAND_NOT_FOUND),
    ("unsupported aggregation stage", UNRECOGNIZED_PIPELINE_STAGE),
    ("unrecognized pipeline stage", UNRECOGNIZED_PIPELINE_STAGE),
    ("namespace not found", NAMESPACE_NOT_FOUND),
    ("ns not found", NAMESPACE_NOT_FOUND),
    ("already exists", NAMESPACE_EXISTS),
    ("cursor not found", CURSOR_NOT_FOUND),
)


class CommandError(Exception):
    """A command failure raised by the test server's own handlers."""

    def __init__(self, code: int, message: str, *, labels: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.labels = labels


def code_name(code: int) -> str:
    """MongoDB's name for ``code`` (``Location<code>`` for unnamed ones)."""
    return CODE_NAMES.get(code, f"Location{code}")


def infer_code(message: str, exc: BaseException | None = None) -> int:
    """Picks the MongoDB code for a failure that mongoeco left without one."""
    lowered = message.lower()
    for fragment, code in _MESSAGE_CODES:
        if fragment in lowered:
            return code
    if isinstance(exc, TypeError):
        return TYPE_MISMATCH
    if exc is None or isinstance(exc, (MongoEcoError, ValueError)):
        return BAD_VALUE
    return INTERNAL_ERROR


def error_reply(exc: BaseException) -> dict[str, Any]:
    """The ``{ok: 0, errmsg, code, codeName}`` reply for a raised exception."""
    if isinstance(exc, CommandError):
        reply: dict[str, Any] = {"ok": 0.0, "errmsg": str(exc), "code": exc.code}
        if exc.labels:
            reply["errorLabels"] = list(exc.labels)
    else:
        if not isinstance(exc, (PyMongoError, MongoEcoError, TypeError, ValueError)):
            LOG.error("unexpected failure while serving a command", exc_info=exc)
        reply = build_error_document(exc)  # type: ignore[arg-type]
        if not isinstance(reply.get("code"), int):
            reply["code"] = infer_code(str(reply.get("errmsg", exc)), exc)
    reply["codeName"] = reply.get("codeName") or code_name(reply["code"])
    return reply


def complete_error_fields(document: dict[str, Any], *, with_name: bool = True) -> None:
    """Adds a missing ``code`` (and ``codeName``) to an error document in place.

    Items of ``writeErrors`` carry no ``codeName`` on a real server, hence
    ``with_name=False`` for them.
    """
    if not isinstance(document.get("code"), int):
        document["code"] = infer_code(str(document.get("errmsg", "")))
    if with_name and not document.get("codeName"):
        document["codeName"] = code_name(document["code"])
