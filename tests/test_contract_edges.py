"""Review against shared/contract.md: one test per deviation found, each failing on HEAD.

Real parts only: a real DuckDB file in tmp_path, the real loader (`ingest --from`) and
the real `fleetstate` process (tests/clirun.py). No test depends on wall time beyond
"a run an hour ago is within the 24 h window".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from clirun import REPO, fs
from factories import SHA_A, SHA_B, ago, line, record, write_history


def _ingest(db: Path, mirror: Path) -> None:
    done = fs(db, "ingest", "--from", str(mirror))
    assert done.returncode == 0, done.stderr


def test_history_lists_every_run_of_the_host(tmp_path: Path) -> None:
    """Contract 2: `fleetstate history HOST` is "the runs of one host, newest first".
    HEAD shows only the newest 50 (`--limit` defaults to 50) and says nothing about the
    rest, so `--format json` hands a script a silently truncated history."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    runs = b"".join(
        line(record(ago(hours=100 - i), run_id=f"r{i:03d}", git_sha=SHA_A)) for i in range(60)
    )
    write_history(mirror, "h1.example.com", runs)
    _ingest(db, mirror)
    stored = json.loads(fs(db, "sql", "SELECT count(*) AS n FROM runs", "-f", "json").stdout)
    assert stored == [{"n": 60}]

    shown = fs(db, "history", "h1.example.com", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert [r["run_id"] for r in rows] == [f"r{i:03d}" for i in reversed(range(60))], (
        f"history printed {len(rows)} of the host's 60 runs"
    )


def test_rollout_summary_pct_converged_is_converged_over_hosts_times_100(tmp_path: Path) -> None:
    """Contract 3: "pct_converged = converged / hosts in scope x 100". HEAD's
    rollout_summary() rounds it to one decimal (queries/38_status_counts.sql), so 1 of 3
    hosts reads 33.3, not 33.33...; a SQL user gating on `pct_converged >= 33.3` passes
    a rollout that is below 33.3 %."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "a", line(record(ago(hours=1), git_sha=SHA_A, run_id="a1")))
    write_history(mirror, "b", line(record(ago(hours=1), git_sha=SHA_B, run_id="b1")))
    write_history(mirror, "c", line(record(ago(hours=1), git_sha=SHA_B, run_id="c1")))
    _ingest(db, mirror)

    done = fs(
        db, "sql", f"SELECT hosts, converged, pct_converged FROM rollout_summary('{SHA_A}')",
        "--format", "json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert (row["hosts"], row["converged"]) == (3, 1)
    assert abs(row["pct_converged"] - 100 / 3) < 1e-9, row["pct_converged"]


def test_rollout_sha_not_of_the_documented_form_is_a_usage_error(tmp_path: Path) -> None:
    """Contract 2: SHA is "full sha or a unique prefix of at least 7 hex"; exit codes are
    "1 error ...; 2 usage". An argument that is not of that form is a usage error, as
    HEAD itself treats a malformed --since or --filter (exit 2); HEAD exits 1 for it."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "a", line(record(ago(hours=1), git_sha=SHA_A, run_id="a1")))
    _ingest(db, mirror)
    assert fs(db, "drift", "--since", "soon").returncode == 2  # the CLI's own usage rule

    for bad in ("aaaaaa", "not-a-sha", "a" * 41):
        done = fs(db, "rollout", bad)
        assert "Traceback" not in done.stderr
        assert done.returncode == 2, (bad, done.returncode, done.stderr)


def test_ingest_target_host_name_is_not_taken_for_a_directory_of_that_name(
    tmp_path: Path,
) -> None:
    """Contract 2: "TARGETs are host names or host-list files". A bare host name is read
    as a host-list file whenever a path of that name exists in the working directory, a
    directory included (pipeline/targets.py _looks_like_file): run from inside the
    mirror, which holds a directory per host, `ingest web1` stops with exit 1 'cannot
    read host list web1: Is a directory' and collects nothing. The host must be tried
    (here: its SSH port is closed, so it is recorded unreachable and ingest exits 4)."""
    work = tmp_path / "mirror"
    (work / "web1").mkdir(parents=True)  # what the collector leaves for host web1
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host *\n  HostName 127.0.0.1\n  Port 1\n")
    db = tmp_path / "wh.duckdb"
    env = {**os.environ, "HOME": str(tmp_path), "FLEETSTATE_LOCK_WAIT_S": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--db", str(db), "ingest", "web1",
         "--mirror", str(work), "--ssh-config", str(ssh_config),
         "--known-hosts", str(tmp_path / "known_hosts"),
         "--connect-timeout", "2", "--retries", "0"],
        capture_output=True, text=True, cwd=work, env={**env, "PYTHONPATH": str(REPO)},
        timeout=120,
    )  # fmt: skip
    assert "host list" not in done.stderr, done.stderr
    assert done.returncode == 4, (done.returncode, done.stderr)
    seen = fs(db, "sql", "SELECT host, reachable FROM observations", "--format", "json")
    assert json.loads(seen.stdout) == [{"host": "web1", "reachable": False}]
