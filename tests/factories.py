"""Hand-built records and mirrors for tests: the contract's fields with chosen values."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

SHA_A = "a" * 40
SHA_B = "b" * 40
SHA_C = "c" * 40
OVR_1 = "1" * 64
OVR_2 = "2" * 64
VAULT = "f" * 64


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(**kw: float) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(**kw)


def record(ts: datetime | str = "2026-11-20T10:00:00Z", **over: Any) -> dict[str, Any]:
    """A complete schema-v1 record; keyword arguments replace fields."""
    rec: dict[str, Any] = {
        "schema_version": 1,
        "ts": ts if isinstance(ts, str) else iso(ts),
        "success": True,
        "exit_code": 0,
        "git_repo": "https://github.com/mozilla-platform-ops/ronin_puppet.git",
        "git_branch": "master",
        "git_sha": SHA_A,
        "override_sha": None,
        "vault_sha": VAULT,
        "override_path": "/etc/puppet/ronin_settings",
        "role": "gecko_t_linux_talos",
        "duration_s": 42,
        "git_dirty": False,
        "vault_path": "/root/vault.yaml",
        "host": "h1.example.com",
        "run_id": None,
        "started_at": None,
        "attempt": 1,
        "stage": "puppet",
        "os": "Linux",
        "wrapper_version": "1.0.0",
    }
    rec.update(over)
    if rec["run_id"] is None:
        del rec["run_id"]
    if rec["success"] is True and "exit_code" not in over:
        rec["exit_code"] = 0
    return rec


def seed_record(**over: Any) -> dict[str, Any]:
    """A record as older wrappers wrote it: only the first twelve fields."""
    full = record(**over)
    keys = list(full)[:12]
    return {k: full[k] for k in keys}


def line(rec: dict[str, Any]) -> bytes:
    return json.dumps(rec, separators=(",", ":")).encode() + b"\n"


def write_history(mirror: Path, host: str, data: bytes, append: bool = True) -> Path:
    path = mirror / host / "history.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab" if append else "wb") as fh:
        fh.write(data)
    return path


def write_observation(mirror: Path, host: str, **fields: Any) -> None:
    obs: dict[str, Any] = {
        "host": host,
        "observed_at": iso(datetime.now(UTC)),
        "reachable": True,
        "error": None,
        "os": "Linux",
        "role": "gecko_t_linux_talos",
        "override_present": False,
        "override_sha": None,
        "vault_sha": VAULT,
    }
    obs.update(fields)
    if isinstance(obs["observed_at"], datetime):
        obs["observed_at"] = iso(obs["observed_at"])
    path = mirror / host / "observations.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(obs) + "\n")


def stage_lines(con: Any, texts: list[str], source: str = "history") -> None:
    """Register `texts` as one file's staged lines (`staged`, `staged_files`) the way the
    loader hands them to records.fast_sql and slow_sql, with their byte offsets."""
    import pyarrow as pa

    offsets, pos = [], 0
    for t in texts:
        offsets.append(pos)
        pos += len(t.encode())
    con.register(
        "staged",
        pa.table(
            {
                "file_idx": pa.array([0] * len(texts), pa.int32()),
                "byte_offset": pa.array(offsets, pa.int64()),
                "line": pa.array(texts, pa.large_string()),
                "pre_reason": pa.nulls(len(texts), pa.string()),
            }
        ),
    )
    files = {"file_idx": pa.array([0], pa.int32()), "host": ["h1"], "source": [source],
             "source_path": ["/m/h1/history.jsonl"]}  # fmt: skip
    con.register("staged_files", pa.table(files))


class JsonHandler(BaseHTTPRequestHandler):
    """A fake HTTP API's request handler (a worker queue): `send_json` answers 200 with a
    JSON body (a document, or its bytes as they are); requests are not logged."""

    def send_json(self, doc: Any) -> None:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass
