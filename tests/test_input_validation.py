"""Hostile and impossible input through the real loader: every bad line becomes a reject with
its bytes and a precise reason, the lines around it load, and no line stops an ingest.

Covers repeated keys, lenient JSON (trailing commas, NaN, Infinity), impossible timestamps
and offsets, integers beyond 64 bits, observations that used to raise (impossible dates,
huge numbers, impossible legacy run times, unpaired surrogates, deep nesting) and the
wording of reasons. The fast path is checked to refuse every line the slow path rejects
as a whole, and to agree with it on the changed timestamp rules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from factories import OVR_1, VAULT, line, record, stage_lines, write_history

from pipeline import load, records

HOST = "h1.example.com"
REPO = Path(__file__).resolve().parent.parent
HEAD = b'{"schema_version":1,"ts":"2026-11-03T23:31:28Z","success":true,"run_id":"x"'


def load_history(con: duckdb.DuckDBPyConnection, mirror: Path, *raws: bytes) -> load.LoadStats:
    """Load `raws` (lines without their newline) between two good records."""
    before = line(record(ts="2026-11-20T10:00:00Z", run_id="before"))
    after = line(record(ts="2026-11-20T11:00:00Z", run_id="after"))
    write_history(mirror, HOST, before + b"".join(r + b"\n" for r in raws) + after)
    return load.load_mirror(con, mirror)


def load_observations(con: duckdb.DuckDBPyConnection, mirror: Path, *raws: bytes) -> None:
    """Load observation lines `raws` followed by a good observation."""
    good = {"host": HOST, "observed_at": "2026-11-20T12:00:00Z", "reachable": True}
    path = mirror / HOST / "observations.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as fh:
        fh.write(b"".join(r + b"\n" for r in raws) + json.dumps(good).encode() + b"\n")
    load.load_mirror(con, mirror)


def run_ids(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY ts, run_id").fetchall()]


def rejects(con: duckdb.DuckDBPyConnection) -> list[tuple[str, bytes]]:
    return con.execute("SELECT reason, line FROM rejects ORDER BY byte_offset").fetchall()


def observation_count(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT count(*) FROM observations").fetchall()[0][0])


# --- 1. repeated keys ------------------------------------------------------------------

REPEATED: list[tuple[bytes, str]] = [
    (HEAD + b',"foo":1,"foo":2}', "repeated key: foo"),
    (
        b'{"schema_version":1,"schema_version":2,"ts":"2026-11-03T23:31:28Z","success":true}',
        "repeated key: schema_version",
    ),
    (HEAD + b',"success":false}', "repeated key: success"),
    (HEAD + b',"b":1,"a":1,"a":2,"b":2}', "repeated key: a"),  # the first to repeat
    (HEAD + b',"fo\\u006f":1,"foo":2}', "repeated key: foo"),  # the same key, spelt twice
    (HEAD + b',"' + b"k" * 300 + b'":1,"' + b"k" * 300 + b'":2}', "repeated key: " + "k" * 80),
]


@pytest.mark.parametrize(("raw", "reason"), REPEATED, ids=[r[:30] for _, r in REPEATED])
def test_repeated_key_is_rejected_and_later_ingests_work(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, raw: bytes, reason: str
) -> None:
    mirror = tmp_path / "m"
    load_history(con, mirror, raw)
    assert run_ids(con) == ["before", "after"]
    assert rejects(con) == [(reason, raw)]
    write_history(mirror, HOST, line(record(ts="2026-11-20T12:00:00Z", run_id="later")))
    assert load.load_mirror(con, mirror).runs_added == 1


def test_nested_repeated_keys_of_unknown_fields_are_kept_verbatim(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """Only the record's own keys must be unique; a repeated top-level key is rejected."""
    load_history(con, tmp_path / "m", HEAD + b',"x":{"a":1,"a":2}}', HEAD + b',"x":1,"x":1}')
    extra = con.execute("SELECT extra FROM runs WHERE run_id = 'x'").fetchall()
    assert extra == [('{"x":{"a":1,"a":2}}',)]
    assert [r[0] for r in rejects(con)] == ["repeated key: x"]


# --- 4. lenient JSON ---------------------------------------------------------------------

LENIENT: list[tuple[bytes, bytes, str]] = [
    # (line, text at the error, Python's description)
    (HEAD + b',"role":"c",}', b"}", "Expecting property name enclosed in double quotes"),
    (HEAD + b',"x":[1,2 ,\t]}', b"]", "Expecting value"),
    (HEAD + b',"f":NaN}', b"NaN", "NaN is not a JSON number"),
    (HEAD + b',"f":Infinity}', b"Infinity", "Infinity is not a JSON number"),
    (HEAD + b',"f":[1,-Infinity]}', b"-Infinity", "-Infinity is not a JSON number"),
    (HEAD + b',"f":nan}', b"nan", "Expecting value"),
    (HEAD + b',"f":-INF}', b"-INF", "Expecting value"),
    # strings after the NaN, quotes escaped, never closed: named in one pass over the line
    (HEAD + b',"f":NaN,"g":"' + b'\\"' * 30_000 + b"}", b"NaN", "NaN is not a JSON number"),
    (HEAD + b',"s":"a\\\\","f":Infinity}', b"Infinity", "Infinity is not a JSON number"),
]


@pytest.mark.parametrize(
    ("raw", "at", "what"), LENIENT, ids=[r.decode()[len(HEAD) :][:30] for r, _, _ in LENIENT]
)
def test_lenient_json_is_rejected_with_its_position(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, raw: bytes, at: bytes, what: str
) -> None:
    lookalike = line(record(ts="2026-11-20T10:30:00Z", run_id="words", role="info ,} NaN ,]"))
    load_history(con, tmp_path / "m", raw, lookalike[:-1])
    assert run_ids(con) == ["before", "words", "after"]  # the same words inside a string load
    column = raw.rindex(at) + 1
    assert rejects(con) == [(f"invalid JSON: {what} at column {column}", raw)]


def test_nan_in_a_pretty_state_file_names_its_line(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    mirror = tmp_path / "m"
    (mirror / HOST).mkdir(parents=True)
    text = '{\n  "schema_version": 1,\n  "ts": "2026-11-20T10:00:00Z",\n  "success": NaN\n}\n'
    (mirror / HOST / "last_run_metadata.json").write_text(text)
    load.load_mirror(con, mirror)
    assert [r[0] for r in rejects(con)] == [
        "invalid JSON: NaN is not a JSON number at line 4 column 14"
    ]


# --- 3. timestamps -----------------------------------------------------------------------

NOT_ISO = ["+99:99", "+00:60", "+24:00", "-99:00", "+14:01", "-12:30", "+1401"]
IMPOSSIBLE = [
    "0000-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
    "1970-01-01T00:30:00+01:00",
    "9999-12-31T23:00:00-12:00",
    "2026-11-03T24:00:00Z",
]


@pytest.mark.parametrize("offset", NOT_ISO)
@pytest.mark.parametrize("field", ["ts", "started_at"])
def test_impossible_offset_is_rejected(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, field: str, offset: str
) -> None:
    value = "2026-11-03T12:00:00" + offset
    raw = line(record(run_id="x", **{field: value}))[:-1]
    load_history(con, tmp_path / "m", raw)
    assert run_ids(con) == ["before", "after"]
    assert rejects(con) == [(f"{field}: not an ISO 8601 timestamp: {value}", raw)]


@pytest.mark.parametrize("value", IMPOSSIBLE)
@pytest.mark.parametrize("field", ["ts", "started_at"])
def test_impossible_time_is_rejected(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, field: str, value: str
) -> None:
    raw = line(record(run_id="x", **{field: value}))[:-1]
    load_history(con, tmp_path / "m", raw)
    assert run_ids(con) == ["before", "after"]
    assert rejects(con) == [(f"{field}: impossible date or time: {value}", raw)]


def test_timestamps_at_the_limits_load_in_utc_and_just_past_them_do_not(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    accepted = {
        "a": ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00"),
        "b": ("2026-01-01T00:00:00+14:00", "2025-12-31T10:00:00"),
        "c": ("2026-01-01T00:00:00-12:00", "2026-01-01T12:00:00"),
        "d": ("2026-01-01T00:00:00+13:45", "2025-12-31T10:15:00"),
        "e": ("2026-01-01T05:30:00.123456789+0530", "2026-01-01T00:00:00.123456"),
        "f": ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59"),
    }
    refused = ["1969-12-31T23:59:59Z", "2026-01-01T00:00:00+14:01", "9999-12-31T23:30:00-00:31"]
    mirror = tmp_path / "m"
    write_history(
        mirror,
        HOST,
        b"".join(line(record(ts=ts, run_id=k)) for k, (ts, _) in accepted.items())
        + b"".join(line(record(ts=ts, run_id=f"no{i}")) for i, ts in enumerate(refused)),
    )
    load.load_mirror(con, mirror)
    got = con.execute(
        "SELECT run_id, strftime(ts AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S.%f') FROM runs"
    ).fetchall()
    assert sorted(got) == sorted(
        (k, utc if "." in utc else utc + ".000000") for k, (_, utc) in accepted.items()
    )
    assert len(rejects(con)) == len(refused)


# --- 5. reasons --------------------------------------------------------------------------

REASONS: list[tuple[bytes, str]] = [
    (
        line(record(duration_s=10**30))[:-1],
        "duration_s: 1000000000000000000000000000000 (outside 0..2147483647)",
    ),
    (
        line(record(exit_code=-(10**25)))[:-1],
        "exit_code: -10000000000000000000000000 (outside 0..255)",
    ),
    (line(record(attempt=10**100))[:-1], f"attempt: {'1' + '0' * 79} (outside 1..2147483647)"),
    (line(record(schema_version=10**20))[:-1], "unsupported schema_version 100000000000000000000"),
    (HEAD + b',"role":"abc}', "invalid JSON: Unterminated string starting at column 84"),
    (HEAD + b',"role":"a\tb"}', "invalid JSON: Invalid control character at column 86"),
    (HEAD + b',"role":"\\ud800"}', "invalid JSON: unpaired surrogate \\ud800 in a string"),
    (b"[" * 100_000, "invalid JSON: nested too deeply to read"),
]


@pytest.mark.parametrize(("raw", "reason"), REASONS, ids=[r for _, r in REASONS])
def test_reason_names_the_problem(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, raw: bytes, reason: str
) -> None:
    load_history(con, tmp_path / "m", raw)
    assert run_ids(con) == ["before", "after"]
    assert rejects(con) == [(reason, raw)]


def test_line_length_limit_counts_the_line_without_its_newline(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    def of_length(n: int, run_id: str) -> bytes:
        short = line(record(run_id=run_id, role=""))[:-1]
        raw = line(record(run_id=run_id, role="r" * (n - len(short))))[:-1]
        assert len(raw) == n
        return raw

    limit = records.MAX_LINE_BYTES
    longest, too_long = of_length(limit, "longest"), of_length(limit + 1, "too-long")
    load_history(con, tmp_path / "m", longest, too_long)
    assert run_ids(con) == ["before", "longest", "after"]
    assert rejects(con) == [(f"line too long: {limit + 1} bytes (limit {limit})", too_long)]


# --- 2. observations ---------------------------------------------------------------------

OBS = b'{"host":"' + HOST.encode() + b'","reachable":true,"observed_at":'
AT = OBS + b'"2026-11-20T13:00:00Z",'  # a valid start: then one bad member
WHEN = "observed_at: impossible date or time: "
NOT_A_TIME = "observed_at: missing or not an ISO 8601 timestamp"
UNPAIRED = "invalid JSON: unpaired surrogate {} in a string"
UPTIME = "uptime_s: {} (outside 0..9223372036854775807)"
BAD_OBSERVATIONS: list[tuple[bytes, str]] = [
    (OBS + b'"2026-02-30T00:00:00Z"}', WHEN + "2026-02-30T00:00:00Z"),
    (OBS + b'"2026-02-03T24:00:00Z"}', WHEN + "2026-02-03T24:00:00Z"),
    (OBS + b'"0000-02-03T00:00:00Z"}', WHEN + "0000-02-03T00:00:00Z"),
    (OBS + b'"1969-12-31T23:00:00Z"}', WHEN + "1969-12-31T23:00:00Z"),
    (OBS + b'"2026-11-03T12:00:00+99:99"}', NOT_A_TIME),
    (OBS + b'"2026-11-03T12:00:00+14:01"}', NOT_A_TIME),
    (AT + b'"uptime_s":100000000000000000000000}', UPTIME.format(10**23)),
    (AT + b'"uptime_s":-1}', UPTIME.format(-1)),
    (AT + b'"os":"\\ud800"}', UNPAIRED.format("\\ud800")),
    (AT + b'"zz":"\\udc00"}', UNPAIRED.format("\\udc00")),
    (AT + b'"state_file":"{\\"a\\":\\"\\ud800\\"}"}', UNPAIRED.format("\\ud800")),
    (AT + b'"zz":NaN}', f"invalid JSON: NaN is not a JSON number at column {len(AT) + 6}"),
    (AT + b'"zz":1e999}', "invalid JSON: a number too large for a double"),
    (AT + b'"zz":' + b"[" * 5000 + b"]" * 5000 + b"}", "invalid JSON: nested too deeply to read"),
    (AT + b'"reachable":false}', "repeated key: reachable"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "reason"), BAD_OBSERVATIONS, ids=[r for _, r in BAD_OBSERVATIONS])
def test_bad_observation_is_rejected_and_the_next_one_loads(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, raw: bytes, reason: str
) -> None:
    load_observations(con, tmp_path / "m", raw)
    assert observation_count(con) == 1
    assert rejects(con) == [(reason, raw)]
    assert con.execute("SELECT count(*) FROM runs").fetchall() == [(0,)]


def test_legacy_summary_with_an_impossible_run_time_gives_no_run(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """The observation loads; the summary counts as one without a run time."""
    raws = []
    for i, last_run in enumerate(["inf", "-inf", "nan", "1e20", "-99999999999", "253402300800"]):
        summary = f"---\ntime:\n  last_run: {last_run}\nevents:\n  failure: 0\n"
        obs = {
            "host": HOST,
            "observed_at": f"2026-11-20T0{i}:00:00Z",
            "reachable": True,
            "legacy_summary": summary,
        }
        raws.append(json.dumps(obs).encode())
    # a count that is not plain ASCII digits means something failed
    odd = "---\ntime:\n  last_run: 1763632800\nevents:\n  failure: \u00b2\n"
    obs = {"host": HOST, "observed_at": "2026-11-20T09:00:00Z", "reachable": True}
    raws.append(json.dumps(obs | {"legacy_summary": odd}).encode())
    load_observations(con, tmp_path / "m", *raws)
    assert observation_count(con) == len(raws) + 1
    assert rejects(con) == []
    assert con.execute("SELECT success, source FROM runs").fetchall() == [(False, "legacy_summary")]


def test_observation_shas_compare_with_runs_in_lower_case(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    mirror = tmp_path / "m"
    write_history(mirror, HOST, line(record(run_id="r", override_sha=OVR_1.upper())))
    obs = {
        "host": HOST,
        "observed_at": "2026-11-20T13:00:00Z",
        "reachable": True,
        "override_sha": OVR_1.replace("1", "A")[:32] + OVR_1[32:],
        "vault_sha": "Permission denied",
    }
    same = dict(
        obs, observed_at="2026-11-20T14:00:00Z", override_sha=OVR_1, vault_sha=VAULT.upper()
    )
    load_observations(con, mirror, json.dumps(obs).encode(), json.dumps(same).encode())
    got = con.execute(
        "SELECT o.override_sha, o.vault_sha, o.override_sha = r.override_sha, "
        "o.vault_sha = r.vault_sha FROM observations o, runs r "
        "WHERE o.observed_at <> TIMESTAMPTZ '2026-11-20 12:00:00+00' "
        "ORDER BY o.observed_at"
    ).fetchall()
    assert got == [
        ("a" * 32 + OVR_1[32:], "Permission denied", False, False),
        (OVR_1, VAULT, True, True),
    ]


# --- the fast path -----------------------------------------------------------------------


def _verdicts(texts: list[str]) -> list[tuple[bool, str | None, bool]]:
    """(fast path took it, slow path's reason, same values) for each line."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    stage_lines(con, texts)
    con.execute("CREATE TEMP TABLE f AS " + records.fast_sql("staged"))
    everything = (
        "(SELECT s.file_idx, sf.host, sf.source, sf.source_path, s.byte_offset, s.line, "
        "s.pre_reason FROM staged s JOIN staged_files sf USING (file_idx))"
    )
    con.execute("CREATE TEMP TABLE s AS " + records.slow_sql(everything))
    cols = [c for c in records.RUN_COLUMNS if c not in ("source", "source_path")]
    same = " AND ".join(f"f.{c} IS NOT DISTINCT FROM s.{c}" for c in cols)
    rows = con.execute(
        f"SELECT f.ok, s.reason, {same} FROM f JOIN s USING (byte_offset) ORDER BY byte_offset"
    ).fetchall()
    return [(bool(a), b, bool(c)) for a, b, c in rows]


def test_fast_path_refuses_lines_the_slow_path_rejects_whole() -> None:
    """The canonical text has each key once, no trailing comma and no NaN or Infinity, so
    the fast path cannot take such lines: the slow path rejects them with their reason."""
    rec = record(run_id="x", duration_s=7)
    canonical = json.dumps(rec, separators=(",", ":"))
    texts = [
        canonical[:-1] + ',"run_id":"x"}\n',
        canonical[:-1] + ",}\n",
        canonical.replace('"duration_s":7', '"duration_s":NaN') + "\n",
        canonical.replace('"duration_s":7', '"duration_s":Infinity') + "\n",
        canonical.replace('"duration_s":7', f'"duration_s":{10**30}') + "\n",
    ]
    got = _verdicts(texts)
    assert [ok for ok, _, _ in got] == [False] * len(texts)
    assert [reason for _, reason, _ in got] == [
        "repeated key: run_id",
        "invalid JSON",  # the loader has Python name it (refine_json_reason)
        "invalid JSON",
        "invalid JSON",
        "duration_s: 1000000000000000000000000000000 (outside 0..2147483647)",
    ]


def test_fast_and_slow_paths_agree_on_timestamp_limits() -> None:
    values = [
        "1970-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z", "9999-12-31T23:00:00-12:00", "2026-01-01T00:00:00+14:00",
        "2026-01-01T00:00:00+14:01", "2026-01-01T24:00:00Z", "2026-01-01T12:00:00+99:99",
    ]  # fmt: skip
    texts = [
        json.dumps(record(run_id=f"r{i}", ts=v, started_at=v), separators=(",", ":")) + "\n"
        for i, v in enumerate(values)
    ]
    got = _verdicts(texts)
    assert [(ok, reason is None) for ok, reason, _ in got] == [
        (True, True), (False, False), (False, False),
        (True, True), (False, False), (True, True),
        (False, False), (False, False), (False, False),
    ]  # fmt: skip
    assert all(same for ok, _, same in got if ok)


# --- end to end --------------------------------------------------------------------------


def test_ingest_of_every_formerly_fatal_line_finishes_without_a_traceback(tmp_path: Path) -> None:
    mirror = tmp_path / "m"
    history = [
        HEAD + b',"foo":1,"foo":2}',
        b"[" * 100_000,
        line(record(run_id="good", ts="2026-11-20T10:00:00Z"))[:-1],
        line(record(run_id="y0", ts="0000-01-01T00:00:00Z"))[:-1],
    ]
    write_history(mirror, HOST, b"".join(r + b"\n" for r in history))
    observations = [
        OBS + b'"2026-02-30T00:00:00Z"}',
        OBS + b'"2026-11-20T13:00:00Z","uptime_s":100000000000000000000000}',
        OBS + b'"2026-11-20T14:00:00Z","legacy_summary":"time:\\n  last_run: inf\\n"}',
        OBS + b'"2026-11-20T15:00:00Z","os":"\\ud800"}',
    ]
    (mirror / HOST / "observations.jsonl").write_bytes(b"".join(r + b"\n" for r in observations))
    db = tmp_path / "wh.duckdb"

    def fs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline", "--db", str(db), *args],
            capture_output=True, text=True, cwd=REPO,
            env={**os.environ, "FLEETSTATE_LOCK_WAIT_S": "1", "COLUMNS": "200"},
        )  # fmt: skip

    done = fs("ingest", "--from", str(mirror))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    shown = fs("history", HOST, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert [r["run_id"] for r in json.loads(shown.stdout)] == ["good"]
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM rejects").fetchall() == [(6,)]
        assert con.execute("SELECT count(*) FROM observations").fetchall() == [(1,)]
    finally:
        con.close()


def test_many_unknown_fields_are_kept_in_order(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """`extra` comes from one parse of the line, however many fields it keeps."""
    rec = record(ts="2026-11-20T10:30:00Z", run_id="wide")
    for i in range(20_000):
        rec[f"k{i}"] = {"n": i} if i % 2 else [i, "x"]
    load_history(con, tmp_path / "m", json.dumps(rec).encode())
    assert run_ids(con) == ["before", "wide", "after"]
    (extra,) = con.execute("SELECT extra FROM runs WHERE run_id = 'wide'").fetchone() or ("",)
    kept = json.loads(extra)
    assert list(kept) == [f"k{i}" for i in range(20_000)]
    assert kept["k19999"] == {"n": 19999} and kept["k0"] == [0, "x"]


def test_a_line_that_is_not_an_object_has_the_same_reason_in_both_files(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    lines = [b"[1]", b'"s"', b"5", b"-5", b"1.5", b"true", b"null"]
    mirror = tmp_path / "m"
    load_history(con, mirror, *lines)
    load_observations(con, mirror, *lines)
    reasons = con.execute(
        "SELECT regexp_extract(source_path, '[^/]*$'), reason FROM rejects ORDER BY byte_offset"
    ).fetchall()
    history = [r for f, r in reasons if f == "history.jsonl"]
    observations = [r for f, r in reasons if f == "observations.jsonl"]
    assert (
        history
        == observations
        == [
            "not a JSON object: " + t
            for t in ("array", "varchar", "ubigint", "bigint", "double", "boolean", "null")
        ]
    )
