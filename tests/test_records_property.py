"""Property: any record the contract allows round-trips through the loader unchanged."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import load, warehouse

HEX = "0123456789abcdef"
text = st.text(min_size=1, max_size=40).filter(lambda s: s not in ("", "null"))
opt_text = st.none() | text
timestamps = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=0))
sha1 = st.text(HEX, min_size=40, max_size=40)
sha256 = st.text(HEX, min_size=64, max_size=64)
exit_codes = st.none() | st.integers(0, 255)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    exit_code = draw(exit_codes)
    rec: dict[str, Any] = {
        "schema_version": 1,
        "ts": draw(timestamps),
        "success": exit_code in (0, 2),
        "exit_code": exit_code,
        "git_repo": draw(opt_text),
        "git_branch": draw(opt_text),
        "git_sha": draw(st.none() | sha1),
        "override_sha": draw(st.none() | sha256),
        "vault_sha": draw(st.none() | sha256),
        "override_path": draw(text),
        "role": draw(opt_text),
        "duration_s": draw(st.integers(0, 10**6)),
    }
    if draw(st.booleans()):  # a current wrapper's record, not a seed one
        rec.update(
            git_dirty=draw(st.none() | st.booleans()),
            vault_path=draw(text),
            host=draw(text),
            run_id=draw(st.uuids()).hex,
            started_at=rec["ts"] - timedelta(seconds=rec["duration_s"]),
            attempt=draw(st.integers(1, 5)),
            stage=draw(st.sampled_from(["puppet", "prepare"])),
            os=draw(st.sampled_from(["Linux", "Darwin"])),
            wrapper_version=draw(text),
        )
    if draw(st.booleans()):
        rec["some_future_field"] = draw(st.none() | text | st.integers() | st.lists(st.integers()))
    return rec


def encode(rec: dict[str, Any]) -> bytes:
    out = {
        k: (v.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(v, datetime) else v)
        for k, v in rec.items()
    }
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records(), min_size=1, max_size=15))
def test_any_contract_record_round_trips(recs: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mirror = Path(tmp) / "m"
        (mirror / "h").mkdir(parents=True)
        # distinct timestamps so rows can be matched back to records
        for i, rec in enumerate(recs):
            rec["ts"] = rec["ts"].replace(year=2000 + i, day=min(rec["ts"].day, 28))
            if "started_at" in rec:
                rec["started_at"] = rec["ts"] - timedelta(seconds=rec["duration_s"])
        (mirror / "h" / "history.jsonl").write_bytes(b"".join(encode(r) for r in recs))
        con = warehouse.connect(Path(tmp) / "wh.duckdb")
        load.load_mirror(con, mirror)
        assert con.execute("SELECT count(*) FROM rejects").fetchall() == [(0,)]
        cur = con.execute("SELECT * FROM runs ORDER BY ts")
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        con.close()
    assert len(rows) == len(recs)
    for rec, row in zip(sorted(recs, key=lambda r: r["ts"]), rows, strict=True):
        for key, value in rec.items():
            if key == "some_future_field":
                assert json.loads(row["extra"]) == {key: value}
            elif key == "host":
                assert row["reported_host"] == value
            else:
                assert row[key] == value, key
