"""Helpers for the analytics tests (no tests here): a real git repository and hand-written runs."""

from __future__ import annotations

import os
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from pipeline import warehouse


def git(repo: Path, *args: str, when: int = 0) -> str:
    """Run git in `repo` with a fixed identity and clock (`when` seconds after 2026-01-01)."""
    stamp = f"{1767225600 + when} +0000"
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp,
        "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_SYSTEM": "/dev/null",
    }  # fmt: skip
    done = subprocess.run(
        ["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def commit(repo: Path, name: str, when: int) -> str:
    """A commit touching file `name`, with subject `name`; returns its sha."""
    (repo / name).write_text(name + "\n")
    git(repo, "add", name, when=when)
    git(repo, "commit", "-q", "-m", name, when=when)
    return git(repo, "rev-parse", "HEAD")


def build_repo(repo: Path) -> dict[str, str]:
    """The graph every analytics test uses (time flows left to right):

        A - B - T - D ------ M - R        main   (M merges feature, R reverts D)
             \\            /
              E ------- F                 feature
             \\
              H                           hotfix (pointed to by an override)
    """
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    shas = {"A": commit(repo, "A", 10), "B": commit(repo, "B", 20)}
    git(repo, "checkout", "-q", "-b", "feature")
    shas["E"] = commit(repo, "E", 30)
    git(repo, "checkout", "-q", "main")
    shas["T"] = commit(repo, "T", 40)
    shas["D"] = commit(repo, "D", 50)
    git(repo, "checkout", "-q", "feature")
    shas["F"] = commit(repo, "F", 60)
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "-m", "M", "feature", when=70)
    shas["M"] = git(repo, "rev-parse", "HEAD")
    git(repo, "revert", "--no-edit", shas["D"], when=80)
    shas["R"] = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "hotfix", shas["B"])
    shas["H"] = commit(repo, "H", 90)
    git(repo, "checkout", "-q", "main")
    return shas


def open_db(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    return warehouse.connect(tmp_path / "fleet.duckdb")


def add_run(
    con: duckdb.DuckDBPyConnection, host: str, ts: datetime, sha: str | None, ok: bool = True,
    exit_code: int | None = None, role: str | None = "web", **more: Any,
) -> None:  # fmt: skip
    """One run as the loader would store it (only the columns analytics reads matter)."""
    row: dict[str, Any] = {
        "host": host, "run_id": str(uuid.uuid4()), "ts": ts, "success": ok,
        "exit_code": (2 if ok else 1) if exit_code is None else exit_code,
        "role": role, "git_sha": sha, "source": "history", "loaded_at": ts,
        "stage": "puppet", **more,
    }  # fmt: skip
    cols = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    con.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", list(row.values()))  # noqa: S608


def hour_base(hours_ago: int = 20) -> datetime:
    """A whole hour `hours_ago` before now, so runs after it are within the staleness window."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return now - timedelta(hours=hours_ago)


def at(base: datetime, hours: float) -> datetime:
    return base + timedelta(hours=hours, minutes=10)


def write_fleet(con: duckdb.DuckDBPyConnection, s: dict[str, str], base: datetime) -> None:
    """Target T first runs at base+0h10m (h1). Hours below are offsets from that."""
    web, db = "web", "db"
    add_run(con, "h1", at(base, 0), s["T"], role=web)
    add_run(con, "h2", at(base, -1), s["B"], role=web)
    add_run(con, "h2", at(base, 2), s["T"], role=web)
    add_run(con, "h2", at(base, 5), s["M"], role=web)  # merge: a descendant of T
    add_run(con, "h3", at(base, -1), s["B"], role=web)
    add_run(con, "h3", at(base, 1), s["T"], role=web)
    add_run(con, "h3", at(base, 3), s["H"], role=web, git_branch="hotfix", override_sha="o" * 64)
    add_run(con, "h4", at(base, 1), s["T"], role=db)
    add_run(con, "h4", at(base, 4), s["R"], ok=False, exit_code=1, role=db)  # revert: descendant
    add_run(con, "h4", at(base, 6), s["R"], ok=False, exit_code=1, role=db)
    add_run(con, "h5", at(base, -1), s["B"], role=db)
    add_run(con, "h5", at(base, 3), s["E"], role=db, git_branch="feature", override_sha="f" * 64)
    add_run(con, "h6", at(base, -10), s["B"], role=db)  # 30 h before now: stale
    add_run(con, "h7", at(base, 2), s["D"], ok=False, exit_code=6, role=db)
    add_run(con, "h7", at(base, 8), s["D"], role=db)
    add_run(con, "h8", at(base, 10), s["R"], role=web)
    add_run(con, "h9", at(base, -1), s["B"], role=db)
    add_run(con, "h9", at(base, 2), s["T"], ok=False, exit_code=4, role=db)
    add_run(con, "h9", at(base, 3), s["B"], role=db)
