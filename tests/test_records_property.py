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


# --- no line stops a load --------------------------------------------------------------

ODD_TIMES = [
    "2026-11-20T10:00:00Z", "2026-02-30T00:00:00Z", "2026-11-20T24:00:00Z",
    "0000-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "9999-12-31T23:00:00-12:00",
    "2026-11-20T10:00:00+99:99", "2026-11-20T10:00:00+14:00", "2026-11-20T10:00:00.5+0530",
]  # fmt: skip
ODD_NUMBERS = ["NaN", "-Infinity", "1e999", "-0", "1.5", str(2**64), str(-(10**30)), "0", "1"]
ODD_JSON: list[Any] = [
    None, True, "", "null", "x", "\ud800", "\udc00x", "A" * 64, [1, [2, {}]], {"a": None},
]  # fmt: skip
LAST_RUNS = ["1763632800", "inf", "-inf", "nan", "1e20", "-99999999999", "253402300800", "x"]


def json_value(draw: st.DrawFn) -> str:
    """The JSON text of an awkward value: odd numbers (some not JSON), times, strings."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.sampled_from(ODD_NUMBERS))
    if kind == 1:
        return json.dumps(draw(st.sampled_from(ODD_TIMES)))
    if kind == 2:
        return json.dumps(draw(st.integers(-(2**70), 2**70)))
    return json.dumps(draw(st.sampled_from(ODD_JSON)))


def members_text(draw: st.DrawFn, members: list[tuple[str, str]]) -> str:
    """An object of `members`, sometimes with a trailing comma."""
    body = ",".join(f"{json.dumps(k)}:{v}" for k, v in members)
    return "{" + body + draw(st.sampled_from(["", "", "", ","])) + "}"


@st.composite
def history_lines(draw: st.DrawFn, i: int) -> str:
    """A run record with some fields given awkward values or repeated; its own run_id."""
    members = [("run_id", json.dumps(f"r{i}"))]
    for key in ("schema_version", "ts", "success", "duration_s", "started_at", "git_sha", "x"):
        choice = draw(st.integers(0, 4))
        normal = {"schema_version": "1", "ts": '"2026-11-20T10:00:00Z"', "success": "true"}
        if choice == 0 and key in normal:
            members.append((key, normal[key]))
        elif choice in (1, 2):
            members.append((key, json_value(draw)))
            if choice == 2:  # repeated
                members.append((key, json_value(draw)))
    return members_text(draw, members)


@st.composite
def observation_lines(draw: st.DrawFn, i: int) -> str:
    members = [("observed_at", json.dumps(draw(st.sampled_from(ODD_TIMES))))]
    members.append(("reachable", "true"))
    for key in ("uptime_s", "os", "override_sha", "vault_sha", "state_file", "z", "reachable"):
        if draw(st.integers(0, 3)) == 0:
            members.append((key, json_value(draw)))
    if draw(st.booleans()):
        last_run = draw(st.sampled_from(LAST_RUNS))
        failures = draw(st.sampled_from(["0", "\u00b2", "9" * 5000]))
        summary = f"time:\n  last_run: {last_run}\nevents:\n  failure: {failures}\n"
        members.append(("legacy_summary", json.dumps(summary)))
    # distinct times keep every valid observation (host, observed_at is its identity)
    members[0] = (
        ("observed_at", json.dumps(f"2026-11-20T10:00:{i:02d}Z"))
        if draw(st.booleans())
        else members[0]
    )
    return members_text(draw, members)


@st.composite
def mirror_lines(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    n_runs, n_obs = draw(st.integers(1, 12)), draw(st.integers(0, 8))
    runs = [draw(history_lines(i)) for i in range(n_runs)]
    obs = [draw(observation_lines(i)) for i in range(n_obs)]
    return runs, obs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mirror_lines())
def test_no_line_stops_a_load(lines: tuple[list[str], list[str]]) -> None:
    """Each history line becomes a run or a reject; each observation an observation, a
    reject or (same host and time as an earlier one) nothing; the load never raises."""
    runs, obs = lines
    with tempfile.TemporaryDirectory() as tmp:
        mirror = Path(tmp) / "m"
        (mirror / "h").mkdir(parents=True)
        (mirror / "h" / "history.jsonl").write_text("".join(r + "\n" for r in runs))
        (mirror / "h" / "observations.jsonl").write_text("".join(o + "\n" for o in obs))
        con = warehouse.connect(Path(tmp) / "wh.duckdb")
        load.load_mirror(con, mirror)
        row = con.execute(
            "SELECT (SELECT count(*) FROM runs WHERE source = 'history'), "
            "(SELECT count(*) FROM rejects WHERE source_path LIKE '%history.jsonl'), "
            "(SELECT count(*) FROM observations), "
            "(SELECT count(*) FROM rejects WHERE source_path LIKE '%observations.jsonl')"
        ).fetchall()[0]
        con.close()
    assert row[0] + row[1] == len(runs)
    assert row[2] + row[3] <= len(obs)
