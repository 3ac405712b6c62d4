"""One line of a host's observations.jsonl -> an `observations` row, or a reject reason.

Observations are few (one per host per collection), so they are checked in
Python. A state file or legacy puppet summary carried inside an observation
is handed back as text for the run parser, so it becomes a run like any other.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from pipeline import records

_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})")
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
_EMBEDDED = ("state_file", "state_file_path", "legacy_summary", "legacy_summary_path")


def parse_observation(raw: bytes, host: str) -> tuple[dict[str, Any] | None, str | None]:
    """(row, None) for a valid observation, (None, reason) otherwise."""
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None, records.refine_json_reason(raw)
    if not isinstance(obj, dict):
        return None, f"not a JSON object: {type(obj).__name__}"
    when = obj.get("observed_at")
    if not isinstance(when, str) or not _ISO.fullmatch(when):
        return None, "observed_at: missing or not an ISO 8601 timestamp"
    if not isinstance(obj.get("reachable"), bool):
        return None, "reachable: expected true or false"
    row: dict[str, Any] = {"host": host, "reachable": obj["reachable"]}
    row["observed_at"] = datetime.fromisoformat(when.replace("Z", "+00:00"))
    for name, types in _FIELDS.items():
        value = obj.get(name)
        if value is not None and (
            not isinstance(value, types) or isinstance(value, bool) != (bool in types)
        ):
            return None, f"{name}: expected {types[0].__name__}, got {type(value).__name__}"
        row[name] = value
    extra = {
        k: v
        for k, v in obj.items()
        if k not in _FIELDS and k not in _EMBEDDED and k not in ("host", "observed_at", "reachable")
    }
    if obj.get("host") not in (None, host):
        extra["reported_host"] = obj["host"]
    row["extra"] = json.dumps(extra, sort_keys=True) if extra else None
    row["_embedded"] = _embedded_runs(obj)
    return row, None


def _embedded_runs(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, text) of the run records an observation carries."""
    found = []
    if isinstance(obj.get("state_file"), str) and obj["state_file"].strip():
        found.append(("state_file", obj["state_file"]))
    if isinstance(obj.get("legacy_summary"), str):
        record = records.legacy_summary_record(obj["legacy_summary"])
        if record is not None:
            found.append(("legacy_summary", json.dumps(record)))
    return found
