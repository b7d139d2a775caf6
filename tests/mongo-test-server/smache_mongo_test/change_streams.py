"""``aggregate`` with ``$changeStream``, and its ``getMore``/``killCursors``.

A stream is a cursor over the :class:`~.change_log.ChangeLog` with a
position (the ``seq`` of the last change it looked at). Each batch renders
the changes after the position that its scope matches into MongoDB's event
documents, runs them through the stages that follow ``$changeStream`` in
the pipeline, and ends with a ``postBatchResumeToken``.

Supported ``$changeStream`` options: ``fullDocument`` (``default``,
``updateLookup``, ``whenAvailable``, ``required``),
``fullDocumentBeforeChange`` (``off``, ``whenAvailable``, ``required``),
``resumeAfter``, ``startAfter``, ``startAtOperationTime``,
``allChangesForCluster`` (on ``admin``), and ``showExpandedEvents``
(accepted, no extra events). Stages allowed after it: ``$match``,
``$project``, ``$addFields``, ``$set``, ``$unset``, ``$replaceRoot``,
``$replaceWith``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

from bson.int64 import Int64
from mongoeco.change_streams import compile_change_stream_pipeline
from mongoeco.core.aggregation import apply_pipeline
from mongoeco.core.codec import DocumentCodec
from mongoeco.errors import OperationFailure
from mongoeco.types import Timestamp

from .change_log import Change, ChangeLog, ChangeScope
from .errors import (
    BAD_VALUE,
    CHANGE_STREAM_FATAL_ERROR,
    CONFLICTING_RESUME_OPTIONS,
    CURSOR_NOT_FOUND,
    IDL_UNKNOWN_FIELD,
    ILLEGAL_OPERATION,
    INVALID_NAMESPACE,
    INVALID_RESUME_TOKEN,
    NO_MATCHING_DOCUMENT,
    TYPE_MISMATCH,
    UNAUTHORIZED,
    CommandError,
)
from .tokens import TokenPosition, as_int, decode_token, encode_token

FULL_DOCUMENT_MODES = ("default", "updateLookup", "whenAvailable", "required")
BEFORE_CHANGE_MODES = ("off", "whenAvailable", "required")
KNOWN_OPTIONS = frozenset(
    {
        "fullDocument",
        "fullDocumentBeforeChange",
        "resumeAfter",
        "startAfter",
        "startAtOperationTime",
        "allChangesForCluster",
        "showExpandedEvents",
    }
)
FIRST_BATCH_SIZE = 101  # MongoDB's default for an aggregate's first batch
GET_MORE_BATCH_SIZE = 1000
DEFAULT_AWAIT_SECONDS = 1.0  # MongoDB's default await time of a change stream getMore
# Ids of stream cursors start here, far above mongoeco's own (1, 2, ...).
FIRST_CURSOR_ID = 1 << 40

Lookup = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any] | None]]


def is_change_stream_aggregate(command: dict[str, Any]) -> bool:
    """Whether ``command`` is an ``aggregate`` whose pipeline opens a change stream."""
    if next(iter(command), None) != "aggregate":
        return False
    pipeline = command.get("pipeline")
    return (
        isinstance(pipeline, list)
        and bool(pipeline)
        and isinstance(pipeline[0], dict)
        and "$changeStream" in pipeline[0]
    )


# -- the request --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """A parsed change-stream ``aggregate``."""

    scope: ChangeScope
    namespace: str
    full_document: str = "default"
    before_change: str = "off"
    resume_after: TokenPosition | None = None
    start_after: TokenPosition | None = None
    start_at: tuple[int, int] | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    batch_size: int | None = None


def parse_request(db_name: str, command: dict[str, Any]) -> StreamRequest:
    options = command["pipeline"][0]["$changeStream"]
    if not isinstance(options, dict):
        raise CommandError(TYPE_MISMATCH, "$changeStream must be a document")
    unknown = sorted(set(options) - KNOWN_OPTIONS)
    if unknown:
        raise CommandError(IDL_UNKNOWN_FIELD, f"unknown $changeStream option: {unknown[0]}")
    scope, namespace = _parse_scope(db_name, command["aggregate"], options)
    return StreamRequest(
        scope=scope,
        namespace=namespace,
        full_document=_choice(options, "fullDocument", FULL_DOCUMENT_MODES),
        before_change=_choice(options, "fullDocumentBeforeChange", BEFORE_CHANGE_MODES),
        **_parse_start(options),
        stages=_parse_stages(command["pipeline"][1:]),
        batch_size=_parse_batch_size(command.get("cursor")),
    )


def _parse_scope(db_name: str, target: object, options: dict[str, Any]) -> tuple[ChangeScope, str]:
    whole_cluster = options.get("allChangesForCluster") is True
    if isinstance(target, str) and target:
        if whole_cluster:
            raise CommandError(BAD_VALUE, "allChangesForCluster needs {aggregate: 1} on admin")
        return ChangeScope(db=db_name, coll=target), f"{db_name}.{target}"
    if as_int(target) != 1:
        raise CommandError(TYPE_MISMATCH, "aggregate must name a collection or be 1")
    namespace = f"{db_name}.$cmd.aggregate"
    if whole_cluster:
        if db_name != "admin":
            raise CommandError(BAD_VALUE, "allChangesForCluster streams must be opened on admin")
        return ChangeScope(), namespace
    if db_name in ("admin", "config", "local"):
        raise CommandError(
            INVALID_NAMESPACE, f"$changeStream may not be opened on the internal {db_name} database"
        )
    return ChangeScope(db=db_name), namespace


def _choice(options: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = options.get(name, allowed[0])
    if value not in allowed:
        raise CommandError(BAD_VALUE, f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _parse_start(options: dict[str, Any]) -> dict[str, Any]:
    given = [name for name in ("resumeAfter", "startAfter", "startAtOperationTime") if name in options]
    if len(given) > 1:
        raise CommandError(
            CONFLICTING_RESUME_OPTIONS,
            "only one of resumeAfter, startAfter and startAtOperationTime is allowed",
        )
    if "resumeAfter" in options:
        return {"resume_after": decode_token(options["resumeAfter"])}
    if "startAfter" in options:
        return {"start_after": decode_token(options["startAfter"])}
    if "startAtOperationTime" in options:
        timestamp = options["startAtOperationTime"]
        if not isinstance(timestamp, Timestamp):
            raise CommandError(TYPE_MISMATCH, "startAtOperationTime must be a timestamp")
        return {"start_at": (timestamp.time, timestamp.inc)}
    return {}


def _parse_stages(stages: list[Any]) -> list[dict[str, Any]]:
    for stage in stages:
        name = next(iter(stage), None) if isinstance(stage, dict) else None
        if name == "$changeStream":
            raise CommandError(ILLEGAL_OPERATION, "$changeStream must be the first stage")
    try:
        return compile_change_stream_pipeline(DocumentCodec.to_internal(stages)) or []
    except OperationFailure as exc:
        raise CommandError(
            ILLEGAL_OPERATION, f"stage not permitted in a $changeStream pipeline: {exc}"
        ) from exc


def _parse_batch_size(cursor: object) -> int | None:
    if not isinstance(cursor, dict) or "batchSize" not in cursor:
        return None
    size = as_int(cursor["batchSize"])
    if not isinstance(size, int) or size < 0:
        raise CommandError(BAD_VALUE, "batchSize must be a non-negative integer")
    return size


# -- rendering events ---------------------------------------------------


async def render_event(change: Change, request: StreamRequest, lookup: Lookup) -> dict[str, Any]:
    """The MongoDB change event document for ``change``."""
    event: dict[str, Any] = {
        "_id": encode_token(change.seq, change.cluster_time),
        "operationType": change.operation_type,
        "clusterTime": Timestamp(*change.cluster_time),
        "wallTime": change.wall_time,
    }
    if change.operation_type in ("insert", "replace"):
        event["fullDocument"] = deepcopy(change.full_document)
    elif change.operation_type == "update" and request.full_document != "default":
        event["fullDocument"] = await _updated_document(change, request, lookup)
    event["ns"] = {"db": change.db} if change.coll is None else {"db": change.db, "coll": change.coll}
    if change.to is not None:
        event["to"] = dict(change.to)
    if change.document_key is not None:
        event["documentKey"] = deepcopy(change.document_key)
    if change.update_description is not None:
        event["updateDescription"] = deepcopy(change.update_description)
    if request.before_change != "off" and change.operation_type in ("update", "replace", "delete"):
        event["fullDocumentBeforeChange"] = _pre_image(change, request)
    return event


async def _updated_document(change: Change, request: StreamRequest, lookup: Lookup) -> dict[str, Any] | None:
    if request.full_document == "updateLookup":
        # As MongoDB: the document as it is now, or null if it is gone.
        return await lookup(change.db, change.coll or "", change.document_key or {})
    # whenAvailable/required: the post-image, which the log always has.
    return deepcopy(change.full_document)


def _pre_image(change: Change, request: StreamRequest) -> dict[str, Any] | None:
    if change.before is None and request.before_change == "required":
        raise CommandError(
            NO_MATCHING_DOCUMENT, "fullDocumentBeforeChange is required but no pre-image is known"
        )
    return deepcopy(change.before)


def invalidate_event(change: Change) -> dict[str, Any]:
    return {
        "_id": encode_token(change.seq, change.cluster_time, invalidate=True),
        "operationType": "invalidate",
        "clusterTime": Timestamp(*change.cluster_time),
        "wallTime": change.wall_time,
    }


# -- cursors ------------------------------------------------------------


class StreamCursor:
    """One open change stream."""

    def __init__(
        self, cursor_id: int, request: StreamRequest, position: int, position_time: tuple[int, int]
    ) -> None:
        self.cursor_id = cursor_id
        self.request = request
        self.position = position
        # The cluster time of the position, carried in its resume token.
        self.position_time = position_time
        self.closed = False
        # An invalidate still to deliver (the stream resumed right after the
        # change that invalidates it, or the batch was full when it came).
        self.pending_invalidate: Change | None = None
        self._last_invalidate: Change | None = None

    @property
    def resume_token(self) -> dict[str, str]:
        if self._last_invalidate is not None:
            change = self._last_invalidate
            return encode_token(change.seq, change.cluster_time, invalidate=True)
        return encode_token(self.position, self.position_time)

    async def next_batch(
        self, log: ChangeLog, lookup: Lookup, *, limit: int, await_seconds: float
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` events; waits up to ``await_seconds`` for the first one."""
        deadline = time.monotonic() + await_seconds
        while True:
            batch = await self._collect(log, lookup, limit)
            remaining = deadline - time.monotonic()
            if batch or self.closed or limit == 0 or remaining <= 0:
                return batch
            await log.wait_for_news(remaining)

    async def _collect(self, log: ChangeLog, lookup: Lookup, limit: int) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        while len(batch) < limit and not self.closed:
            if self.pending_invalidate is not None:
                batch.append(self._invalidate())
                break
            # Checked on every step: rendering may await, and history may be
            # forgotten meanwhile.
            log.ensure_position_available(self.position, self.request.scope)
            change = log.next_after(self.position)
            if change is None:
                self.position, self.position_time = log.last_seq, log.cluster_time
                break
            self.position, self.position_time = change.seq, change.cluster_time
            event = await self._render(change, lookup)
            if event is not None:
                batch.append(event)
            if self.request.scope.invalidated_by(change):
                self.pending_invalidate = change
        return batch

    def _invalidate(self) -> dict[str, Any]:
        change, self.pending_invalidate = self.pending_invalidate, None
        assert change is not None
        self._last_invalidate = change
        self.closed = True
        return invalidate_event(change)

    async def _render(self, change: Change, lookup: Lookup) -> dict[str, Any] | None:
        request = self.request
        if not request.scope.matches(change):
            return None
        if request.start_at is not None and change.cluster_time < request.start_at:
            return None
        event = await render_event(change, request, lookup)
        if not request.stages:
            return event
        token = event["_id"]
        results = apply_pipeline([event], request.stages)
        if not results:
            return None
        if results[0].get("_id") != token:
            raise CommandError(
                CHANGE_STREAM_FATAL_ERROR,
                "the change stream pipeline must not modify or remove the _id (resume token) field",
            )
        return results[0]


class ChangeStreamService:
    """Opens, advances and closes the server's change stream cursors."""

    def __init__(self, log: ChangeLog, lookup: Lookup) -> None:
        self._log = log
        self._lookup = lookup
        self._cursors: dict[int, StreamCursor] = {}
        self._ids = itertools.count(FIRST_CURSOR_ID)

    def owns(self, cursor_id: object) -> bool:
        """Whether ``cursor_id`` is (or was) a change stream cursor of ours."""
        cursor_id = as_int(cursor_id)
        return isinstance(cursor_id, int) and cursor_id >= FIRST_CURSOR_ID

    async def open(self, db_name: str, command: dict[str, Any]) -> dict[str, Any]:
        request = parse_request(db_name, command)
        cursor = StreamCursor(next(self._ids), request, self._log.last_seq, self._log.cluster_time)
        self._position_at_start(cursor)
        limit = FIRST_BATCH_SIZE if request.batch_size is None else request.batch_size
        batch = await cursor.next_batch(self._log, self._lookup, limit=limit, await_seconds=0)
        if not cursor.closed:
            self._cursors[cursor.cursor_id] = cursor
        reply = self._reply(cursor, batch, "firstBatch")
        reply["operationTime"] = Timestamp(*self._log.cluster_time)
        return reply

    async def get_more(self, db_name: str, command: dict[str, Any]) -> dict[str, Any]:
        cursor_id = as_int(command["getMore"])
        cursor = self._cursors.get(cursor_id)
        if cursor is None:
            raise CommandError(CURSOR_NOT_FOUND, f"cursor id {cursor_id} not found")
        namespace = f"{db_name}.{command.get('collection')}"
        if namespace != cursor.request.namespace:
            raise CommandError(
                UNAUTHORIZED, f"cursor {cursor_id} belongs to {cursor.request.namespace}, not {namespace}"
            )
        batch_size = as_int(command.get("batchSize")) or GET_MORE_BATCH_SIZE
        max_time_ms = as_int(command.get("maxTimeMS"))
        await_seconds = max_time_ms / 1000 if isinstance(max_time_ms, int) else DEFAULT_AWAIT_SECONDS
        try:
            batch = await cursor.next_batch(
                self._log, self._lookup, limit=batch_size, await_seconds=await_seconds
            )
        except CommandError:
            self._cursors.pop(cursor_id, None)
            raise
        if cursor.closed:
            self._cursors.pop(cursor_id, None)
        return self._reply(cursor, batch, "nextBatch")

    def kill(self, cursor_ids: list[int]) -> list[int]:
        """Closes those of ``cursor_ids`` that are open streams; returns them."""
        return [cursor_id for cursor_id in cursor_ids if self._cursors.pop(cursor_id, None) is not None]

    def forget_history(self, command: dict[str, Any]) -> dict[str, Any]:
        db = command.get("db")
        if db is not None and (not isinstance(db, str) or not db):
            raise CommandError(TYPE_MISMATCH, "smacheTestForgetHistory: db must be a non-empty string")
        forgotten = self._log.forget(db)
        return {"forgottenEvents": forgotten, "scope": db or "all", "ok": 1.0}

    def _position_at_start(self, cursor: StreamCursor) -> None:
        request, log = cursor.request, self._log
        token = request.resume_after or request.start_after
        if token is not None:
            if token.invalidate and request.resume_after is not None:
                raise CommandError(
                    INVALID_RESUME_TOKEN, "cannot resumeAfter an invalidate event; use startAfter"
                )
            log.ensure_position_available(token.seq, request.scope)
            cursor.position, cursor.position_time = token.seq, token.cluster_time
            change = log.change_at(token.seq)
            if not token.invalidate and change is not None and request.scope.invalidated_by(change):
                cursor.pending_invalidate = change
        elif request.start_at is not None:
            log.ensure_time_available(request.start_at, request.scope)
            floor = log.floor(request.scope)
            cursor.position, cursor.position_time = floor.seq, floor.time

    @staticmethod
    def _reply(cursor: StreamCursor, batch: list[dict[str, Any]], batch_name: str) -> dict[str, Any]:
        return {
            "cursor": {
                batch_name: batch,
                "postBatchResumeToken": cursor.resume_token,
                "id": Int64(0 if cursor.closed else cursor.cursor_id),
                "ns": cursor.request.namespace,
            },
            "ok": 1.0,
        }
