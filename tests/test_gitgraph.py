"""The commit graph loader on a real git repository: content, branches, increments."""

from __future__ import annotations

from pathlib import Path

import pytest
from analytics_support import build_repo, commit, git, open_db
from typer.testing import CliRunner

from pipeline import gitgraph
from pipeline.cli import app


def test_loads_every_commit_with_parents_times_and_subject(tmp_path: Path) -> None:
    s = build_repo(tmp_path / "puppet")
    con = open_db(tmp_path)
    stats = gitgraph.load_graph(con, tmp_path / "puppet")
    assert (stats.commits_added, stats.refs) == (9, 3)
    query = "SELECT sha, parents, epoch(author_time), subject FROM git_commits"
    rows = {r[0]: r[1:] for r in con.execute(query).fetchall()}
    assert rows[s["M"]] == ([s["D"], s["F"]], 1767225600 + 70, "M")
    assert rows[s["A"]][0] == []
    assert rows[s["R"]][2].startswith('Revert "D"')
    at_t = {r[0] for r in con.execute("SELECT sha FROM commits_at(?)", [s["T"]]).fetchall()}
    assert at_t == {s["T"], s["D"], s["M"], s["R"]}


def test_incremental_and_moved_branches(tmp_path: Path) -> None:
    repo = tmp_path / "puppet"
    s = build_repo(repo)
    con = open_db(tmp_path)
    gitgraph.load_graph(con, repo)
    again = gitgraph.load_graph(con, repo)
    assert (again.commits_added, again.refs_changed) == (0, 0)
    new = commit(repo, "N", 100)
    git(repo, "branch", "-D", "hotfix")
    stats = gitgraph.load_graph(con, repo)
    assert (stats.commits_added, stats.refs_changed) == (1, 2)  # main moved, hotfix deleted
    assert con.execute("SELECT name, sha FROM git_refs ORDER BY name").fetchall() == [
        ("feature", s["F"]), ("main", new)]  # fmt: skip
    history = con.execute(
        "SELECT name, sha FROM git_ref_history ORDER BY seen_at, name").fetchall()  # fmt: skip
    assert history[-2:] == [("hotfix", None), ("main", new)]
    # H is no longer on any branch, but stays in the graph
    branches = dict(con.execute("SELECT sha, branches FROM commit_branches").fetchall())
    assert branches[s["H"]] is None and branches[new] == ["main"]


def test_rewritten_branch_is_reread(tmp_path: Path) -> None:
    repo = tmp_path / "puppet"
    s = build_repo(repo)
    con = open_db(tmp_path)
    gitgraph.load_graph(con, repo)
    git(repo, "checkout", "-q", "hotfix")
    git(repo, "reset", "-q", "--hard", s["B"])
    rewritten = commit(repo, "H2", 110)
    git(repo, "reflog", "expire", "--expire=now", "--all")
    git(repo, "gc", "-q", "--prune=now")
    stats = gitgraph.load_graph(con, repo)  # the old hotfix tip no longer exists in the clone
    assert stats.commits_added == 1
    assert con.execute("SELECT parents FROM git_commits WHERE sha = ?", [rewritten]).fetchall() == [
        ([s["B"]],)]  # fmt: skip


def test_command_and_errors(tmp_path: Path) -> None:
    build_repo(tmp_path / "puppet")
    db = str(tmp_path / "fleet.duckdb")
    ok = CliRunner().invoke(app, ["--db", db, "ingest-git", str(tmp_path / "puppet")])
    assert ok.exit_code == 0 and "9 new commits, 3 branches" in ok.stderr
    (tmp_path / "empty").mkdir()
    with pytest.raises(gitgraph.GitError, match="git for-each-ref"):
        gitgraph.load_graph(open_db(tmp_path / "empty"), tmp_path / "empty")
