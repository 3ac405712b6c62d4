"""One line of a host's observations.jsonl -> an `observations` row, or a reject reason.

Observations are few (one per host per collection), so they are checked in
Python. A state file or legacy puppet summary carried inside an observation
is handed back as text for the run parser, so it becomes a run like any other.
No line raises: whatever is wrong with it is its reject reason.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from pipeline import records
from pipeline.shellwords import strip_credentials

_ISO = re.compile(records.TIMESTAMP_RE)
_SHA256 = re.compile("[0-9a-fA-F]{64}")
_FIELDS: dict[str, tuple[type, ...]] = {
    "error": (str,),
    "os": (str,),
    "role": (str,),
    "override_present": (bool,),
    "override_sha": (str,),
    "vault_sha": (str,),
    "override_repo": (str,),
    "override_branch": (str,),
    "vault_status": (str,),
    "uptime_s": (int,),
}
_INT_RANGE = {"uptime_s": (0, 2**63 - 1)}  # observations.uptime_s is a BIGINT
_EMBEDDED = (
    "state_file", "state_file_b64", "state_file_path", "legacy_summary", "legacy_summary_path",
)  # fmt: skip


def parse_observation(raw: bytes, host: str) -> tuple[dict[str, Any] | None, str | None]:
    """(row, None) for a valid observation, (None, reason) otherwise; never raises."""
    try:
        return _parse(raw, host)
    except Exception as exc:  # a line must not stop the ingest: anything unforeseen rejects it
        return None, f"unreadable observation: {type(exc).__name__}: {str(exc)[:200]}"


def _parse(raw: bytes, host: str) -> tuple[dict[str, Any] | None, str | None]:
    repeated: dict[int, str] = {}  # id of a decoded object -> its first repeated key

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        if len(obj) < len(items):
            seen: set[str] = set()
            for key, _ in items:
                if key in seen:
                    repeated[id(obj)] = key
                    break
                seen.add(key)
        return obj

    obj, reason = records.loads_strict(raw, object_pairs_hook=pairs)
    if reason is not None:
        return None, reason
    if not isinstance(obj, dict):
        return None, f"not a JSON object: {_json_type(obj)}"
    if id(obj) in repeated:  # only the top level's keys are fields; nested values are kept
        return None, f"repeated key: {repeated[id(obj)][:80]}"
    when = obj.get("observed_at")
    if not isinstance(when, str) or not _ISO.fullmatch(when):
        return None, "observed_at: missing or not an ISO 8601 timestamp"
    observed_at = records.parse_timestamp(when)
    if observed_at is None:
        return None, f"observed_at: impossible date or time: {when[:80]}"
    if not isinstance(obj.get("reachable"), bool):
        return None, "reachable: expected true or false"
    row: dict[str, Any] = {"host": host, "reachable": obj["reachable"], "observed_at": observed_at}
    for name, types in _FIELDS.items():
        value = obj.get(name)
        if value is not None and (
            not isinstance(value, types) or isinstance(value, bool) != (bool in types)
        ):
            return None, f"{name}: expected {types[0].__name__}, got {type(value).__name__}"
        if name in _INT_RANGE and isinstance(value, int):
            lo, hi = _INT_RANGE[name]
            if not lo <= value <= hi:
                return None, f"{name}: {str(value)[:80]} (outside {lo}..{hi})"
        if name == "override_repo" and isinstance(value, str):
            value = strip_credentials(value)  # mirrors of older collectors may hold a token
        if name in ("override_sha", "vault_sha") and isinstance(value, str):
            if _SHA256.fullmatch(value):  # any other text is kept as the host reported it
                value = value.lower()  # as runs store them, so the two compare equal
        row[name] = value
    extra = {
        k: v
        for k, v in obj.items()
        if k not in _FIELDS and k not in _EMBEDDED and k not in ("host", "observed_at", "reachable")
    }
    if obj.get("host") not in (None, host):
        extra["reported_host"] = obj["host"]
    try:
        row["extra"] = json.dumps(extra, sort_keys=True, allow_nan=False) if extra else None
    except ValueError:  # a number like 1e999 decodes as infinity, which JSON cannot hold
        return None, "invalid JSON: a number too large for a double"
    row["_embedded"] = _embedded_runs(obj)
    return row, None


def _json_type(value: Any) -> str:
    """The type name the run parser's reasons use (DuckDB's json_type, lower case)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "ubigint" if value >= 0 else "bigint"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "varchar"
    return "array"


def _embedded_runs(obj: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(source, bytes) of the run records an observation carries. A state file that is
    not UTF-8 comes as `state_file_b64` (its exact bytes, which the run parser rejects)."""
    found = []
    if isinstance(obj.get("state_file"), str) and obj["state_file"].strip():
        found.append(("state_file", obj["state_file"].encode("utf-8")))
    elif isinstance(obj.get("state_file_b64"), str):
        try:
            raw = base64.b64decode(obj["state_file_b64"], validate=True)
        except ValueError:  # binascii.Error: not base64, so not the collector's
            raw = b""
        if raw.strip():
            found.append(("state_file", raw))
    if isinstance(obj.get("legacy_summary"), str):
        record = records.legacy_summary_record(obj["legacy_summary"])
        if record is not None:
            found.append(("legacy_summary", json.dumps(record).encode("utf-8")))
    return found
