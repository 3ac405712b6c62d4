"""What the real wrapper writes, the real loader reads: zero rejects, every field as written,
and the state file and its history line are one run."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
from wrapper_helpers import LINUX_SCRIPT, MACOS_SCRIPT, make_host

from pipeline import load


def test_wrapper_records_load_with_zero_rejects(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    host = make_host(tmp_path / "host")
    cases = [{"FAKE_PUPPET_RC": str(rc)} for rc in (0, 2, 1, 4, 6)]
    for case in cases:
        proc = host.run(LINUX_SCRIPT, **case)
        assert proc.returncode == int(case["FAKE_PUPPET_RC"]), proc.stderr
    host.run(MACOS_SCRIPT, FAKE_PUPPET_RC="0")
    host.role_file.unlink()  # a prepare-stage failure: puppet never starts
    host.run(LINUX_SCRIPT, PUPPET_SINGLE_ATTEMPT="1")
    written = host.history_records()
    assert len(written) >= 7

    mirror = tmp_path / "mirror" / "h1"
    mirror.mkdir(parents=True)
    shutil.copy(host.history, mirror / "history.jsonl")
    shutil.copy(host.state, mirror / "last_run_metadata.json")
    stats = load.load_mirror(con, tmp_path / "mirror")

    assert con.execute("SELECT count(*) FROM rejects").fetchall() == [(0,)]
    assert stats.runs_added == len(written)  # the state file repeats the last line: one run
    rows = con.execute(
        "SELECT run_id, success, exit_code, git_sha, role, stage, os, attempt, duration_s, "
        "override_sha, vault_sha, git_branch, reported_host FROM runs ORDER BY ts, attempt, run_id"
    ).fetchall()
    by_id = {r[0]: r for r in rows}
    for rec in written:
        row = by_id[rec["run_id"]]
        assert row[1:] == (
            rec["success"], rec["exit_code"], rec["git_sha"], rec["role"], rec["stage"],
            rec["os"], rec["attempt"], rec["duration_s"], rec["override_sha"], rec["vault_sha"],
            rec["git_branch"], rec["host"],
        )  # fmt: skip
    assert {r[5] for r in rows} == {"puppet", "prepare"}
