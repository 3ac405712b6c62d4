"""The loader's fast path must agree with the slow path (the full parser) on every line.

records.fast_sql accepts a line only when it can prove, cheaply, that records.slow_sql
would accept it with the same values. These tests feed both the same generated lines
(valid records, wrong types, unknown and repeated keys, escapes, whitespace, nested
look-alikes, odd numbers) and check that claim, then check the loader end to end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
from factories import stage_lines
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeline import load, records, warehouse

GOOD: dict[str, Any] = {
    "schema_version": 1,
    "ts": "2026-01-29T10:30:45Z",
    "success": True,
    "exit_code": 2,
    "git_repo": "https://github.com/mozilla-platform-ops/ronin_puppet.git",
    "git_branch": "master",
    "git_sha": "2052e52bdc36fc902248cd706ca4a1a9f5b19f71",
    "override_sha": None,
    "vault_sha": "dab455f2009f46dff1f76a38063eed826e55d7b3cfb067c4b9da42d6e1111d7a",
    "override_path": "/etc/puppet/ronin_settings",
    "role": "gecko_t_linux_talos",
    "duration_s": 213,
    "git_dirty": False,
    "vault_path": "/root/vault.yaml",
    "host": "t-linux64-ms-001.test.releng.mdc1.mozilla.com",
    "run_id": "0b7f3c52-9d7e-4c55-9a38-0c1f4c8d2f10",
    "started_at": "2026-01-29T10:27:12Z",
    "attempt": 1,
    "stage": "puppet",
    "os": "Linux",
    "wrapper_version": "1.1.0",
}
ODD_VALUES = [
    None, True, False, 0, 1, 7, 255, 256, -1, 2**63, 2**64, 1.0, 1.5, "1e2", "", "null",
    "true", "12", "x", "é", "a\"b", "a\\b", "a/b", "\u2028", {"a": None}, [1, "b"], {},
    "2026-02-30T10:00:00Z", "2026-01-29T10:30:45.123+01:00", "ABCDEF" * 7, "0" * 40,
]  # fmt: skip
RAW_NUMBERS = ["1e2", "-0", "1.0", "100", "1E2", "0", "2", "300"]


@st.composite
def lines(draw: st.DrawFn) -> str:
    """One line: a record with some fields changed, dropped, repeated or respelled."""
    members: list[tuple[str, str]] = []
    rarity = draw(st.sampled_from([10_000, 80, 25, 9]))  # most lines are nearly right
    for name, value in GOOD.items():
        choice = draw(st.integers(0, rarity))
        if choice == 0:
            continue  # dropped
        if choice == 1:
            value = draw(st.sampled_from(ODD_VALUES))
        text = json.dumps(value, ensure_ascii=draw(st.booleans()), separators=(",", ":"))
        if choice == 2 and isinstance(value, int) and not isinstance(value, bool):
            text = draw(st.sampled_from(RAW_NUMBERS))
        members.append((name, text))
        if choice == 3:
            members.append((name, json.dumps(draw(st.sampled_from(ODD_VALUES)))))
    if draw(st.integers(0, 6)) == 0:
        key = draw(st.sampled_from(["extra", "", "git_sha", "x" * 9, "override_sha"]))
        inner = draw(st.sampled_from(['{"override_sha":null}', '"v"', "null", "1", '""', '"ab"']))
        at = draw(st.integers(0, len(members)))
        members.insert(at, (key if draw(st.booleans()) else "u", inner))
        if draw(st.booleans()):
            members.insert(at, ("n", '{"' + key + '":null}'))
    sep = draw(st.sampled_from([",", ",", ",", ", "]))
    colon = draw(st.sampled_from([":", ":", ":", ": "]))
    body = "{" + sep.join(f"{json.dumps(k)}{colon}{v}" for k, v in members) + "}"
    return body + draw(st.sampled_from(["\n", "\n", "", "\r\n", " \n"]))


def _compare(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """(lines the fast path took, lines where the paths disagree)."""
    con.execute("CREATE OR REPLACE TEMP TABLE f AS " + records.fast_sql("staged"))
    everything = (
        "(SELECT s.file_idx, sf.host, sf.source, sf.source_path, s.byte_offset, s.line, "
        "s.pre_reason FROM staged s JOIN staged_files sf USING (file_idx))"
    )
    con.execute("CREATE OR REPLACE TEMP TABLE s AS " + records.slow_sql(everything))
    fcols = ", ".join(
        ("sf." if c in ("source", "source_path") else "f.") + c for c in records.RUN_COLUMNS
    )
    scols = ", ".join("s." + c for c in records.RUN_COLUMNS)
    row = con.execute(
        f"""
        SELECT count(*) FILTER (WHERE f.ok),
               count(*) FILTER (WHERE f.ok AND (s.reason IS NOT NULL
                   OR row({fcols}) IS DISTINCT FROM row({scols})))
        FROM f JOIN staged_files sf USING (file_idx) JOIN s USING (byte_offset)
        """  # noqa: S608 -- fixed column names
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_fast_path_takes_wrapper_lines() -> None:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    good = json.dumps(GOOD, separators=(",", ":")) + "\n"
    old = json.dumps({k: GOOD[k] for k in records.SEED_FIELDS}, separators=(",", ":")) + "\n"
    stage_lines(con, [good, old, good.replace("213", "0")])
    taken, disagree = _compare(con)
    assert (taken, disagree) == (3, 0)


def test_fast_path_leaves_lookalikes_to_the_slow_path() -> None:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    base = json.dumps(GOOD, separators=(",", ":"))
    tricky = [
        base[:-1] + ',"extra":1}\n',  # unknown key: kept in `extra` by the slow path
        base[:-1] + ',"role":"x"}\n',  # repeated key
        base.replace(":", ": ") + "\n",  # whitespace
        base.replace('"exit_code":2', '"exit_code":1e2') + "\n",
        base.replace('"master"', '"ma\\u0073ter"') + "\n",  # escape
        base.replace('"override_sha":null,', "") [:-1] + ',"n":{"override_sha":null}}\n',
    ]  # fmt: skip
    stage_lines(con, tricky)
    taken, disagree = _compare(con)
    assert (taken, disagree) == (0, 0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lines(), min_size=1, max_size=12))
def test_fast_path_agrees_with_slow_path(texts: list[str]) -> None:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    stage_lines(con, texts)
    taken, disagree = _compare(con)
    assert disagree == 0
    event(f"fast path took {'none' if taken == 0 else 'all' if taken == len(texts) else 'some'}")


def test_loader_runs_and_rejects_match_the_slow_path(tmp_path: Path) -> None:
    """End to end: what load_mirror stores equals the slow parser's verdict on every line."""
    base = json.dumps(GOOD, separators=(",", ":"))
    texts = [
        base + "\n",
        base + "\n",  # repeat: stored once
        base.replace("0b7f", "1b7f")[:-1] + ',"extra":{"a":1}}\n',
        '{"schema_version":1,"ts":"2026-01-29T10:30:45Z","success":"yes"}\n',
        "Error: Could not run\n",
        base.replace("0b7f", "2b7f"),  # unterminated: left for next time
    ]
    host = tmp_path / "mirror" / "h1"
    host.mkdir(parents=True)
    (host / "history.jsonl").write_text("".join(texts))
    con = warehouse.connect(tmp_path / "w.duckdb")
    stats = load.load_mirror(con, tmp_path / "mirror")
    assert (stats.runs_added, stats.rejects_added) == (2, 2)
    assert stats.pending_bytes == len(texts[-1])
    extra = con.execute("SELECT extra FROM runs WHERE extra IS NOT NULL").fetchall()
    assert [json.loads(e[0]) for e in extra] == [{"extra": {"a": 1}}]
    reasons = sorted(r[0] for r in con.execute("SELECT reason FROM rejects").fetchall())
    assert reasons[0].startswith("invalid JSON")
    assert reasons[1] == "success: expected true or false, got varchar"


def test_yes_no_rules_match_the_reasons() -> None:
    """records._valid_sql is true exactly when records._reason_sql gives no reason."""
    types = [None, "NULL", "VARCHAR", "BOOLEAN", "UBIGINT", "BIGINT", "DOUBLE", "OBJECT", "ARRAY"]
    values = [
        None, "", "null", "true", "false", "0", "1", "2", "255", "256", "-1", "x", "1.5",
        "9223372036854775808", "a" * 40, "A1" * 20, "0" * 64, "0" * 39, "2026-01-29T10:30:45Z",
        "2026-02-30T10:30:45Z", "2026-01-29T10:30:45.5+01:00", "2026-01-29 10:30:45",
    ]  # fmt: skip
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE TABLE tv (t VARCHAR, v VARCHAR)")
    # both paths give a value exactly when the JSON type is neither absent nor null
    pairs = [(t, v) for t in types for v in values if (t in (None, "NULL")) == (v is None)]
    con.executemany("INSERT INTO tv VALUES (?, ?)", pairs)
    for f in records.FIELDS:
        valid, reason = records._valid_sql(f, "t", "v"), records._reason_sql(f, "t", "v")
        bad = con.execute(
            f"SELECT t, v FROM tv WHERE ({valid}) IS DISTINCT FROM (({reason}) IS NULL)"
        ).fetchall()
        assert bad == [], (f.name, bad)


def test_bytes_read_counts_a_file_that_spans_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(load, "BATCH_BYTES", 4096)
    line = json.dumps(GOOD, separators=(",", ":")).encode() + b"\n"
    host = tmp_path / "mirror" / "h1"
    host.mkdir(parents=True)
    body = b"".join(line.replace(b"0b7f", f"{i:04x}".encode()) for i in range(60))
    (host / "history.jsonl").write_bytes(body + b'{"unfinished')
    con = warehouse.connect(tmp_path / "w.duckdb")
    stats = load.load_mirror(con, tmp_path / "mirror")
    assert (stats.bytes_read, stats.pending_bytes, stats.runs_added) == (len(body), 12, 60)


def test_pieces_cut_at_newlines_keep_every_line_and_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines longer than a read piece and an unterminated tail: each complete line loads
    once, at its own byte offset."""
    monkeypatch.setattr(load, "BATCH_BYTES", 4096)  # pieces of 1,024 bytes
    lines = []
    for i, role in enumerate(["r" * 3000, "a", "b" * 1024, "c" * 200, "d" * 5000]):
        rec = GOOD | {"role": role, "run_id": f"id-{i}"}
        lines.append(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
    host = tmp_path / "mirror" / "h1"
    host.mkdir(parents=True)
    (host / "history.jsonl").write_bytes(b"".join(lines) + b'{"unfinished')
    con = warehouse.connect(tmp_path / "w.duckdb")
    stats = load.load_mirror(con, tmp_path / "mirror")
    got = con.execute("SELECT run_id, byte_offset, strlen(role) FROM runs ORDER BY 2").fetchall()
    offsets = [sum(len(x) for x in lines[:i]) for i in range(len(lines))]
    assert got == [(f"id-{i}", offsets[i], len(json.loads(lines[i])["role"])) for i in range(5)]
    assert (stats.bytes_read, stats.pending_bytes) == (sum(map(len, lines)), 12)
    # the tail completes later: only the new line is read and loaded
    with (host / "history.jsonl").open("ab") as fh:
        fh.write(b"\n")
    stats = load.load_mirror(con, tmp_path / "mirror")
    assert (stats.bytes_read, stats.rejects_added, stats.runs_added) == (13, 1, 0)


def test_unhex_takes_exactly_the_hex_digits() -> None:
    """The fast path checks shas with unhex instead of the slow path's regular expression:
    both must take the same characters."""
    con = duckdb.connect()
    chars = [chr(c) for c in [*range(1, 0x3000), 0xFEFF, 0xFF10, 0xFF21, 0x1D7CE, 0x10FFFF]]
    row = con.execute(
        "SELECT list_filter(?, lambda c: (TRY(unhex(c || c)) IS NOT NULL) "
        "<> regexp_full_match(c, '[0-9a-fA-F]'))",
        [chars],
    ).fetchone()
    assert row is not None and row[0] == []
    assert con.execute("SELECT TRY(unhex('0A') ) IS NOT NULL").fetchone() == (True,)


def test_pieces_with_non_ascii_text_stay_zero_copy_and_bad_utf8_is_rejected(
    tmp_path: Path,
) -> None:
    good = json.dumps(GOOD | {"role": "gecko_tëst_☃"}, ensure_ascii=False).encode() + b"\n"
    batch = load.Batch()
    [piece] = load._split_lines(0, memoryview(good + good))
    table = load._lines_table(batch, 0, 0, piece.data, piece.ends)
    assert table.num_rows == 2 and table.column("pre_reason").null_count == 2
    assert batch.raw_rejects == {}
    bad = b'{"role":"\xff"}\n'
    [piece] = load._split_lines(0, memoryview(good + bad))
    table = load._lines_table(batch, 0, 0, piece.data, piece.ends)
    assert table.column("pre_reason").to_pylist() == [None, "invalid UTF-8 at byte 9"]
    assert batch.raw_rejects == {(0, len(good)): bad[:-1]}
