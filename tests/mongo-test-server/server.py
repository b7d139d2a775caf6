#!/usr/bin/env python3
"""smache's MongoDB-wire server for integration tests. TEST-ONLY.

This is NOT a MongoDB substitute. It is mongoeco's in-memory wire server
(``pip install -r requirements.txt``, Python 3.13) with, patched in-process,
what smache's tests need and mongoeco lacks: change streams (MongoDB's
event format, resume tokens, ``postBatchResumeToken``, awaiting ``getMore``,
history-lost errors) and a few wire-level fixes for the Rust ``mongodb``
driver (Int64 cursor ids, ``find_one``'s negative ``limit``, Int64 numbers
in commands, a numeric ``code`` on every error). The package
``smache_mongo_test`` beside this file holds it; its module docstrings say
what is patched and why. Everything lives in memory and dies with the
process. Nothing here is for production, and test results against it are
only as good as its imitation of MongoDB: run the suite against a real
replica set too (``SMACHE_TEST_MONGODB_URI``).

Usage::

    server.py [--host 127.0.0.1] [--port 0] [--history-size N] [--log-level L]

``--port 0`` picks a free port. Once listening, the server prints exactly
one line to stdout::

    SMACHE-MONGO-TEST-SERVER READY 127.0.0.1:<port>

and serves until SIGTERM or SIGINT, then exits with status 0.

Topology: the server answers ``hello`` as a standalone (no ``setName``),
so drivers connect to it directly whatever the URI says. Drivers do not
refuse change streams on a standalone; the server simply answers the
``aggregate``. (Retryable writes and transactions, which drivers only use
with replica sets, are therefore not exercised against it.)

Change streams
--------------

``aggregate`` with ``$changeStream`` first in the pipeline is served on a
collection (``aggregate: "coll"``), on a database (``aggregate: 1``), and on
the whole cluster (``aggregate: 1`` on ``admin`` with
``allChangesForCluster: true``). Events: insert, update (with
``updateDescription``), replace, delete, drop, rename, dropDatabase, and
invalidate (which closes the cursor). See
``smache_mongo_test/change_streams.py`` for the options and stages.

A ``getMore`` on a stream waits up to its ``maxTimeMS`` (1 s if absent) for
an event, then returns an empty batch with an advanced
``postBatchResumeToken``. Writes on any connection wake waiting streams on
all others.

Resuming from a token this server run did not issue, or whose history was
discarded, fails with ``{ok: 0, code: 286, codeName:
"ChangeStreamHistoryLost"}``. History is discarded past ``--history-size``
changes (default 100000), and on request:

Test-only command ``smacheTestForgetHistory``
---------------------------------------------

``{smacheTestForgetHistory: 1}`` (on any database, e.g. ``admin``)
discards all recorded change history: every resume token issued so far
becomes invalid (resuming from it fails with code 286), and every open
stream fails with code 286 on its next ``getMore``. Streams opened
afterwards work normally.

``{smacheTestForgetHistory: 1, db: "<name>"}`` does the same for the
changes of one database only (for streams on that database and its
collections, and for whole-cluster streams), so tests running in parallel
on other databases are not disturbed.

Reply: ``{forgottenEvents: <count>, scope: "<name>" | "all", ok: 1}``. Real
MongoDB servers do not have this command.

Known differences from MongoDB
------------------------------

* Standalone only: no transactions or retryable writes from drivers.
* Events of writes in a transaction carry no ``lsid``/``txnNumber``.
* ``updateDescription`` is a diff of the documents before and after the
  update (``smache_mongo_test/diff.py``); it may name parts of a changed
  subdocument or array where MongoDB names the whole, or the reverse.
* Dropping a collection that does not exist still records a ``drop``
  event; no ``create``/``createIndexes``/... events
  (``showExpandedEvents`` is accepted and ignored).
* ``renameCollection`` works within one database only (mongoeco's limit).
* Stream cursors a client never kills stay open until the server stops.

Checking the server itself: ``smoke_test.py`` beside this file (pymongo).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mongoeco.api import AsyncMongoClient  # noqa: E402

from smache_mongo_test.executor import SmacheTestServer  # noqa: E402

READY_LINE = "SMACHE-MONGO-TEST-SERVER READY {host}:{port}"


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="smache's test-only MongoDB-wire server (mongoeco + change streams)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=0, help="port to listen on; 0 picks a free one (default 0)"
    )
    parser.add_argument(
        "--history-size",
        type=int,
        default=100_000,
        help="change events kept for resuming change streams (default 100000)",
    )
    parser.add_argument(
        "--log-level", default="WARNING", help="Python logging level for stderr (default WARNING)"
    )
    arguments = parser.parse_args(argv)
    if arguments.history_size <= 0:
        parser.error("--history-size must be positive")
    return arguments


async def serve(arguments: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    client = AsyncMongoClient()
    async with client:
        server = SmacheTestServer(
            client,
            host=arguments.host,
            port=arguments.port,
            history_size=arguments.history_size,
        )
        async with server:
            address = server.address
            print(READY_LINE.format(host=address.host, port=address.port), flush=True)
            await stop.wait()
            logging.getLogger("smache-mongo-test-server").info("stopping")


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=arguments.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    asyncio.run(serve(arguments))
    return 0


if __name__ == "__main__":
    sys.exit(main())
