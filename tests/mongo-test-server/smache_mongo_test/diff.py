"""``updateDescription`` of an update event, from the documents before and after.

mongoeco records updates without a description, so the test server diffs
the pre-image it keeps against the post-image mongoeco reports. The result
follows MongoDB's (v2 delta) shape closely enough for tests:

* a changed or added field is listed in ``updatedFields`` under its dotted
  path, descending into embedded documents and array elements;
* a removed field is listed in ``removedFields``;
* an array that shrank is listed in ``truncatedArrays`` with its new size
  (elements past the new size that changed are not reported).

MongoDB sometimes reports a whole changed subdocument or array where this
reports its parts; both describe the same change.
"""

from __future__ import annotations

from typing import Any

import bson
from mongoeco.wire.bson_bridge import encode_wire_value


def update_description(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any]:
    """``{updatedFields, removedFields, truncatedArrays}`` for ``before`` -> ``after``."""
    description: dict[str, Any] = {"updatedFields": {}, "removedFields": [], "truncatedArrays": []}
    _diff_documents(before or {}, after, "", description)
    return description


def _diff_documents(before: dict[str, Any], after: dict[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key in before:
        if key not in after:
            out["removedFields"].append(prefix + key)
    for key, value in after.items():
        if key not in before:
            out["updatedFields"][prefix + key] = value
        else:
            _diff_values(before[key], value, prefix + key, out)


def _diff_arrays(before: list[Any], after: list[Any], path: str, out: dict[str, Any]) -> None:
    for index, value in enumerate(after):
        if index < len(before):
            _diff_values(before[index], value, f"{path}.{index}", out)
        else:
            out["updatedFields"][f"{path}.{index}"] = value
    if len(after) < len(before):
        out["truncatedArrays"].append({"field": path, "newSize": len(after)})


def _diff_values(before: Any, after: Any, path: str, out: dict[str, Any]) -> None:
    if _same(before, after):
        return
    if isinstance(before, dict) and isinstance(after, dict):
        _diff_documents(before, after, path + ".", out)
    elif isinstance(before, list) and isinstance(after, list):
        _diff_arrays(before, after, path, out)
    else:
        out["updatedFields"][path] = after


def _same(left: Any, right: Any) -> bool:
    """BSON equality: same type, same value, same field order (1 != 1.0)."""
    return _bson_bytes(left) == _bson_bytes(right)


def _bson_bytes(value: Any) -> bytes:
    return bson.encode({"v": encode_wire_value(value)})
