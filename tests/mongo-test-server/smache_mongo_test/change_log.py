"""The server-wide, ordered record of changes that change streams read.

mongoeco announces every committed write to its client's change hub, a
``ChangeStreamHub`` (insert, update, replace, delete, and ``invalidate`` for
a dropped collection). The test server puts a :class:`ChangeLogFeed` in
that hub's place, which hands each announcement to the :class:`ChangeLog`
as it is made, inside the write and before its reply is sent: an
acknowledged write is always in the log before the client can open a
stream that must not see it. The log numbers changes with its own sequence
numbers and adds what MongoDB's events carry and mongoeco's do not:

* cluster and wall-clock times;
* ``updateDescription`` (a diff of the pre-image it keeps per document,
  :class:`DocumentShadow`, against the post-image mongoeco reports);
* the pre-image itself, for ``fullDocumentBeforeChange``, of the collections
  that enabled ``changeStreamPreAndPostImages`` (``create`` or ``collMod``),
  as MongoDB keeps pre-images only for those (:meth:`ChangeLog.set_pre_images`);
* ``drop`` (mongoeco's ``invalidate``), ``dropDatabase`` and ``rename``
  events (the last two recorded by the command layer, see
  :meth:`ChangeLog.record_database_drop` and :meth:`ChangeLog.record_rename`).

History is bounded: past ``history_size`` changes the oldest are dropped,
and :meth:`ChangeLog.forget` (the ``smacheTestForgetHistory`` command) drops
them on purpose. Either way a "floor" records how far history is gone, and
resuming from a position below it fails with ChangeStreamHistoryLost.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import bson
from mongoeco.change_streams import ChangeStreamHub
from mongoeco.wire.bson_bridge import encode_wire_value

from .diff import update_description
from .errors import CHANGE_STREAM_HISTORY_LOST, CommandError
from .tokens import ClusterClock

# Databases whose changes a whole-cluster stream does not report (MongoDB's rule).
INTERNAL_DATABASES = frozenset({"admin", "config", "local"})


@dataclass(frozen=True, slots=True)
class Change:
    """One recorded change; ``seq`` orders all changes of the server run."""

    seq: int
    operation_type: str  # insert update replace delete drop rename dropDatabase
    db: str
    coll: str | None
    cluster_time: tuple[int, int]
    wall_time: datetime.datetime
    document_key: dict[str, Any] | None = None
    full_document: dict[str, Any] | None = None  # post-image
    before: dict[str, Any] | None = None  # pre-image, when known
    update_description: dict[str, Any] | None = None
    to: dict[str, str] | None = None  # rename target


@dataclass(frozen=True, slots=True)
class ChangeScope:
    """What a stream watches: one collection, one database, or the cluster."""

    db: str | None = None
    coll: str | None = None

    def matches(self, change: Change) -> bool:
        if self.db is None:
            return change.db not in INTERNAL_DATABASES
        if change.db != self.db:
            return False
        # dropDatabase (no coll) reaches a collection's stream as the drop
        # of the collection, recorded before it.
        return self.coll is None or change.coll == self.coll

    def invalidated_by(self, change: Change) -> bool:
        """Whether ``change`` ends a stream of this scope (MongoDB's ``invalidate``)."""
        if self.coll is not None:
            return change.operation_type in ("drop", "rename") and self.matches(change)
        if self.db is not None:
            return change.operation_type == "dropDatabase" and change.db == self.db
        return False


@dataclass(frozen=True, slots=True)
class Floor:
    """History up to here is gone: positions below ``seq`` and cluster times
    below ``time`` cannot be resumed from."""

    seq: int = 0
    time: tuple[int, int] = (0, 0)


class DocumentShadow:
    """The latest version of every document, to know pre-images."""

    def __init__(self) -> None:
        self._documents: dict[tuple[str, str], dict[bytes, dict[str, Any]]] = {}

    @staticmethod
    def _key(document_key: dict[str, Any]) -> bytes:
        return bson.encode({"k": encode_wire_value(document_key)})

    def replace(
        self, db: str, coll: str, document_key: dict[str, Any], document: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Stores the new version; returns the previous one."""
        documents = self._documents.setdefault((db, coll), {})
        key = self._key(document_key)
        previous = documents.get(key)
        documents[key] = deepcopy(document)
        return previous

    def remove(self, db: str, coll: str, document_key: dict[str, Any]) -> dict[str, Any] | None:
        return self._documents.get((db, coll), {}).pop(self._key(document_key), None)

    def drop_collection(self, db: str, coll: str) -> None:
        self._documents.pop((db, coll), None)

    def drop_database(self, db: str) -> None:
        for namespace in [ns for ns in self._documents if ns[0] == db]:
            del self._documents[namespace]

    def rename(self, source: tuple[str, str], target: tuple[str, str]) -> None:
        self._documents[target] = self._documents.pop(source, {})


class ChangeLog:
    """Changes in commit order, with waiting for new ones and bounded history."""

    def __init__(self, *, history_size: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._history_size = history_size
        self._clock = ClusterClock()
        self._shadow = DocumentShadow()
        self._changes: list[Change] = []
        self._seqs: list[int] = []  # seq of each entry of _changes, for bisect
        self._last_seq = 0
        self._floors: dict[str | None, Floor] = {None: Floor()}  # None: global
        self._news = asyncio.Event()
        # Collections with changeStreamPreAndPostImages enabled.
        self._pre_images: set[tuple[str, str]] = set()

    # -- reading --------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The latest position: streams opened now start after it."""
        return self._last_seq

    @property
    def cluster_time(self) -> tuple[int, int]:
        return self._clock.last

    def next_after(self, seq: int) -> Change | None:
        index = bisect.bisect_right(self._seqs, seq)
        return self._changes[index] if index < len(self._changes) else None

    def change_at(self, seq: int) -> Change | None:
        index = bisect.bisect_left(self._seqs, seq)
        if index < len(self._seqs) and self._seqs[index] == seq:
            return self._changes[index]
        return None

    def floor(self, scope: ChangeScope) -> Floor:
        """The highest floor that applies to streams of ``scope``."""
        if scope.db is None:
            floors = list(self._floors.values())
        else:
            floors = [self._floors[None], self._floors.get(scope.db, Floor())]
        return max(floors, key=lambda floor: floor.seq)

    def ensure_position_available(self, seq: int, scope: ChangeScope) -> None:
        """Raises ChangeStreamHistoryLost unless every change after ``seq`` is kept."""
        if seq > self._last_seq:
            raise CommandError(CHANGE_STREAM_HISTORY_LOST, "resume token is not known to this server")
        if seq < self.floor(scope).seq:
            raise CommandError(
                CHANGE_STREAM_HISTORY_LOST,
                "the resume point is no longer in the change history",
            )

    def ensure_time_available(self, cluster_time: tuple[int, int], scope: ChangeScope) -> None:
        if cluster_time < self.floor(scope).time:
            raise CommandError(
                CHANGE_STREAM_HISTORY_LOST,
                "startAtOperationTime is no longer in the change history",
            )

    async def wait_for_news(self, timeout: float) -> None:
        """Returns when a change is recorded or history is forgotten, or after ``timeout``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._news.wait(), timeout)

    # -- recording ------------------------------------------------------

    def set_pre_images(self, db: str, coll: str, enabled: bool) -> None:
        """``changeStreamPreAndPostImages: {enabled}`` of a collection."""
        if enabled:
            self._pre_images.add((db, coll))
        else:
            self._pre_images.discard((db, coll))

    def _kept_pre_image(self, db: str, coll: str, before: dict[str, Any] | None) -> dict[str, Any] | None:
        return before if (db, coll) in self._pre_images else None

    def ingest(self, payload: dict[str, Any]) -> None:
        """Records one change as mongoeco announces it (see :class:`ChangeLogFeed`)."""
        operation = payload["operation_type"]
        db, coll, key = payload["db_name"], payload["coll_name"], payload["document_key"]
        if operation == "invalidate":  # mongoeco's word for a dropped collection
            self._shadow.drop_collection(db, coll)
            self._pre_images.discard((db, coll))
            self._append(operation_type="drop", db=db, coll=coll)
        elif operation == "delete":
            before = self._shadow.remove(db, coll, key)
            self._append(
                operation_type="delete",
                db=db,
                coll=coll,
                document_key=deepcopy(key),
                before=self._kept_pre_image(db, coll, before),
            )
        elif operation in ("insert", "update", "replace"):
            after = payload["full_document"] or {}  # mongoeco always sends it
            before = self._shadow.replace(db, coll, key, after)
            description = update_description(before, after) if operation == "update" else None
            self._append(
                operation_type=operation,
                db=db,
                coll=coll,
                document_key=deepcopy(key),
                full_document=deepcopy(after),
                before=self._kept_pre_image(db, coll, before),
                update_description=description,
            )

    def record_database_drop(self, db: str) -> None:
        self._shadow.drop_database(db)
        self._pre_images = {namespace for namespace in self._pre_images if namespace[0] != db}
        self._append(operation_type="dropDatabase", db=db, coll=None)

    def record_rename(self, source: tuple[str, str], target: tuple[str, str]) -> None:
        self._shadow.rename(source, target)
        if source in self._pre_images:
            self._pre_images.discard(source)
            self._pre_images.add(target)
        self._append(
            operation_type="rename",
            db=source[0],
            coll=source[1],
            to={"db": target[0], "coll": target[1]},
        )

    def forget(self, db: str | None) -> int:
        """Discards the history of ``db`` (all of it for ``None``).

        Every resume token and stream position issued so far for that scope
        becomes unusable. Returns the number of changes discarded.
        """
        return self._discard(db)

    def _append(self, **fields: Any) -> None:
        self._last_seq += 1
        change = Change(
            seq=self._last_seq,
            cluster_time=self._clock.tick(),
            wall_time=_now_millis(),
            **fields,
        )
        self._changes.append(change)
        self._seqs.append(change.seq)
        self._prune()
        self._announce()

    def _prune(self) -> None:
        excess = len(self._changes) - self._history_size
        if excess <= 0:
            return
        last_dropped = self._changes[excess - 1]
        del self._changes[:excess]
        del self._seqs[:excess]
        seconds, increment = last_dropped.cluster_time
        self._raise_floor(None, Floor(last_dropped.seq, (seconds, increment + 1)))

    def _discard(self, db: str | None) -> int:
        kept = [change for change in self._changes if db is not None and change.db != db]
        discarded = len(self._changes) - len(kept)
        self._changes = kept
        self._seqs = [change.seq for change in kept]
        # A position of its own for the floor, so that every position handed
        # out so far, even the very latest, lies below it.
        self._last_seq += 1
        self._raise_floor(db, Floor(self._last_seq, self._clock.tick()))
        self._announce()
        return discarded

    def _raise_floor(self, db: str | None, floor: Floor) -> None:
        current = self._floors.get(db, Floor())
        if floor.seq > current.seq:
            self._floors[db] = floor

    def _announce(self) -> None:
        """Wakes the streams waiting in :meth:`wait_for_news`."""
        news, self._news = self._news, asyncio.Event()
        try:
            on_our_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_our_loop = False
        if on_our_loop:
            news.set()
        else:  # an engine that writes from a worker thread
            self._loop.call_soon_threadsafe(news.set)


class ChangeLogFeed(ChangeStreamHub):
    """Stands in for the mongoeco client's change hub and feeds a :class:`ChangeLog`.

    mongoeco calls ``publish`` for every change, on two paths: the memory
    engine's committed-change delivery (after ``align_commit_sequence`` with
    the engine's commit sequence number, which it also uses to skip changes
    it has delivered already) and direct announcements without a sequence
    number (``invalidate`` when a collection is dropped). The stock hub
    numbers both with one counter, so after a drop it mistakes the next
    engine change for one already delivered and drops it (mongoeco 4.11:
    the first write after a drop is lost). Here ``publish`` hands the change
    to the change log and leaves the counter alone: it stays the engine's,
    moved only by ``align_commit_sequence``. The hub keeps no history.
    """

    def __init__(self, change_log: ChangeLog) -> None:
        super().__init__(max_retained_events=1)
        self._change_log = change_log
        # mongoeco announces changes only while a stream watches; this one
        # watches for as long as the server runs.
        self.register_watcher()

    def publish(self, **payload: Any) -> None:
        self._change_log.ingest(payload)


def _now_millis() -> datetime.datetime:
    """Now, at BSON datetime precision."""
    now = datetime.datetime.now(datetime.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
