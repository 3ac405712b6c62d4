"""The sample fleet is deterministic, realistic in shape, and its summary tells the truth."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline import samplefleet
from pipeline.samplefleet import SampleSummary, generate

END = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)
COMMITTED = Path(__file__).resolve().parent.parent / "data" / "sample-fleet"
DOMAIN = ".test.releng.mdc1.mozilla.com"
OBSERVATION_KEYS = [
    "host",
    "observed_at",
    "reachable",
    "error",
    "os",
    "role",
    "override_present",
    "override_sha",
    "vault_sha",
    "override_repo",
    "override_branch",
    "vault_status",
    "uptime_s",
]
HEX40 = re.compile(r"[0-9a-f]{40}")
HEX64 = re.compile(r"[0-9a-f]{64}")
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SampleSummary]:
    out = tmp_path_factory.mktemp("sample")
    return out, generate(out, END)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def lines_with_offsets(path: Path) -> Iterator[tuple[int, bytes]]:
    offset = 0
    for line in path.read_bytes().splitlines(keepends=True):
        yield offset, line
        offset += len(line)


def is_valid_record(line: bytes) -> bool:
    """An independent check of contract section 1: JSON object, the twelve v1 fields typed."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    sha = record.get("git_sha")
    return (
        isinstance(record, dict)
        and record.get("schema_version") == 1
        and isinstance(record.get("ts"), str)
        and ISO.fullmatch(record["ts"]) is not None
        and isinstance(record.get("success"), bool)
        and (sha is None or (isinstance(sha, str) and HEX40.fullmatch(sha) is not None))
        and isinstance(record.get("duration_s"), int)
        and all(
            k in record
            for k in (
                "exit_code",
                "git_repo",
                "git_branch",
                "override_sha",
                "vault_sha",
                "override_path",
                "role",
            )
        )
    )


def valid_records(out: Path, host: str) -> list[dict[str, Any]]:
    path = out / host / "history.jsonl"
    return [json.loads(line) for _, line in lines_with_offsets(path) if is_valid_record(line)]


def observations(out: Path, host: str) -> list[dict[str, Any]]:
    text = (out / host / "observations.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_same_end_gives_the_same_bytes_as_the_committed_sample(
    sample: tuple[Path, SampleSummary], tmp_path: Path
) -> None:
    out, _ = sample
    generate(tmp_path, END)
    assert tree(tmp_path) == tree(out)
    assert tree(COMMITTED) == tree(out), "regenerate: python -m pipeline.samplefleet ..."


def test_cli_writes_the_same_sample(sample: tuple[Path, SampleSummary], tmp_path: Path) -> None:
    assert samplefleet.main([str(tmp_path), "--end", "2026-11-20T12:00:00Z"]) == 0
    assert tree(tmp_path) == tree(sample[0])


def test_times_follow_end(tmp_path: Path) -> None:
    later = END + timedelta(days=3, minutes=7)
    summary = generate(tmp_path, later)
    host = summary.hosts[0]
    assert observations(tmp_path, host)[-1]["observed_at"] == "2026-11-23T12:07:00Z"
    assert summary.commits[-1].time == later - timedelta(hours=8)


def test_fleet_shape(sample: tuple[Path, SampleSummary]) -> None:
    out, summary = sample
    assert len(summary.hosts) >= 40
    assert sorted(p.name for p in out.iterdir()) == summary.hosts
    assert all(h.endswith(DOMAIN) for h in summary.hosts)
    assert sorted(p.name for p in (out / summary.hosts[0]).iterdir()) == [
        "history.jsonl",
        "observations.jsonl",
    ]
    stamps = [r["ts"] for h in summary.hosts for r in valid_records(out, h)]
    first, last = (datetime.fromisoformat(t) for t in (min(stamps), max(stamps)))
    assert last - first >= timedelta(days=30)
    assert last <= END
    assert {r["os"] for h in summary.hosts for r in valid_records(out, h) if "os" in r} == {
        "Linux",
        "Darwin",
    }
    assert {"gecko_t_linux_talos", "gecko_t_osx_1400_r8"} <= set(summary.roles.values())


def test_commits_form_a_chain(sample: tuple[Path, SampleSummary]) -> None:
    _, summary = sample
    commits = summary.commits
    assert 6 <= len(commits) <= 10
    assert summary.newest_sha == commits[-1].sha
    assert all(HEX40.fullmatch(c.sha) and HEX40.fullmatch(c.parent) for c in commits)
    assert [c.parent for c in commits[1:]] == [c.sha for c in commits[:-1]]
    assert [c.time for c in commits] == sorted(c.time for c in commits)


def test_only_the_listed_lines_are_malformed(sample: tuple[Path, SampleSummary]) -> None:
    out, summary = sample
    found = set()
    total = 0
    for host in summary.hosts:
        for offset, line in lines_with_offsets(out / host / "history.jsonl"):
            assert line.endswith(b"\n")
            if is_valid_record(line):
                total += 1
            else:
                found.add((host, offset))
    assert found == {(m.host, m.byte_offset) for m in summary.malformed}
    assert len(summary.malformed) == 4
    assert total == summary.records


def test_every_rollout_status_appears_as_the_story_says(
    sample: tuple[Path, SampleSummary],
) -> None:
    _, summary = sample
    by_status: dict[str, set[str]] = {}
    for host, status in summary.expected_status.items():
        by_status.setdefault(status, set()).add(host.removesuffix(DOMAIN))
    assert by_status["failed"] == set(samplefleet.FAILED)
    assert by_status["regressed"] == samplefleet.REGRESSED
    assert by_status["unreported"] == set(samplefleet.SILENT_DAYS)
    assert by_status["pending"] == samplefleet.NEWEST_NEVER | set(samplefleet.OVERRIDES)
    assert len(by_status["converged"]) >= 20


def test_old_format_records_and_prepare_stages_exist(sample: tuple[Path, SampleSummary]) -> None:
    out, summary = sample
    records = [r for h in summary.hosts for r in valid_records(out, h)]
    assert any(len(r) == 12 for r in records)
    prepare = [r for r in records if r.get("stage") == "prepare"]
    assert prepare and all(r["exit_code"] is None and not r["success"] for r in prepare)
    assert any(r["git_sha"] is None for r in prepare)
    assert {r["exit_code"] for r in records} >= {0, 1, 2, 4, 6, None}
    assert all(r["override_sha"] is None or HEX64.fullmatch(r["override_sha"]) for r in records)


def test_observations_have_the_columns(sample: tuple[Path, SampleSummary]) -> None:
    out, summary = sample
    for host in summary.hosts:
        rows = observations(out, host)
        assert all(list(row) == OBSERVATION_KEYS for row in rows)
        assert all(ISO.fullmatch(row["observed_at"]) for row in rows)
        assert rows[-1]["observed_at"] == "2026-11-20T12:00:00Z"
        assert len(rows) > 30 * 4
    everything = [row for h in summary.hosts for row in observations(out, h)]
    assert {row["vault_status"] for row in everything} == {"present", "absent", "no_sudo", None}
    unreachable = [row for row in everything if not row["reachable"]]
    assert unreachable and all(row["error"] and row["os"] is None for row in unreachable)


def test_override_cases(sample: tuple[Path, SampleSummary]) -> None:
    out, _ = sample

    def last_run_and_observation(short: str) -> tuple[dict[str, Any], dict[str, Any]]:
        host = short + DOMAIN
        return valid_records(out, host)[-1], observations(out, host)[-1]

    run, seen = last_run_and_observation("t-linux64-ms-014")  # applied: Y
    assert run["override_sha"] == seen["override_sha"] and seen["override_present"]
    assert run["git_branch"] == seen["override_branch"] and run["git_repo"] == seen["override_repo"]
    run, seen = last_run_and_observation("t-linux64-ms-007")  # newer override, not applied
    assert seen["override_present"] and run["override_sha"] not in (None, seen["override_sha"])
    run, seen = last_run_and_observation("macmini-r8-027")  # removed, still applied
    assert seen["override_present"] is False and run["override_sha"] is not None


def test_silent_hosts_are_silent(sample: tuple[Path, SampleSummary]) -> None:
    out, _ = sample
    for short, days in samplefleet.SILENT_DAYS.items():
        host = short + DOMAIN
        last = datetime.fromisoformat(valid_records(out, host)[-1]["ts"])
        assert timedelta(days=days) <= END - last <= timedelta(days=5)  # silent 2-5 days
        final = observations(out, host)[-1]
        assert final["reachable"] is False and "timed out" in final["error"]


def test_vault_changes_on_one_day_and_two_hosts_lag(sample: tuple[Path, SampleSummary]) -> None:
    out, summary = sample
    switched = {}
    for host in summary.hosts:
        records = valid_records(out, host)
        assert len({r["vault_sha"] for r in records} - {None}) == 2
        newest = records[-1]["vault_sha"]
        switched[host] = datetime.fromisoformat(
            next(r["ts"] for r in records if r["vault_sha"] == newest)
        )
    day = sorted(switched.values())[len(switched) // 2]
    laggards = {h.removesuffix(DOMAIN) for h, t in switched.items() if t - day > timedelta(days=1)}
    assert laggards == set(samplefleet.VAULT_LAG_DAYS)
