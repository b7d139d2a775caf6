#!/usr/bin/env python3
"""Smoke test of the test-only Mongo server (``server.py``) with pymongo.

Starts its own server process (with a small ``--history-size``), checks
CRUD, error codes and change streams as pymongo sees them, then stops the
server with SIGTERM and checks it exits cleanly. Run it with the venv of
``requirements.txt``::

    .venv-test/bin/python tests/mongo-test-server/smoke_test.py
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import unittest
from pathlib import Path

from bson import Timestamp
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError, OperationFailure

SERVER = Path(__file__).resolve().parent / "server.py"
HISTORY_SIZE = 50


def start_server() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-u", str(SERVER), "--port", "0", "--history-size", str(HISTORY_SIZE)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    prefix = "SMACHE-MONGO-TEST-SERVER READY "
    if not line.startswith(prefix):
        process.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return process, line[len(prefix) :]


class SmokeTest(unittest.TestCase):
    process: subprocess.Popen[str]
    client: MongoClient

    @classmethod
    def setUpClass(cls) -> None:
        cls.process, address = start_server()
        cls.client = MongoClient(f"mongodb://{address}/", serverSelectionTimeoutMS=5000)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()
        cls.process.send_signal(signal.SIGTERM)
        assert cls.process.wait(timeout=10) == 0, "server must exit cleanly on SIGTERM"

    def setUp(self) -> None:
        self.db = self.client[f"smoke_{self._testMethodName}"]
        self.coll = self.db.items

    # -- CRUD and errors ------------------------------------------------

    def test_crud_and_counts(self) -> None:
        self.coll.insert_many([{"_id": i, "k": i} for i in range(10)])
        self.assertEqual(self.coll.find_one({"_id": 3}), {"_id": 3, "k": 3})
        self.assertIsNone(self.coll.find_one({"_id": 99}))
        self.assertEqual(self.coll.count_documents({"k": {"$gte": 5}}), 5)
        self.assertEqual(len(list(self.coll.find({}, batch_size=3))), 10)
        self.coll.update_one({"_id": 1}, {"$set": {"k": 100}})
        self.coll.replace_one({"_id": 2}, {"r": True})
        self.coll.delete_one({"_id": 3})
        self.assertEqual(self.coll.find_one({"_id": 2}), {"_id": 2, "r": True})
        self.assertEqual(self.coll.estimated_document_count(), 9)

    def test_error_codes(self) -> None:
        self.coll.insert_one({"_id": 1})
        with self.assertRaises(DuplicateKeyError) as duplicate:
            self.coll.insert_one({"_id": 1})
        self.assertEqual(duplicate.exception.code, 11000)
        with self.assertRaises(OperationFailure) as unknown:
            self.db.command("noSuchCommand")
        self.assertEqual(unknown.exception.code, 59)
        self.assertEqual(unknown.exception.details["codeName"], "CommandNotFound")

    # -- change streams -------------------------------------------------

    def test_event_format(self) -> None:
        self.db.create_collection("items", changeStreamPreAndPostImages={"enabled": True})
        with self.coll.watch(
            full_document="updateLookup", full_document_before_change="whenAvailable"
        ) as stream:
            self.coll.insert_one({"_id": 1, "a": 1, "arr": [1, 2, 3]})
            self.coll.update_one({"_id": 1}, {"$set": {"b.c": 2}, "$unset": {"a": ""}, "$pop": {"arr": 1}})
            insert, update = stream.next(), stream.next()
        self.assertEqual(insert["operationType"], "insert")
        self.assertIsInstance(insert["_id"]["_data"], str)
        self.assertIsInstance(insert["clusterTime"], Timestamp)
        # The token carries the event's cluster time after 0x82, as MongoDB's do.
        data = insert["_id"]["_data"]
        self.assertEqual(data[:2], "82")
        self.assertEqual(
            (int(data[2:10], 16), int(data[10:18], 16)),
            (insert["clusterTime"].time, insert["clusterTime"].inc),
        )
        self.assertEqual(insert["ns"], {"db": self.db.name, "coll": "items"})
        self.assertEqual(insert["documentKey"], {"_id": 1})
        self.assertEqual(insert["fullDocument"], {"_id": 1, "a": 1, "arr": [1, 2, 3]})
        self.assertEqual(update["operationType"], "update")
        self.assertEqual(update["fullDocument"], {"_id": 1, "arr": [1, 2], "b": {"c": 2}})
        self.assertEqual(update["fullDocumentBeforeChange"], {"_id": 1, "a": 1, "arr": [1, 2, 3]})
        self.assertEqual(
            update["updateDescription"],
            {
                "updatedFields": {"b": {"c": 2}},
                "removedFields": ["a"],
                "truncatedArrays": [{"field": "arr", "newSize": 2}],
            },
        )

    def test_pre_images_only_where_enabled(self) -> None:
        with self.coll.watch(full_document_before_change="whenAvailable") as stream:
            self.coll.insert_one({"_id": 1, "a": 1})
            self.coll.update_one({"_id": 1}, {"$set": {"a": 2}})
            self.db.command("collMod", "items", changeStreamPreAndPostImages={"enabled": True})
            self.coll.update_one({"_id": 1}, {"$set": {"a": 3}})
            events = [stream.next() for _ in range(3)]
        self.assertIsNone(events[1]["fullDocumentBeforeChange"])
        self.assertEqual(events[2]["fullDocumentBeforeChange"], {"_id": 1, "a": 2})

    def test_writes_report_their_operation_time(self) -> None:
        with self.client.start_session() as session:
            self.coll.insert_one({"_id": 1}, session=session)
            first = session.operation_time
            self.coll.update_one({"_id": 1}, {"$set": {"a": 1}}, session=session)
            self.assertIsInstance(first, Timestamp)
            self.assertGreater(session.operation_time, first)

    def test_resume_after_and_start_at_operation_time(self) -> None:
        with self.coll.watch() as stream:
            self.coll.insert_one({"_id": 1})
            first = stream.next()
        self.coll.insert_one({"_id": 2})
        self.coll.delete_one({"_id": 1})
        with self.coll.watch(resume_after=first["_id"]) as stream:
            self.assertEqual([stream.next()["documentKey"]["_id"] for _ in range(2)], [2, 1])
        with self.coll.watch(start_at_operation_time=first["clusterTime"]) as stream:
            self.assertEqual([stream.next()["documentKey"]["_id"] for _ in range(3)], [1, 2, 1])

    def test_empty_get_more_waits_and_advances_the_token(self) -> None:
        with self.coll.watch(max_await_time_ms=300) as stream:
            before = stream.resume_token
            self.db.other.insert_one({"_id": 1})  # not in this stream's scope
            started = time.monotonic()
            self.assertIsNone(stream.try_next())
            waited = time.monotonic() - started
            self.assertGreaterEqual(waited, 0.25)
            self.assertNotEqual(stream.resume_token, before)

    def test_blocked_get_more_does_not_block_other_connections(self) -> None:
        events: list[dict] = []

        def watch() -> None:
            with self.coll.watch(max_await_time_ms=5000) as stream:
                ready.set()
                events.append(stream.next())

        ready = threading.Event()
        watcher = threading.Thread(target=watch)
        watcher.start()
        ready.wait(5)
        time.sleep(0.2)  # let the watcher's getMore start waiting
        started = time.monotonic()
        self.coll.insert_one({"_id": "from-another-connection"})
        self.assertLess(time.monotonic() - started, 2.0)
        watcher.join(10)
        self.assertEqual(events[0]["documentKey"], {"_id": "from-another-connection"})

    def test_pipeline_stages(self) -> None:
        with self.coll.watch(
            [{"$match": {"operationType": "delete"}}, {"$project": {"documentKey": 1}}]
        ) as stream:
            self.coll.insert_one({"_id": 1})
            self.coll.delete_one({"_id": 1})
            event = stream.next()
        self.assertEqual(set(event), {"_id", "documentKey"})
        with (
            self.assertRaises(OperationFailure) as removed_id,
            self.coll.watch([{"$project": {"_id": 0}}]) as stream,
        ):
            self.coll.insert_one({"_id": 2})
            stream.next()
        self.assertEqual(removed_id.exception.code, 280)

    def test_database_and_cluster_streams(self) -> None:
        with self.db.watch([{"$match": {"ns.coll": "b"}}]) as in_db, self.client.watch() as in_cluster:
            self.db.a.insert_one({"_id": 1})
            self.db.b.insert_one({"_id": 2})
            self.assertEqual(in_db.next()["ns"], {"db": self.db.name, "coll": "b"})
            self.assertEqual(in_cluster.next()["ns"], {"db": self.db.name, "coll": "a"})

    def test_drop_and_rename_invalidate_collection_streams(self) -> None:
        self.coll.insert_one({"_id": 1})
        with self.coll.watch() as stream, self.db.watch() as in_db:
            self.coll.drop()
            self.assertEqual(stream.next()["operationType"], "drop")
            invalidate = stream.next()
            self.assertEqual(invalidate["operationType"], "invalidate")
            self.assertFalse(stream.alive)
            self.assertEqual(in_db.next()["operationType"], "drop")
            self.db.c.insert_one({"_id": 1})
            self.db.c.rename("d")
            self.assertEqual(in_db.next()["operationType"], "insert")
            rename = in_db.next()
            self.assertEqual((rename["operationType"], rename["to"]["coll"]), ("rename", "d"))
            self.client.drop_database(self.db.name)
            self.assertEqual(in_db.next()["operationType"], "drop")
            self.assertEqual(in_db.next()["operationType"], "dropDatabase")
            self.assertEqual(in_db.next()["operationType"], "invalidate")
        with self.coll.watch(start_after=invalidate["_id"]) as stream:
            self.coll.insert_one({"_id": 5})
            self.assertEqual(stream.next()["documentKey"], {"_id": 5})
        with self.assertRaises(OperationFailure) as refused:
            self.coll.watch(resume_after=invalidate["_id"])
        self.assertEqual(refused.exception.code, 260)

    def test_forget_history(self) -> None:
        with self.coll.watch() as stream:
            self.coll.insert_one({"_id": 1})
            token = stream.next()["_id"]
            self.client.admin.command({"smacheTestForgetHistory": 1, "db": self.db.name})
            with self.assertRaises(OperationFailure) as lost:
                stream.next()
            self.assertEqual(lost.exception.code, 286)
        with self.assertRaises(OperationFailure) as lost:
            self.coll.watch(resume_after=token)
        self.assertEqual(lost.exception.code, 286)
        self.assertEqual(lost.exception.details["codeName"], "ChangeStreamHistoryLost")
        with self.coll.watch() as stream:
            self.coll.insert_one({"_id": 2})
            self.assertEqual(stream.next()["documentKey"], {"_id": 2})

    def test_unknown_token_and_pruned_history(self) -> None:
        with self.assertRaises(OperationFailure) as unknown:
            self.coll.watch(resume_after={"_data": "82" + "0" * 16 + "00000000" + "0" * 16 + "00"})
        self.assertEqual(unknown.exception.code, 286)
        with self.coll.watch() as stream:
            self.coll.insert_one({"_id": 0})
            token = stream.next()["_id"]
        self.coll.insert_many([{"_id": i} for i in range(1, HISTORY_SIZE + 5)])
        with self.assertRaises(OperationFailure) as pruned:
            self.coll.watch(resume_after=token)
        self.assertEqual(pruned.exception.code, 286)

    def test_zz_forget_all_history(self) -> None:  # zz: runs last, forgets everything
        with self.coll.watch() as stream:
            self.coll.insert_one({"_id": 1})
            token = stream.next()["_id"]
        reply = self.client.admin.command("smacheTestForgetHistory", 1)
        self.assertEqual(reply["scope"], "all")
        with self.assertRaises(OperationFailure) as lost:
            self.coll.watch(resume_after=token)
        self.assertEqual(lost.exception.code, 286)


if __name__ == "__main__":
    unittest.main(verbosity=2)
