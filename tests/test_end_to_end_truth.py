"""End to end, against ground truth: the REAL wrapper on simulated hosts, the real collector.

A small puppet repository (master with commits B, S, S2; branch `canary` forked at B) is
applied by wrapper/run-puppet-linux.sh run inside each simulated host's own mount
namespace (nsenter into its sshd's namespace: the host's /etc/puppet, /var/log, /root
and /etc/puppet_role, at their real paths), with a fake `puppet` that exits as scripted
and notes what it saw (the checkout's HEAD, the override and vault it read). A `date`
shim dates the first round two days back (the silent host never runs again). Then a
rollout plays out: S is pushed, most hosts apply it, one fails (two attempts), one
returns 2, one follows an override to `canary`, one has its override changed but not
applied, one points at a branch that does not exist (prepare), one is re-imaged (history
restarted; its first attempt after that has no role: prepare), one's history rotates;
the silent host's sshd is down at the last collection. `fleetstate ingest` (a process,
over SSH), `ingest-git`, `ingest-workers` (a loopback fake of Taskcluster's queue), then
every answer of status, rollout, history and drift is checked against the script.

Needs root, sshd, unshare and nsenter (skipped otherwise, with the reason).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from clirun import fs  # noqa: E402
from factories import JsonHandler  # noqa: E402
from sshfleet import HISTORY, Fleet, SimHost, skip_reason  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WRAPPER = REPO / "wrapper" / "run-puppet-linux.sh"


def _skip() -> str | None:
    why = skip_reason()
    if why is None and not shutil.which("nsenter"):
        why = "missing tool: nsenter"
    if why is None and not shutil.which("git"):
        why = "missing tool: git"
    return why


SKIP = _skip()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=f"simulated fleet unavailable: {SKIP}")

VAULT = b"vault_password: e2e-secret-never-leaves-the-host-7781\n"
VAULT_MARK = b"e2e-secret-never-leaves-the-host-7781"
GIT_ID = ["-c", "user.email=t@example.com", "-c", "user.name=test"]
STATE = "/etc/puppet/last_run_metadata.json"
OVERRIDE = "/etc/puppet/ronin_settings"
WORKDIR = "/etc/puppet/environments/ronin_puppet"

# A puppet that notes what it ran on (HEAD of its cwd, the override and the vault copy it
# read, its role), then exits as scripted by FAKE_PUPPET_RC.
FAKE_PUPPET = r"""#!/bin/bash
head=$(git -C . -c safe.directory='*' rev-parse HEAD 2>/dev/null)
ov=$(sha256sum < "$PUPPET_OVERRIDE_FILE" 2>/dev/null | cut -d' ' -f1)
[ -f "$PUPPET_OVERRIDE_FILE" ] || ov=""
va=$(sha256sum < ./data/secrets/vault.yaml | cut -d' ' -f1)
printf '{"head":"%s","override_sha":"%s","vault_sha":"%s","role":"%s","rc":%s}\n' \
    "$head" "$ov" "$va" "$FACTER_puppet_role" "${FAKE_PUPPET_RC:-0}" >> "$FAKE_PUPPET_LOG"
echo "fake puppet applied $head"
exit "${FAKE_PUPPET_RC:-0}"
"""

# date(1), except that `date -u +%s` answers FAKE_EPOCH when it is set (the wrapper's clock).
DATE_SHIM = r"""#!/bin/bash
if [ -n "${FAKE_EPOCH:-}" ] && [ "$*" = "-u +%s" ]; then echo "$FAKE_EPOCH"; exit 0; fi
exec /usr/bin/date "$@"
"""


def git(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(
        ["git", *GIT_ID, *args], cwd=cwd, check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def commit(repo: Path, name: str) -> str:
    (repo / "manifests" / f"{name}.pp").write_text(f"# {name}\n")
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", name, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo)


@dataclass
class Expected:
    """One attempt as scripted: what its record must say."""

    sha: str | None
    branch: str
    exit_code: int | None
    stage: str
    attempt: int
    role: str | None
    override_sha: str | None = None  # sha256 of the override file the attempt read


@dataclass
class World:
    base: Path
    fleet: Fleet
    upstream: Path
    db: Path
    mirror: Path
    shas: dict[str, str]
    runs: dict[str, list[Expected]] = field(default_factory=dict)
    puppet_saw: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    ingests: list[subprocess.CompletedProcess[str]] = field(default_factory=list)
    windows: list[tuple[datetime, datetime]] = field(default_factory=list)
    worker_now: datetime = field(default_factory=lambda: datetime.now(UTC))
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    overrides_at_end: dict[str, bytes | None] = field(default_factory=dict)

    def host(self, short: str) -> SimHost:
        return self.fleet.hosts[fqdn(short)]

    def run_wrapper(
        self, short: str, *, rc: int = 0, epoch: int | None = None, attempts: int = 1
    ) -> subprocess.CompletedProcess[str]:
        h = self.host(short)
        assert h.proc is not None
        log = self.base / "puppet_saw" / f"{short}.jsonl"
        log.parent.mkdir(exist_ok=True)
        env = {
            "PATH": f"{self.base / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "PUPPET_DEFAULT_REPO": f"file://{self.upstream}",
            "PUPPET_DEFAULT_BRANCH": "master",
            "PUPPET_STATE_HOST": fqdn(short),
            "PUPPET_RETRY_DELAY_S": "0",
            "PUPPET_MAX_ATTEMPTS": str(attempts),
            "PUPPET_RUN_HISTORY_MAX_BYTES": "3500",
            "FAKE_PUPPET_RC": str(rc),
            "FAKE_PUPPET_LOG": str(log),
        }
        if epoch is not None:
            env["FAKE_EPOCH"] = str(epoch)
        out = subprocess.run(
            ["nsenter", "-t", str(h.proc.pid), "-m", "--", "/bin/bash", str(WRAPPER)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        return out

    def ingest(self, *names: str) -> subprocess.CompletedProcess[str]:
        before = datetime.now(UTC)
        out = fs(
            self.db, "ingest", *[fqdn(n) for n in names], "--mirror", str(self.mirror),
            "--ssh-config", str(self.fleet.ssh_config),
            "--known-hosts", str(self.fleet.known_hosts),
            "--timeout", "30", "--connect-timeout", "5", "--retries", "0",
        )  # fmt: skip
        self.ingests.append(out)
        self.windows.append((before, datetime.now(UTC)))
        return out


def fqdn(short: str) -> str:
    return f"{short}.fleet.test"


TOKEN = "ghp-e2e-deploy-token-5150"
# a private fork reached with a deploy token (port 1: the fetch fails at once, offline)
TOKEN_OVERRIDE = (
    f'PUPPET_REPO="https://deploy:{TOKEN}@127.0.0.1:1/ops/puppet.git"\n'
    'PUPPET_BRANCH="no-such-branch"\n'
).encode()

NAMES = ["a1", "a2", "fail", "canary", "silent", "chg", "badbr", "reimg"]
ROLE = "gecko_t_linux_talos"


def override(repo: Path, branch: str) -> bytes:
    return f'PUPPET_REPO="file://{repo}"\nPUPPET_BRANCH="{branch}"\nPUPPET_MAIL="ops@example.com"\n'.encode()


class _Queue(JsonHandler):
    workers: list[dict[str, Any]] = []

    def do_GET(self) -> None:  # noqa: N802
        self.send_json({"workers": self.workers})


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def build(base: Path) -> Iterator[World]:  # noqa: PLR0915 - one script, read top to bottom
    bindir = base / "bin"
    bindir.mkdir(parents=True)
    for name, text in (("puppet", FAKE_PUPPET), ("date", DATE_SHIM)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)

    # the puppet code: master B, then (later) S and S2; canary forked at B with C
    upstream = base / "upstream"
    git("init", "-q", "-b", "master", str(upstream))
    (upstream / "manifests").mkdir()
    (upstream / "modules").mkdir()
    (upstream / "modules" / ".keep").write_text("")
    shas = {"A": commit(upstream, "A"), "B": commit(upstream, "B")}
    git("checkout", "-q", "-b", "canary", cwd=upstream)
    shas["C"] = commit(upstream, "C")
    git("checkout", "-q", "master", cwd=upstream)

    fleet = Fleet(base / "fleet")
    for short in NAMES:
        h = fleet.add(fqdn(short))
        h.write("/etc/puppet_role", f"{ROLE}\n")
        h.write("/root/vault.yaml", VAULT)
        if short != "a2":  # a2 runs the default configuration: no override file
            h.write(OVERRIDE, override(upstream, "master"))
    fleet.start()
    w = World(base, fleet, upstream, base / "fs.duckdb", base / "mirror", shas)
    for short in NAMES:
        w.runs[short] = []
    try:
        yield from _play(w)
    finally:
        fleet.stop()


def _play(w: World) -> Iterator[World]:  # noqa: PLR0915
    shas, up = w.shas, w.upstream
    two_days_ago = int(time.time()) - 50 * 3600

    def ran(short: str, out: subprocess.CompletedProcess[str], *exp: Expected) -> None:
        ov = w.host(short).path(OVERRIDE)
        for e in exp:
            e.override_sha = sha256(ov.read_bytes()) if ov.exists() else None
        w.runs[short].extend(exp)
        rc = exp[-1].exit_code if exp[-1].exit_code is not None else 1
        assert out.returncode == rc, (short, out.returncode, out.stderr)

    # --- round 0, two days ago: everyone applies B from master
    for short in NAMES:
        out = w.run_wrapper(short, epoch=two_days_ago)
        ran(short, out, Expected(shas["B"], "master", 0, "puppet", 1, ROLE))
    first = w.ingest(*NAMES)
    assert first.returncode == 0, first.stderr

    # --- S is pushed to master
    shas["S"] = commit(up, "S")
    h = w.host
    ran("a1", w.run_wrapper("a1"), Expected(shas["S"], "master", 0, "puppet", 1, ROLE))
    ran("a2", w.run_wrapper("a2", rc=2), Expected(shas["S"], "master", 2, "puppet", 1, ROLE))
    ran(
        "fail", w.run_wrapper("fail", rc=6, attempts=2),
        Expected(shas["S"], "master", 6, "puppet", 1, ROLE),
        Expected(shas["S"], "master", 6, "puppet", 2, ROLE),
    )  # fmt: skip
    h("canary").write(OVERRIDE, override(up, "master") + b'PUPPET_BRANCH="canary"\n')
    ran("canary", w.run_wrapper("canary"), Expected(shas["C"], "canary", 0, "puppet", 1, ROLE))
    ran("chg", w.run_wrapper("chg"), Expected(shas["S"], "master", 0, "puppet", 1, ROLE))
    h("chg").write(OVERRIDE, override(up, "canary"))  # changed, not applied yet
    h("badbr").write(OVERRIDE, TOKEN_OVERRIDE)
    ran("badbr", w.run_wrapper("badbr"), Expected(None, "no-such-branch", None, "prepare", 1, ROLE))
    # reimg: applies S, then is re-imaged (history, state, checkout gone); its first
    # attempt has no role yet (prepare), then it applies S again
    ran("reimg", w.run_wrapper("reimg"), Expected(shas["S"], "master", 0, "puppet", 1, ROLE))
    second = w.ingest(*[n for n in NAMES if n != "silent"])
    assert second.returncode == 0, second.stderr
    r = h("reimg")
    for p in (HISTORY, STATE):
        r.path(p).unlink()
    shutil.rmtree(r.path(WORKDIR))
    r.write("/etc/puppet_role", "")
    ran("reimg", w.run_wrapper("reimg"), Expected(None, "master", None, "prepare", 1, None))
    r.write("/etc/puppet_role", f"{ROLE}\n")
    ran("reimg", w.run_wrapper("reimg"), Expected(shas["S"], "master", 0, "puppet", 1, ROLE))

    # --- S2 (a descendant of S) is pushed; a1 runs often enough that its history rotates
    shas["S2"] = commit(up, "S2")
    for _ in range(4):
        ran("a1", w.run_wrapper("a1"), Expected(shas["S2"], "master", 0, "puppet", 1, ROLE))
    assert h("a1").path(HISTORY + ".1").exists(), "a1's history should have rotated"

    # --- the silent host is down at the last collection
    h("silent").stop()
    last = w.ingest(*NAMES)
    assert last.returncode == 4, last.stderr  # one host unreachable
    gi = fs(w.db, "ingest-git", str(up))
    assert gi.returncode == 0, gi.stderr

    # --- worker activity: a1 active now, fail active now, a2 active 3 h ago, chg quarantined
    now = datetime.now(UTC)
    w.worker_now = now
    _Queue.workers = [
        {"workerGroup": "mdc1", "workerId": "a1", "lastDateActive": iso(now)},
        {"workerGroup": "mdc1", "workerId": "fail", "lastDateActive": iso(now)},
        {"workerGroup": "mdc1", "workerId": "a2", "lastDateActive": iso(now - timedelta(hours=3))},
        {
            "workerGroup": "mdc1",
            "workerId": "canary",
            "lastDateActive": iso(now),
            "quarantineUntil": iso(now + timedelta(days=1)),
        },
        {"workerGroup": "mdc1", "workerId": "chg", "lastDateActive": iso(now)},
    ]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Queue)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        iw = fs(w.db, "ingest-workers", "--root-url", f"http://127.0.0.1:{server.server_port}",
                "--pool", "releng-hardware/gecko-t-linux-talos")  # fmt: skip
        assert iw.returncode == 0, iw.stderr
    finally:
        server.shutdown()
        server.server_close()

    for short in NAMES:
        saw = w.base / "puppet_saw" / f"{short}.jsonl"
        w.puppet_saw[short] = (
            [json.loads(x) for x in saw.read_text().splitlines()] if saw.exists() else []
        )
        hh = h(short)
        recs: list[dict[str, Any]] = []
        for p in (HISTORY + ".1", HISTORY):
            if hh.path(p).exists():
                recs += [json.loads(x) for x in hh.path(p).read_text().splitlines()]
        w.records[short] = recs
        ov = hh.path(OVERRIDE)
        w.overrides_at_end[short] = ov.read_bytes() if ov.exists() else None
    yield w


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from build(tmp_path_factory.mktemp("e2e"))


def cli_json(w: World, *args: str) -> Any:
    out = fs(w.db, *args, "--format", "json")
    assert out.returncode in (0, 3), out.stderr
    return json.loads(out.stdout)


def sql(w: World, query: str) -> list[dict[str, Any]]:
    return list(cli_json(w, "sql", query))


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- the scenario's own bookkeeping ------------------------------------------------------


def test_scenario_ran_as_scripted(world: World) -> None:
    w = world
    assert w.ingests[0].returncode == 0 and w.ingests[1].returncode == 0
    assert w.ingests[2].returncode == 4 and fqdn("silent") in w.ingests[2].stderr
    assert sql(w, "SELECT count(*) AS n FROM rejects") == [{"n": 0}]


# --- the wrapper's facts, against what puppet itself saw -----------------------------------


def test_wrapper_records_what_puppet_ran_on(world: World) -> None:
    w = world
    vault = sha256(VAULT)
    for short in NAMES:
        rows = sql(w, f"""SELECT git_sha, git_branch, exit_code, success, stage, attempt, role,
                override_sha, vault_sha, git_dirty FROM runs WHERE host = '{fqdn(short)}'
                ORDER BY run_recency(ts, source, byte_offset, run_id)""")  # fmt: skip
        exp = w.runs[short]
        assert len(rows) == len(exp), short
        saw = iter(w.puppet_saw[short])
        for row, e in zip(rows, exp, strict=True):
            assert row["stage"] == e.stage and row["attempt"] == e.attempt, (short, row)
            assert row["exit_code"] == e.exit_code and row["success"] is (e.exit_code in (0, 2))
            assert row["git_branch"] == e.branch and row["role"] == e.role, (short, row)
            assert row["override_sha"] == e.override_sha and row["vault_sha"] == vault
            if e.stage == "puppet":
                p = next(saw)
                # the commit actually checked out when puppet ran, the files it read
                assert row["git_sha"] == p["head"] == e.sha, (short, row, p)
                assert row["override_sha"] == (p["override_sha"] or None)
                assert row["vault_sha"] == p["vault_sha"]
                assert row["role"] == p["role"] and p["rc"] == e.exit_code
                assert row["git_dirty"] is False
            else:
                assert row["git_sha"] is None and row["git_dirty"] is None
        assert next(saw, None) is None, f"{short}: puppet ran more often than recorded"
    # the token of the fork's URL never reaches the record (wrapper: credentials stripped)
    [bad] = [r for r in w.records["badbr"] if r["stage"] == "prepare"]
    assert bad["git_repo"] == "https://127.0.0.1:1/ops/puppet.git"


def test_vault_content_never_leaves_the_host(world: World) -> None:
    w = world
    for f in w.mirror.rglob("*"):
        if f.is_file():
            assert VAULT_MARK not in f.read_bytes(), f
    assert VAULT_MARK not in w.db.read_bytes()
    for table in ("runs", "observations", "rejects"):
        mark = VAULT_MARK.decode()
        rows = sql(
            w,
            f"SELECT count(*) AS n FROM {table} t "
            f"WHERE CAST(to_json(t) AS VARCHAR) LIKE '%{mark}%'",
        )
        assert rows == [{"n": 0}], table


# --- status ------------------------------------------------------------------------------------


def test_status_matches_ground_truth(world: World) -> None:
    w = world
    s = w.shas
    rows = {r["host"]: r for r in cli_json(w, "status")}
    assert set(rows) == {fqdn(n) for n in NAMES}
    truth = {  # host: pp_sha, pp_success, exit, stage, branch, applied, healthy, reachable
        "a1": (s["S2"], True, 0, "puppet", "master", "Y", "Y", True),
        "a2": (s["S"], True, 2, "puppet", "master", "-", "N", True),  # active 3 h ago
        "fail": (s["S"], False, 6, "puppet", "master", "N", "N", True),
        "canary": (s["C"], True, 0, "puppet", "canary", "Y", "N", True),  # quarantined
        "silent": (s["B"], True, 0, "puppet", "master", "Y", "-", False),
        "chg": (s["S"], True, 0, "puppet", "master", "N", "N", True),  # override changed
        "badbr": (None, False, None, "prepare", "no-such-branch", "N", "-", True),
        "reimg": (s["S"], True, 0, "puppet", "master", "Y", "-", True),
    }
    for short, exp in truth.items():
        r = rows[fqdn(short)]
        got = (r["pp_sha"], r["pp_success"], r["pp_exit_code"], r["pp_stage"], r["pp_branch"],
               r["applied"], r["healthy"], r["reachable"])  # fmt: skip
        assert got == exp, short
        assert r["role"] == ROLE and r["os"] == "Linux"
    # last_seen: the last collection that reached the host
    for short in NAMES:
        i = 0 if short == "silent" else 2
        lo, hi = w.windows[i]
        assert lo <= when(rows[fqdn(short)]["last_seen"]) <= hi, short
    # the silent host's last run is the one of two days ago
    assert rows[fqdn("silent")]["pp_age_s"] >= 49 * 3600


# --- rollout -----------------------------------------------------------------------------------


def test_rollout_of_S_matches_ground_truth(world: World) -> None:
    w = world
    hosts = {r["host"]: r for r in cli_json(w, "rollout", w.shas["S"][:10])}
    expected = {
        "a1": "converged",  # on S2, a descendant of S (the graph is loaded)
        "a2": "converged",  # exit 2 is a success
        "chg": "converged",
        "reimg": "converged",
        "fail": "failed",
        "canary": "pending",
        "badbr": "pending",
        "silent": "unreported",
    }
    assert {h: r["status"] for h, r in hosts.items()} == {fqdn(k): v for k, v in expected.items()}
    [summary] = cli_json(w, "rollout", w.shas["S"], "--part", "summary")
    assert summary["sha"] == w.shas["S"]
    assert (summary["hosts"], summary["converged"], summary["failed"], summary["pending"],
            summary["regressed"], summary["unreported"]) == (8, 4, 1, 2, 0, 1)  # fmt: skip
    assert summary["pct_converged"] == 50
    out = fs(w.db, "rollout", w.shas["S"], "--min", "60")
    assert out.returncode == 3
    # B (an ancestor of everything since): all converged but the host failing on S
    b = {r["host"]: r["status"] for r in cli_json(w, "rollout", w.shas["B"])}
    assert b == {fqdn(n): "failed" if n == "fail" else "converged" for n in NAMES}


# --- history -----------------------------------------------------------------------------------


def test_history_lists_every_attempt_in_order(world: World) -> None:
    w = world
    for short in NAMES:
        got = cli_json(w, "history", fqdn(short))
        exp = list(reversed(w.runs[short]))  # newest first
        assert [(r["git_sha"], r["git_branch"], r["exit_code"], r["stage"], r["attempt"],
                 r["role"], r["success"]) for r in got] == [
            (e.sha, e.branch, e.exit_code, e.stage, e.attempt, e.role, e.exit_code in (0, 2))
            for e in exp
        ], short  # fmt: skip
        assert all(r["source"] == "history" for r in got)
        assert len({r["run_id"] for r in got}) == len(got)


# --- drift -------------------------------------------------------------------------------------


def test_drift_daily_matches_ground_truth(world: World) -> None:
    w = world
    s = w.shas
    days: dict[str, set[str]] = {}
    for short in NAMES:
        for line in (w.mirror / fqdn(short) / "history.jsonl").read_text().splitlines():
            rec = json.loads(line)
            days.setdefault(rec["ts"][:10], set()).add(short)
    if len(days) != 2:
        pytest.skip("the scenario's runs straddled a UTC midnight")
    d0, d1 = sorted(days)
    rows = {r["day"]: r for r in cli_json(w, "drift", "--since", "5d")}
    assert set(rows) == {d0, d1}
    r0, r1 = rows[d0], rows[d1]
    assert (r0["hosts"], r0["distinct_shas"], r0["modal_sha"], r0["off_modal"], r0["failing"],
            r0["with_override"]) == (8, 1, s["B"], 0, 0, 7)  # fmt: skip
    # d1: the silent host did not report; a1 on S2, canary on C, badbr on nothing (prepare)
    assert (r1["hosts"], r1["distinct_shas"], r1["modal_sha"], r1["off_modal"], r1["failing"],
            r1["with_override"], r1["override_differs"], r1["vault_differs"]) == (
        7, 3, s["S"], 3, 2, 6, 2, 0)  # fmt: skip


# --- what the collector says about the override, against what the wrapper applies ----------


def test_observed_override_branch_is_the_one_the_wrapper_applies(world: World) -> None:
    """canary's override has PUPPET_BRANCH twice (a line appended by the operator): sh, and
    the wrapper (puppet_state_override_value: the last assignment wins), apply `canary`."""
    w = world
    [rec] = [r for r in w.records["canary"] if r["git_branch"] == "canary"]
    assert rec["git_sha"] == w.shas["C"]
    [obs] = sql(w, f"SELECT override_branch FROM latest_contact WHERE host = '{fqdn('canary')}'")
    assert obs["override_branch"] == "canary"


def test_override_repo_credentials_never_reach_mirror_or_warehouse(world: World) -> None:
    """The wrapper strips the userinfo of an https repo URL before it reaches a world-readable
    file (record-format.md: git_repo 'credentials stripped'); the collector copies the
    override's PUPPET_REPO verbatim into observations.jsonl and the warehouse."""
    w = world
    leaks = [
        str(f.relative_to(w.mirror))
        for f in w.mirror.rglob("*")
        if f.is_file() and TOKEN.encode() in f.read_bytes()
    ]
    rows = sql(w, "SELECT host, override_repo FROM observations "
                  f"WHERE CAST(to_json(observations) AS VARCHAR) LIKE '%{TOKEN}%'")  # fmt: skip
    assert leaks == [] and rows == []
