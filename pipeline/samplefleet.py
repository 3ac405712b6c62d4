"""Deterministic sample fleet: the mirror a fleet of CI workers would give the collector.

`fleetstate demo` and the tests load it instead of reaching real hosts over SSH. Every
value comes from one seeded RNG and every time is placed relative to `end` (the last
collection), so one `end` always gives the same bytes and `end=now` makes ages look live.
The returned SampleSummary is the ground truth to check the pipeline against.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SEED = 20261120
HOUR = 3600
DAY = 24 * HOUR
SPAN_S = 32 * DAY
STALENESS_S = DAY
OBSERVE_EVERY_S = 6 * HOUR
DOMAIN = ".test.releng.mdc1.mozilla.com"
MAINLINE = ("https://github.com/mozilla-platform-ops/ronin_puppet.git", "master")
FORK = "https://github.com/releng-sandbox/ronin_puppet.git"
PATHS = {  # os -> (override_path, vault_path)
    "Linux": ("/etc/puppet/ronin_settings", "/root/vault.yaml"),
    "Darwin": ("/opt/puppet_environments/ronin_settings", "/var/root/vault.yaml"),
}
POOLS = [  # role, os, short-name pattern, numbers
    ("gecko_t_linux_talos", "Linux", "t-linux64-ms-{:03d}", range(1, 17)),
    ("gecko_t_linux_netperf", "Linux", "t-linux64-ms-{:03d}", range(280, 288)),
    ("gecko_t_osx_1400_r8", "Darwin", "macmini-r8-{:03d}", range(101, 113)),
    ("gecko_t_osx_1015_r8", "Darwin", "macmini-r8-{:03d}", range(21, 29)),
]
SUBJECTS = [
    "Bug 1921004 - talos: pin python3 to 3.11.9 on linux workers",
    "Bug 1923317 - macos: move generic-worker ed25519 key to /etc/generic-worker",
    "Merge pull request #812 from releng-sandbox/telegraf-1.32",
    "Bug 1925630 - netperf: raise nofile limit for netem workers",
    "Bug 1926811 - osx_1400: install Xcode command line tools 16.1",
    "Bug 1928142 - linux_base: stop unattended-upgrades before tasks",
    "Bug 1929977 - worker_runner: bump to v72.1.0",
    "Bug 1931205 - generic-worker: enable d2g on talos pools",
]
COMMIT_DAYS = [-2.0, 3.4, 7.1, 11.6, 15.3, 20.2, 25.8]  # after the span start; newest: end - 8h
NEWEST_BEFORE_END_S = 8 * HOUR
VAULT_DAY = 17.4
# The story of the sample, by short host name.
FAILED = {"t-linux64-ms-004": 0, "t-linux64-ms-011": 0, "macmini-r8-105": 1}  # successes first
REGRESSED = {"t-linux64-ms-283"}
SILENT_DAYS = {"t-linux64-ms-009": 2.2, "macmini-r8-108": 3.5, "macmini-r8-024": 4.3}
NEWEST_NEVER = {
    "macmini-r8-021",
    "macmini-r8-022",
    "macmini-r8-023",
    "macmini-r8-025",
    "macmini-r8-026",
    "macmini-r8-028",
}  # the 10.15 pool lags the rollout
OVERRIDES = {  # host -> (day set, branch, what happens just before end)
    "t-linux64-ms-014": (13.0, "bug1931002-talos-d2g-trial", None),
    "t-linux64-ms-285": (19.5, "netperf-tc-shaping", None),
    "macmini-r8-110": (21.0, "macos-14-xcode-16.1", None),
    "t-linux64-ms-007": (14.2, "bug1930388-gw-multiuser", "changed"),
    "macmini-r8-027": (16.0, "bug1929441-osx1015-tcc", "removed"),
}
LATE_CHANGE_S = 10 * 60  # special override edits happen this long before end, after the last run
VAULT_LAG_DAYS = {"t-linux64-ms-002": 3.0, "macmini-r8-103": 5.0}
VAULT_NO_SUDO = "macmini-r8-112"
VAULT_ABSENT = ("t-linux64-ms-015", 5.1, 5.4)  # host, from day, to day: prepare failures
MALFORMED = {  # host -> kinds, inserted after the record with this index
    "t-linux64-ms-003": [(40, "truncated"), (55, "garbage")],
    "t-linux64-ms-281": [(47, "success_yes")],
    "macmini-r8-102": [(62, "short_sha")],
}
MALFORMED_REASON = {
    "truncated": "truncated JSON (line cut short)",
    "garbage": "not JSON (garbage text)",
    "success_yes": 'wrong type: "success" is the string "yes", not a bool',
    "short_sha": "git_sha is 39 hex characters, not 40",
}


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str
    subject: str
    time: datetime


@dataclass(frozen=True)
class MalformedLine:
    host: str
    byte_offset: int
    reason: str


@dataclass
class SampleSummary:
    """Ground truth of one generated sample; `records` counts the valid run records only."""

    end: datetime
    hosts: list[str]
    roles: dict[str, str]
    commits: list[Commit]
    newest_sha: str
    expected_status: dict[str, str]
    malformed: list[MalformedLine]
    records: int
    observations: int


@dataclass
class _Override:
    sha: str
    branch: str
    heads: list[tuple[int, str]]  # (from time, branch head sha)

    def head(self, t: int) -> str:
        return [sha for since, sha in self.heads if since <= t][-1]


@dataclass
class _Host:
    fqdn: str
    short: str
    role: str
    os: str
    adopt: list[int | None]  # per commit: when this host first sees it; None = never
    overrides: list[tuple[int, _Override | None]] = field(default_factory=list)
    vault_change: int = 0
    old_format_until: int = 0
    wrapper_upgrade: int = 0
    run_until: int = 0
    silent_from: int | None = None
    vault_absent: tuple[int, int] | None = None


def _hex(rng: random.Random, chars: int) -> str:
    return f"{rng.getrandbits(chars * 4):0{chars}x}"


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _at(t: int, timeline: list[tuple[int, Any]]) -> Any:
    return [value for since, value in timeline if since <= t][-1]


def _plan_commits(rng: random.Random, start: int, end: int) -> list[tuple[Commit, int]]:
    times = [start + int(d * DAY) + rng.randint(0, 8 * HOUR) for d in COMMIT_DAYS]
    times.append(end - NEWEST_BEFORE_END_S)
    parent = _hex(rng, 40)
    commits = []
    for subject, t in zip(SUBJECTS, times, strict=True):
        sha = _hex(rng, 40)
        commits.append((Commit(sha, parent, subject, datetime.fromtimestamp(t, UTC)), t))
        parent = sha
    return commits


def _plan_host(
    rng: random.Random,
    index: int,
    pool: tuple[str, str, str, int],
    commit_times: list[int],
    start: int,
    end: int,
) -> _Host:
    role, os_name, pattern, number = pool
    short = pattern.format(number)
    adopt: list[int | None] = [t + rng.randint(0, 4 * HOUR) for t in commit_times]
    newest = commit_times[-1]
    if short in NEWEST_NEVER:
        adopt[-1] = None
    elif short in REGRESSED:
        adopt[-1] = newest + rng.randint(0, HOUR)
    else:
        adopt[-1] = newest + rng.randint(0, 5 * HOUR)
    host = _Host(short + DOMAIN, short, role, os_name, adopt, run_until=end)
    host.overrides = [(start - DAY, None)]
    if short in OVERRIDES:
        _plan_override(rng, host, start, end)
    lag = VAULT_LAG_DAYS.get(short, 0.0)
    host.vault_change = start + int((VAULT_DAY + lag) * DAY) + rng.randint(0, 2 * HOUR)
    host.old_format_until = start - DAY
    if index % 3 == 0:
        host.old_format_until = start + 9 * DAY + rng.randint(0, 36 * HOUR)
    host.wrapper_upgrade = start + 18 * DAY + rng.randint(0, DAY)
    if short == VAULT_ABSENT[0]:
        host.vault_absent = (start + int(VAULT_ABSENT[1] * DAY), start + int(VAULT_ABSENT[2] * DAY))
    if short in SILENT_DAYS:
        host.silent_from = end - int(SILENT_DAYS[short] * DAY)
        host.run_until = host.silent_from
    return host


def _plan_override(rng: random.Random, host: _Host, start: int, end: int) -> None:
    day, branch, late = OVERRIDES[host.short]
    since = start + int(day * DAY)
    heads = [(since - DAY, _hex(rng, 40)), (since + 3 * DAY, _hex(rng, 40))]
    host.overrides.append((since, _Override(_hex(rng, 64), branch, heads)))
    if late is None:
        return
    late_at = end - LATE_CHANGE_S
    host.run_until = late_at
    newer = None
    if late == "changed":
        newer = _Override(_hex(rng, 64), branch + "-v2", [(late_at - HOUR, _hex(rng, 40))])
    host.overrides.append((late_at, newer))


def _source(host: _Host, commits: list[Commit], t: int, end: int) -> tuple[str, str, str]:
    """(repo, branch, sha) that a run starting at t applies."""
    override = _at(t, host.overrides)
    if override is not None:
        return FORK, override.branch, override.head(t)
    seen = [
        c for c, when in zip(commits, host.adopt, strict=True) if when is not None and when <= t
    ]
    if host.short in REGRESSED and t >= end - 3 * HOUR:
        seen = seen[:-1]  # rolled back by hand on the host: the checkout is on the previous commit
    return MAINLINE[0], MAINLINE[1], seen[-1].sha


def _vault(host: _Host, vaults: dict[str, tuple[str, str]], t: int) -> str | None:
    if host.vault_absent is not None and host.vault_absent[0] <= t < host.vault_absent[1]:
        return None
    old, new = vaults[host.role]
    return new if t >= host.vault_change else old


def _gap(rng: random.Random, t: int, end: int) -> int:
    # Every 30-60 minutes in the last day, as a real fleet runs; sparser before, to keep
    # the committed sample small.
    if t >= end - DAY:
        return rng.randint(30 * 60, 60 * 60)
    return rng.randint(6 * HOUR, 10 * HOUR)


def _outcome(
    rng: random.Random,
    host: _Host,
    t: int,
    newest_at: int,
    newest_ok: int | None,
    vault: str | None,
) -> tuple[str, int | None]:
    """(stage, exit code) of one attempt; newest_ok counts successes at the newest commit."""
    if vault is None:
        return "prepare", None  # the wrapper refuses to run puppet without a vault
    if t >= newest_at:  # after the newest push only the story decides, never chance
        if host.short in FAILED and newest_ok is not None and newest_ok >= FAILED[host.short]:
            return "puppet", rng.choice([1, 4, 6])  # the newest commit breaks this host
        return "puppet", 0
    roll = rng.random()
    if roll < 0.02 and t >= host.old_format_until:
        return "prepare", None
    if roll < 0.06:
        return "puppet", rng.choice([1, 4, 4, 6, 6])
    return "puppet", 0


def _record(
    rng: random.Random,
    host: _Host,
    started: int,
    attempt: int,
    stage: str,
    exit_code: int | None,
    source: tuple[str, str, str | None],
    override_sha: str | None,
    vault: str | None,
) -> dict[str, Any]:
    repo, branch, sha = source
    low, high = (45, 240) if host.os == "Linux" else (90, 540)
    duration = rng.randint(3, 40) if stage == "prepare" else rng.randint(low, high)
    override_path, vault_path = PATHS[host.os]
    record: dict[str, Any] = {
        "schema_version": 1,
        "ts": _iso(started + duration),
        "success": exit_code in (0, 2),
        "exit_code": exit_code,
        "git_repo": repo,
        "git_branch": branch,
        "git_sha": sha,
        "override_sha": override_sha,
        "vault_sha": vault,
        "override_path": override_path,
        "role": host.role,
        "duration_s": duration,
    }
    if started < host.old_format_until:
        return record  # written by the old wrapper: the first twelve fields only
    record.update(
        {
            "git_dirty": None if sha is None else rng.random() < 0.01,
            "vault_path": vault_path,
            "host": host.fqdn,
            "run_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "started_at": _iso(started),
            "attempt": attempt,
            "stage": stage,
            "os": host.os,
            "wrapper_version": "1.0.0" if started < host.wrapper_upgrade else "1.1.0",
        }
    )
    return record


def _runs(
    rng: random.Random,
    host: _Host,
    commits: list[Commit],
    vaults: dict[str, tuple[str, str]],
    start: int,
    end: int,
) -> list[dict[str, Any]]:
    """The valid run records of one host, oldest first."""
    newest = commits[-1]
    newest_at = int(newest.time.timestamp())
    records: list[dict[str, Any]] = []
    newest_ok = 0
    previous: tuple[str | None, str | None] | None = None
    t = start + rng.randint(0, 2 * HOUR)
    while t < host.run_until:
        source = _source(host, commits, t, end)
        vault = _vault(host, vaults, t)
        override = _at(t, host.overrides)
        attempt, started = 1, t
        while True:
            at_newest = newest_ok if source[2] == newest.sha else None
            stage, exit_code = _outcome(rng, host, started, newest_at, at_newest, vault)
            changed = previous != (source[2], vault)
            if exit_code == 0 and (changed or rng.random() < 0.1):
                exit_code = 2
            applied = source if stage == "puppet" or rng.random() < 0.5 else (*source[:2], None)
            record = _record(
                rng,
                host,
                started,
                attempt,
                stage,
                exit_code,
                applied,
                override and override.sha,
                vault,
            )
            if record["ts"] > _iso(end):
                return records  # still running at the last collection
            records.append(record)
            if record["success"]:
                previous = (source[2], vault)
                if source[2] == newest.sha:
                    newest_ok += 1
            if record["success"] or started >= newest_at or rng.random() < 0.5:
                break
            attempt += 1  # the wrapper retries a failed attempt a few minutes later
            started += record["duration_s"] + rng.randint(120, 300)
        t += _gap(rng, t, end)
    return records


def rollout_status(
    records: list[dict[str, Any]], sha: str, end: datetime, staleness_s: int = STALENESS_S
) -> str:
    """The contract's rollout status of one host for `sha`, from its valid records in file
    order. `sha` has no descendants here: it is the newest commit of the sample."""
    end_s = _epoch(end)
    if not records:
        return "unreported"
    latest = records[-1]
    successes = [r for r in records if r["success"]]
    if latest["git_sha"] == sha and not latest["success"]:
        return "failed"
    if successes and successes[-1]["git_sha"] == sha:
        return "converged"
    if any(r["git_sha"] == sha for r in successes):
        return "regressed"
    if latest["ts"] < _iso(end_s - staleness_s):
        return "unreported"
    return "pending"


TRANSIENT_ERRORS = [
    "timed out",
    "kex_exchange_identification: read: Connection reset by peer",
    "[Errno 111] Connection refused",
]


def _observations(
    rng: random.Random, host: _Host, vaults: dict[str, tuple[str, str]], start: int, end: int
) -> list[dict[str, Any]]:
    boots = [start - rng.randint(0, 2 * DAY)]
    while boots[-1] <= end:
        boots.append(boots[-1] + rng.randint(4 * HOUR, 3 * DAY))
    observations = []
    for k in range(SPAN_S // OBSERVE_EVERY_S, -1, -1):
        t = end - k * OBSERVE_EVERY_S + (rng.randint(1, 40) if k else 0)
        error = None
        if host.silent_from is not None and t >= host.silent_from:
            error = f"ssh: connect to host {host.fqdn} port 22: Connection timed out"
        elif k and rng.random() < 0.01:
            error = rng.choice(TRANSIENT_ERRORS)
        uptime = t - max(b for b in boots if b <= t)
        observations.append(_observation(host, vaults, t, error, uptime))
    return observations


def _observation(
    host: _Host, vaults: dict[str, tuple[str, str]], t: int, error: str | None, uptime: int
) -> dict[str, Any]:
    observation: dict[str, Any] = {
        "host": host.fqdn,
        "observed_at": _iso(t),
        "reachable": error is None,
        "error": error,
        "os": None,
        "role": None,
        "override_present": None,
        "override_sha": None,
        "vault_sha": None,
        "override_repo": None,
        "override_branch": None,
        "vault_status": None,
        "uptime_s": None,
    }
    if error is not None:
        return observation
    override = _at(t, host.overrides)
    vault = _vault(host, vaults, t)
    status = "present" if vault is not None else "absent"
    if host.short == VAULT_NO_SUDO:
        status, vault = "no_sudo", None  # the collector's account may not read the vault
    observation.update(
        {
            "os": host.os,
            "role": host.role,
            "override_present": override is not None,
            "override_sha": override and override.sha,
            "vault_sha": vault,
            "override_repo": override and FORK,
            "override_branch": override and override.branch,
            "vault_status": status,
            "uptime_s": uptime,
        }
    )
    return observation


def _dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def _bad_line(rng: random.Random, kind: str, after: dict[str, Any]) -> bytes:
    record = dict(after)
    if "run_id" in record:
        record["run_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if kind == "truncated":
        line = _dumps(record)
        return line[: len(line) * 2 // 3] + b"\n"
    if kind == "garbage":
        return b"Error: Could not run: Another puppet run is already in progress\n"
    if kind == "success_yes":
        record["success"] = "yes"
    else:
        record["git_sha"] = record["git_sha"][:39]
    return _dumps(record)


def _history(
    rng: random.Random, host: _Host, records: list[dict[str, Any]]
) -> tuple[bytes, list[MalformedLine]]:
    bad = dict(MALFORMED.get(host.short, []))
    chunks: list[bytes] = []
    malformed = []
    offset = 0
    for index, record in enumerate(records):
        chunks.append(_dumps(record))
        offset += len(chunks[-1])
        if index in bad:
            chunks.append(_bad_line(rng, bad[index], record))
            malformed.append(MalformedLine(host.fqdn, offset, MALFORMED_REASON[bad[index]]))
            offset += len(chunks[-1])
    return b"".join(chunks), malformed


def _epoch(end: datetime) -> int:
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)  # a naive end is taken as UTC
    return int(end.timestamp())


def _plan(rng: random.Random, start: int, end: int) -> tuple[list[Commit], list[_Host]]:
    planned = _plan_commits(rng, start, end)
    commit_times = [t for _, t in planned]
    pools = [(role, os_name, pattern, n) for role, os_name, pattern, ns in POOLS for n in ns]
    hosts = [_plan_host(rng, i, pool, commit_times, start, end) for i, pool in enumerate(pools)]
    return [c for c, _ in planned], hosts


def generate(out_dir: Path, end: datetime) -> SampleSummary:
    """Write the sample mirror (OUT_DIR/<host>/history.jsonl and observations.jsonl, files
    overwritten) whose last collection is at `end`, and return its ground truth."""
    end_s = _epoch(end)
    start = end_s - SPAN_S
    rng = random.Random(SEED)
    commits, hosts = _plan(rng, start, end_s)
    vaults = {role: (_hex(rng, 64), _hex(rng, 64)) for role, *_ in POOLS}
    summary = SampleSummary(
        datetime.fromtimestamp(end_s, UTC), [], {}, commits, commits[-1].sha, {}, [], 0, 0
    )
    for host in hosts:
        records = _runs(rng, host, commits, vaults, start, end_s)
        history, malformed = _history(rng, host, records)
        observations = _observations(rng, host, vaults, start, end_s)
        directory = out_dir / host.fqdn
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "history.jsonl").write_bytes(history)
        (directory / "observations.jsonl").write_bytes(b"".join(map(_dumps, observations)))
        summary.hosts.append(host.fqdn)
        summary.roles[host.fqdn] = host.role
        summary.expected_status[host.fqdn] = rollout_status(
            records, summary.newest_sha, summary.end
        )
        summary.malformed.extend(malformed)
        summary.records += len(records)
        summary.observations += len(observations)
    summary.hosts.sort()
    return summary


def _parse_end(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from error


def main(argv: list[str] | None = None) -> int:
    """python -m pipeline.samplefleet data/sample-fleet --end 2026-11-20T12:00:00Z"""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.samplefleet",
        description="Write the deterministic sample fleet as a mirror-layout directory.",
    )
    parser.add_argument("out_dir", type=Path, help="directory to write <host>/ folders into")
    parser.add_argument(
        "--end",
        type=_parse_end,
        default=None,
        help="time of the last collection, ISO 8601 (default: now, UTC)",
    )
    args = parser.parse_args(argv)
    end = args.end or datetime.now(UTC).replace(microsecond=0)
    summary = generate(args.out_dir, end)
    counts: dict[str, int] = {}
    for status in summary.expected_status.values():
        counts[status] = counts.get(status, 0) + 1
    print(
        f"wrote {len(summary.hosts)} hosts, {summary.records} records, "
        f"{summary.observations} observations, {len(summary.malformed)} malformed lines "
        f"to {args.out_dir}; rollout of {summary.newest_sha[:12]}: {counts}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
