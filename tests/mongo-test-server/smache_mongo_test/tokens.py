"""Resume tokens and cluster times of the test server's change events.

A resume token is ``{_data: "<hex>"}``, opaque to drivers as on MongoDB. Its
hex string packs four fields::

    82 TTTTTTTTIIIIIIII IIIIIIII SSSSSSSSSSSSSSSS FF
       cluster time     instance position         flag

* ``cluster time`` follows the byte ``82``, as in MongoDB's own tokens
  (KeyString: a Timestamp type byte, then seconds and increment, big-endian):
  the cluster time of the change the token stands for, or of the latest change
  when it is a post-batch token of an idle stream. smache reads it to know
  how far its worker has followed the stream (read-your-writes);
* ``instance`` is drawn at random when the server process starts, so a token
  from an earlier run (whose history died with it) is "unknown", and resuming
  from it fails with ChangeStreamHistoryLost, as on a server whose oplog
  rolled over;
* ``position`` is the sequence number of the change the token stands for (or
  the last change a stream had looked at, for a post-batch token);
* ``flag`` is 1 on the token of an ``invalidate`` event, which ``startAfter``
  accepts and ``resumeAfter`` refuses, as MongoDB does.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from mongoeco.core.bson_scalars import BsonInt64

from .errors import BAD_VALUE, CHANGE_STREAM_HISTORY_LOST, CommandError

INSTANCE_ID = secrets.randbits(32)
_TOKEN_LENGTH = 2 + 16 + 8 + 16 + 2


@dataclass(frozen=True, slots=True)
class TokenPosition:
    """What a resume token points at."""

    seq: int
    invalidate: bool = False
    cluster_time: tuple[int, int] = (0, 0)


def encode_token(seq: int, cluster_time: tuple[int, int], *, invalidate: bool = False) -> dict[str, str]:
    """The resume token (``_id`` of an event) for change ``seq``, made at ``cluster_time``."""
    seconds, increment = cluster_time
    return {
        "_data": f"82{seconds:08X}{increment:08X}{INSTANCE_ID:08X}{seq:016X}{int(invalidate):02X}"
    }


def decode_token(token: object) -> TokenPosition:
    """Reads a token given in ``resumeAfter``/``startAfter``.

    Raises BadValue for something that is no token at all and
    ChangeStreamHistoryLost for a token of another server process.
    """
    data = token.get("_data") if isinstance(token, dict) else None
    if not isinstance(data, str) or len(data) != _TOKEN_LENGTH:
        raise CommandError(BAD_VALUE, f"invalid resume token: {token!r}")
    try:
        if not data.startswith("82"):
            raise ValueError
        seconds, increment = int(data[2:10], 16), int(data[10:18], 16)
        instance, seq, flag = int(data[18:26], 16), int(data[26:42], 16), int(data[42:], 16)
    except ValueError:
        raise CommandError(BAD_VALUE, f"invalid resume token: {token!r}") from None
    if instance != INSTANCE_ID:
        raise CommandError(
            CHANGE_STREAM_HISTORY_LOST,
            "resume token was not issued by this server run; its history is gone",
        )
    return TokenPosition(seq=seq, invalidate=flag == 1, cluster_time=(seconds, increment))


def as_int(value: object) -> object:
    """Unwraps mongoeco's ``BsonInt64`` (what a wire Int64 decodes to)."""
    return value.value if isinstance(value, BsonInt64) else value


class ClusterClock:
    """Strictly increasing ``(seconds, increment)`` pairs, like BSON Timestamps."""

    def __init__(self) -> None:
        self._last = (0, 0)

    @property
    def last(self) -> tuple[int, int]:
        return self._last

    def tick(self) -> tuple[int, int]:
        seconds, increment = self._last
        now = int(time.time())
        self._last = (now, 1) if now > seconds else (seconds, increment + 1)
        return self._last
