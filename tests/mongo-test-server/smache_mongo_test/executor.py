"""mongoeco's wire server with the test server's fixes, patched in-process.

mongoeco (pinned in ``../requirements.txt``) is never edited. Its
``AsyncMongoEcoProxyServer`` reads each OP_MSG, asks its
``WireCommandExecutor`` to build a request context
(``_build_request_context``: strips ``lsid``/``$clusterTime``/``txnNumber``
and friends, checks the command is known, validates its shape), to run it
(``execute_prepared``: dispatches by command kind to handshake, getMore,
killCursors, ... or to ``AsyncDatabase.command``), and to render failures
(``error_document``). :class:`SmacheTestServer` swaps that executor for
:class:`SmacheWireExecutor`, which overrides exactly those three methods:

* requests are normalised before mongoeco validates them: Int64 numbers in
  top-level fields (the Rust driver sends ``limit``, cursor ids, ... as
  Int64, which mongoeco rejects), and a negative ``find`` ``limit`` (what
  ``find_one`` sends) becomes a single batch of ``|limit|``;
* change-stream ``aggregate`` (on a collection, a database or the cluster),
  ``getMore``/``killCursors`` on stream cursors and ``smacheTestForgetHistory``
  are served by :mod:`.change_streams` instead of mongoeco;
* ``renameCollection``, which drivers send to ``admin``, runs on the
  collection's database, where mongoeco expects it;
* ``dropDatabase`` and ``renameCollection`` are recorded as change events
  (mongoeco announces none for them);
* ``changeStreamPreAndPostImages`` (an option of ``create``, and ``collMod``
  with only that option) is served here: it says which collections' changes
  keep their pre-images (``fullDocumentBeforeChange``), as on MongoDB;
* replies are normalised: cursor ids are Int64, every error (raised, ``ok: 0``
  or in ``writeErrors``) has a numeric ``code`` (and ``codeName``), and every
  reply carries ``operationTime`` (the cluster time of the latest change), so
  a driver's session knows the time of its writes, as on a replica set.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bson.int64 import Int64
from mongoeco.api import AsyncMongoClient
from mongoeco.types import Timestamp
from mongoeco.core.codec import DocumentCodec
from mongoeco.core.expression_context import ExpressionExecutionContext
from mongoeco.wire import AsyncMongoEcoProxyServer
from mongoeco.wire._executor_support import WIRE_INTERNAL_KEYS
from mongoeco.wire.capabilities import WireCommandCapability
from mongoeco.wire.executor import WireCommandExecutor
from mongoeco.wire.requests import WireRequestContext

from .change_log import ChangeLog, ChangeLogFeed
from .change_streams import ChangeStreamService, is_change_stream_aggregate
from .errors import BAD_VALUE, CommandError, complete_error_fields, error_reply
from .tokens import as_int

FORGET_HISTORY_COMMAND = "smacheTestForgetHistory"
PRE_IMAGES_OPTION = "changeStreamPreAndPostImages"

_CHANGE_STREAM = WireCommandCapability(
    name="aggregate", kind="smache_change_stream", family="admin_read", binds_session=False
)
_FORGET_HISTORY = WireCommandCapability(
    name=FORGET_HISTORY_COMMAND, kind="smache_forget_history", family="admin_control", binds_session=False
)
_COLL_MOD = WireCommandCapability(
    name="collMod", kind="smache_coll_mod", family="admin_namespace", binds_session=False
)


class SmacheWireExecutor(WireCommandExecutor):
    """mongoeco's command executor plus change streams and wire fixes."""

    def __init__(
        self, *args: Any, change_log: ChangeLog, streams: ChangeStreamService, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._change_log = change_log
        self._streams = streams

    # -- the three methods the proxy calls ------------------------------

    def _build_request_context(self, body, *, connection, db_name, on_normalized=None) -> WireRequestContext:
        body = normalize_request(body)
        if next(iter(body), None) == "create" and PRE_IMAGES_OPTION in body:
            body = dict(body)
            self._set_pre_images(db_name or body.get("$db") or "test", body["create"], body.pop(PRE_IMAGES_OPTION))
        capability = _own_capability(body)
        if capability is None:
            return super()._build_request_context(
                body, connection=connection, db_name=db_name, on_normalized=on_normalized
            )
        command = {key: value for key, value in body.items() if key not in WIRE_INTERNAL_KEYS}
        if on_normalized is not None:
            on_normalized(capability.name, body)
        return WireRequestContext(
            db_name=db_name or body.get("$db") or "admin",
            command_name=capability.name,
            command_document=command,
            raw_body=body,
            capability=capability,
            connection=connection,
            execution_context=ExpressionExecutionContext(now=self._client._resolve_now()),
        )

    async def execute_prepared(self, context: WireRequestContext) -> dict[str, Any]:
        reply = await self._execute(context)
        self._record_namespace_events(context, reply)
        reply.setdefault("operationTime", Timestamp(*self._change_log.cluster_time))
        return normalize_reply(reply)

    @staticmethod
    def error_document(exc: Exception) -> dict[str, Any]:
        return error_reply(exc)

    # -- dispatch -------------------------------------------------------

    async def _execute(self, context: WireRequestContext) -> dict[str, Any]:
        command = context.command_document
        kind = context.capability.kind
        if kind == _CHANGE_STREAM.kind:
            return await self._streams.open(context.db_name, command)
        if kind == _FORGET_HISTORY.kind:
            return self._streams.forget_history(command)
        if kind == _COLL_MOD.kind:
            return self._coll_mod(context.db_name, command)
        if context.command_name == "getMore" and self._streams.owns(command.get("getMore")):
            return await self._streams.get_more(context.db_name, command)
        if context.command_name == "killCursors":
            return await self._kill_cursors(context)
        if context.command_name == "renameCollection":
            context = _in_source_database(context)
        reply = await super().execute_prepared(context)
        if context.command_name == "find" and command.get("singleBatch") is True:
            self._close_single_batch(context, reply)
        return reply

    def _coll_mod(self, db_name: str, command: dict[str, Any]) -> dict[str, Any]:
        """``collMod``: only ``changeStreamPreAndPostImages`` is supported."""
        others = sorted(set(command) - {"collMod", PRE_IMAGES_OPTION})
        if others:
            raise CommandError(BAD_VALUE, f"the test server's collMod supports only {PRE_IMAGES_OPTION}, not {others[0]}")
        if PRE_IMAGES_OPTION in command:
            self._set_pre_images(db_name, command["collMod"], command[PRE_IMAGES_OPTION])
        return {"ok": 1.0}

    def _set_pre_images(self, db_name: str, coll: object, option: object) -> None:
        if not isinstance(coll, str) or not coll:
            raise CommandError(BAD_VALUE, "a collection name is required")
        if not isinstance(option, dict) or not isinstance(option.get("enabled"), bool):
            raise CommandError(BAD_VALUE, f"{PRE_IMAGES_OPTION} must be {{enabled: <bool>}}")
        self._change_log.set_pre_images(db_name, coll, option["enabled"])

    async def _kill_cursors(self, context: WireRequestContext) -> dict[str, Any]:
        """Stream cursors are closed here, the rest by mongoeco's cursor store."""
        cursor_ids = [as_int(cursor_id) for cursor_id in context.command_document.get("cursors", [])]
        ours = [cursor_id for cursor_id in cursor_ids if self._streams.owns(cursor_id)]
        theirs = [cursor_id for cursor_id in cursor_ids if not self._streams.owns(cursor_id)]
        killed = self._streams.kill(ours)
        reply: dict[str, Any] = {
            "cursorsKilled": [],
            "cursorsNotFound": [],
            "cursorsAlive": [],
            "cursorsUnknown": [],
        }
        if theirs:
            delegated = dataclasses.replace(
                context, command_document={**context.command_document, "cursors": theirs}
            )
            reply = await super().execute_prepared(delegated)
        reply["cursorsKilled"] = [*reply.get("cursorsKilled", []), *killed]
        lost = [cursor_id for cursor_id in ours if cursor_id not in killed]
        reply["cursorsNotFound"] = [*reply.get("cursorsNotFound", []), *lost]
        reply["cursorsUnknown"] = [*reply.get("cursorsUnknown", []), *lost]
        reply["ok"] = 1.0
        return reply

    def _close_single_batch(self, context: WireRequestContext, reply: dict[str, Any]) -> None:
        """``singleBatch``: mongoeco may still have left a cursor open; close it."""
        cursor = reply.get("cursor")
        if not isinstance(cursor, dict) or not cursor.get("id"):
            return
        self._cursor_store.kill_cursors(
            {"killCursors": context.command_document["find"], "cursors": [int(cursor["id"])]},
            db_name=context.db_name,
            lsid=context.raw_body.get("lsid"),
            connection=context.connection,
        )
        cursor["id"] = 0

    def _record_namespace_events(self, context: WireRequestContext, reply: dict[str, Any]) -> None:
        """mongoeco publishes no event for these two; the change log records them."""
        if reply.get("ok") != 1.0:
            return
        command = context.command_document
        if context.command_name == "dropDatabase":
            self._change_log.record_database_drop(context.db_name)
        elif context.command_name == "renameCollection":
            source, target = (
                _split_namespace(command.get("renameCollection")),
                _split_namespace(command.get("to")),
            )
            if source and target:
                self._change_log.record_rename(source, target)


def _own_capability(body: dict[str, Any]) -> WireCommandCapability | None:
    """The capability of a command this server serves itself, else None."""
    name = next((key for key in body if key not in WIRE_INTERNAL_KEYS), None)
    if name == FORGET_HISTORY_COMMAND:
        return _FORGET_HISTORY
    if name == "collMod":
        return _COLL_MOD
    if name == "aggregate" and is_change_stream_aggregate(
        {key: body[key] for key in body if key not in WIRE_INTERNAL_KEYS}
    ):
        return _CHANGE_STREAM
    return None


def _in_source_database(context: WireRequestContext) -> WireRequestContext:
    """renameCollection: drivers send it to ``admin``, mongoeco wants it on the
    collection's own database (and renames within one database only)."""
    source = _split_namespace(context.command_document.get("renameCollection"))
    if source is None or context.db_name != "admin":
        return context
    return dataclasses.replace(context, db_name=source[0])


def _split_namespace(namespace: object) -> tuple[str, str] | None:
    if not isinstance(namespace, str) or "." not in namespace:
        return None
    db, coll = namespace.split(".", 1)
    return db, coll


# -- request and reply normalisation --------------------------------------


def normalize_request(body: dict[str, Any]) -> dict[str, Any]:
    """Int64 top-level numbers as plain ints, negative find limits as single batches."""
    body = {key: _unwrap_numbers(key, value) for key, value in body.items()}
    limit = body.get("limit")
    if "find" in body and isinstance(limit, int) and not isinstance(limit, bool) and limit < 0:
        body["limit"] = -limit
        body["singleBatch"] = True
    return body


def _unwrap_numbers(key: str, value: Any) -> Any:
    if key == "cursors" and isinstance(value, list):
        return [as_int(item) for item in value]
    if key == "cursor" and isinstance(value, dict):
        return {name: as_int(item) for name, item in value.items()}
    return as_int(value)


def normalize_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """Int64 cursor ids and error codes everywhere, as drivers expect."""
    cursor = reply.get("cursor")
    if isinstance(cursor, dict) and isinstance(as_int(cursor.get("id")), int):
        cursor["id"] = Int64(as_int(cursor["id"]))
    for name in ("cursorsKilled", "cursorsNotFound", "cursorsAlive", "cursorsUnknown"):
        if isinstance(reply.get(name), list):
            reply[name] = [Int64(as_int(cursor_id)) for cursor_id in reply[name]]
    for write_error in reply.get("writeErrors") or []:
        if isinstance(write_error, dict):
            complete_error_fields(write_error, with_name=False)
    if isinstance(reply.get("writeConcernError"), dict):
        complete_error_fields(reply["writeConcernError"])
    if reply.get("ok") in (0, 0.0, False):
        complete_error_fields(reply)
    return reply


# -- the server -----------------------------------------------------------


class SmacheTestServer(AsyncMongoEcoProxyServer):
    """mongoeco's wire server with :class:`SmacheWireExecutor` in place."""

    def __init__(self, client: AsyncMongoClient, *, host: str, port: int, history_size: int) -> None:
        super().__init__(client=client, host=host, port=port)
        change_log = ChangeLog(history_size=history_size)
        # The client's hub (a private attribute) is where every database and
        # collection object the client hands out announces its changes; it
        # must be swapped before the first command creates one.
        client._change_hub = ChangeLogFeed(change_log)
        streams = ChangeStreamService(change_log, lookup=_lookup_in(client))
        self._executor = SmacheWireExecutor(
            client,
            self._cursor_store,
            self._session_store,
            surface=self._surface,
            auth=self._auth,
            change_log=change_log,
            streams=streams,
        )


def _lookup_in(client: AsyncMongoClient):
    """``updateLookup``: the current version of a document, or None."""

    async def lookup(db: str, coll: str, document_key: dict[str, Any]) -> dict[str, Any] | None:
        reply = await client.get_database(db).command(
            {"find": coll, "filter": document_key, "limit": 1, "singleBatch": True}
        )
        documents = reply["cursor"]["firstBatch"]
        return DocumentCodec.to_internal(documents[0]) if documents else None

    return lookup
