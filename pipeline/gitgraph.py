"""The puppet repository's commit graph, read from a local clone into the warehouse.

Rollout counts a descendant of the target as "at" it only once the graph is
known, and the graph walk is SQL over `git_commits` (queries/30, 35). Reading is
`git` run with argument lists (never a shell); saving is plain inserts. Loads are
incremental: commits reachable from the branch tips saved last time are skipped.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa  # type: ignore[import-untyped,unused-ignore]

from pipeline.errors import FleetstateError

# six NUL-terminated fields a commit (git ends each commit with a newline): no field can
# hold a NUL, where any other separator may be in a subject or an author's name
_FIELDS = "%H%x00%P%x00%at%x00%ct%x00%an%x00%s%x00"


class GitError(FleetstateError):
    """The repository cannot be read (not a clone, git missing, git failed)."""


@dataclass(frozen=True)
class Commit:
    sha: str
    parents: list[str]
    author_time: datetime | None  # None: a date Python cannot hold (after 9999, say)
    commit_time: datetime | None
    author: str
    subject: str


@dataclass
class GraphStats:
    commits_added: int
    refs: int
    refs_changed: int


def _git(repo: Path, *args: str, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args],
            input=stdin, capture_output=True, encoding="utf-8", errors="replace",
            check=False, timeout=600,
        )  # fmt: skip
    except FileNotFoundError as exc:
        raise GitError("git is not installed (needed to read the commit graph)") from exc
    except subprocess.TimeoutExpired as exc:
        raise GitError(f"git {args[0]} in {repo} took more than {exc.timeout:g} s") from exc
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["failed"])[0]
        raise GitError(f"git {args[0]} in {repo}: {first}")
    return done.stdout


def fetch_refs(repo: Path) -> dict[str, str]:
    """Branch name -> tip sha for local and remote-tracking branches (origin/HEAD left out)."""
    fmt = "--format=%(objectname) %(refname)"
    out = _git(repo, "for-each-ref", fmt, "refs/heads", "refs/remotes")
    refs = {}
    for line in out.splitlines():
        sha, ref = line.split(" ", 1)
        if ref.endswith("/HEAD"):
            continue
        name = ref.removeprefix("refs/heads/").removeprefix("refs/remotes/")
        refs[name] = sha
    return refs


def existing_commits(repo: Path, shas: list[str]) -> list[str]:
    """The subset of `shas` still in the repository (a rewritten branch may drop some)."""
    if not shas:
        return []
    fmt = "--batch-check=%(objectname) %(objecttype)"
    out = _git(repo, "cat-file", fmt, stdin="\n".join(shas) + "\n")
    return [line.split()[0] for line in out.splitlines() if line.endswith(" commit")]


def fetch_commits(repo: Path, tips: list[str], exclude: list[str]) -> list[Commit]:
    """Commits reachable from `tips` but not from `exclude`, newest first. The revisions go
    on git's stdin: a repository with tens of thousands of branches overflows argv."""
    if not tips:
        return []
    revisions = "\n".join([*tips, *(f"^{sha}" for sha in exclude)]) + "\n"
    out = _git(repo, "log", f"--format={_FIELDS}", "--stdin", stdin=revisions)
    commits = []
    fields = out.split("\x00")
    for i in range(0, len(fields) - 5, 6):
        sha, parents, at, ct, author, subject = fields[i : i + 6]
        commits.append(Commit(
            sha=sha.strip(), parents=parents.split(), author=author, subject=subject,
            author_time=_time(at), commit_time=_time(ct),
        ))  # fmt: skip
    return commits


def _time(epoch: str) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(epoch), UTC)
    except (ValueError, OverflowError, OSError):  # git takes any date; Python up to 9999
        return None


def shallow_commits(repo: Path) -> set[str]:
    """The boundary commits of a shallow clone (their parents are not in it); empty when
    the clone is whole."""
    if _git(repo, "rev-parse", "--is-shallow-repository").strip() != "true":
        return set()
    path = Path(_git(repo, "rev-parse", "--git-path", "shallow").strip())
    try:
        return set((path if path.is_absolute() else repo / path).read_text().split())
    except OSError:
        return set()


def known_tips(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute("SELECT DISTINCT sha FROM git_refs ORDER BY sha").fetchall()
    return [str(r[0]) for r in rows]


def save_graph(
    con: duckdb.DuckDBPyConnection,
    commits: list[Commit],
    refs: dict[str, str],
    shallow: bool = False,
) -> GraphStats:
    """Insert new commits and replace the branch tips, recording tip changes; one transaction.
    `shallow`: the clone read was shallow (the next load reads its whole graph again)."""
    now = datetime.now(UTC)
    con.execute("BEGIN TRANSACTION")
    try:
        before = dict(con.execute("SELECT name, sha FROM git_refs").fetchall())
        n0 = _count(con)
        _insert_commits(con, commits, now)
        changed: list[tuple[str, str | None]] = [
            (n, s) for n, s in refs.items() if before.get(n) != s
        ]
        changed += [(n, None) for n in before if n not in refs]
        for name, sha in changed:
            con.execute("INSERT INTO git_ref_history VALUES (?, ?, ?)", [name, sha, now])
        con.execute("DELETE FROM git_refs")
        for name, sha in refs.items():
            con.execute("INSERT INTO git_refs VALUES (?, ?, ?)", [name, sha, now])
        added = _count(con) - n0
        con.execute(
            "INSERT OR REPLACE INTO meta VALUES ('git_shallow', ?)",
            ["true" if shallow else "false"],
        )
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return GraphStats(commits_added=added, refs=len(refs), refs_changed=len(changed))


def _insert_commits(con: duckdb.DuckDBPyConnection, commits: list[Commit], now: datetime) -> None:
    """Bulk insert through Arrow: a repository has tens of thousands of commits."""
    new_commits = pa.table({
        "sha": [c.sha for c in commits],
        "parents": pa.array([c.parents for c in commits], type=pa.list_(pa.string())),
        "author_time": pa.array([c.author_time for c in commits], type=pa.timestamp("us", "UTC")),
        "commit_time": pa.array([c.commit_time for c in commits], type=pa.timestamp("us", "UTC")),
        "subject": [c.subject for c in commits],
        "author": [c.author for c in commits],
    })  # fmt: skip
    con.register("new_commits", new_commits)
    try:
        con.execute(
            "INSERT INTO git_commits (sha, parents, author_time, commit_time, subject, author, "
            "loaded_at) SELECT *, ? FROM new_commits ON CONFLICT DO NOTHING",
            [now],
        )
        # a shallow clone's boundary commit was stored without parents; deepened, it has them
        con.execute(
            "UPDATE git_commits g SET parents = n.parents FROM new_commits n "
            "WHERE g.sha = n.sha AND len(g.parents) = 0 AND len(n.parents) > 0"
        )
    finally:
        con.unregister("new_commits")


def _count(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT count(*) FROM git_commits").fetchall()[0][0])


def load_graph(con: duckdb.DuckDBPyConnection, repo: Path) -> GraphStats:
    """Read what is new in `repo` since the last load and save it."""
    if not repo.is_dir():
        raise GitError(f"{repo} is not a directory (expected a clone of the puppet repository)")
    refs = fetch_refs(repo)
    shallow = shallow_commits(repo)
    row = con.execute("SELECT value FROM meta WHERE key = 'git_shallow'").fetchall()
    if shallow or (row and row[0][0] == "true"):
        # a shallow clone deepens: its old boundary commits get parents, and commits older
        # than them appear, all below the known tips: read the whole graph again
        exclude = []
    else:
        exclude = existing_commits(repo, known_tips(con))
    commits = fetch_commits(repo, sorted(set(refs.values())), exclude)
    return save_graph(con, commits, refs, shallow=bool(shallow))
