"""`fleetstate rollout` end to end: the json document's shape, csv parts, --min, --watch."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from analytics_support import build_repo, hour_base, open_db, write_fleet
from typer.testing import CliRunner

from pipeline import gitgraph
from pipeline.cli import app

SUMMARY_KEYS = [
    "sha", "hosts", "converged", "failed", "pending", "regressed", "unreported", "pct_converged",
    "first_seen", "subject", "author_time", "branches", "graph_known",
    "p50_converge_s", "p90_converge_s", "max_converge_s",
]  # fmt: skip
HOST_KEYS = [
    "host", "role", "status", "converged_at", "latest_sha", "latest_ts", "latest_success",
    "latest_exit_code", "latest_ok_sha", "behind", "ahead", "first_seen", "time_to_converge_s",
    "waiting_since", "failures", "failure_exit_codes",
]  # fmt: skip


@pytest.fixture()
def db(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    shas = build_repo(tmp_path / "puppet")
    con = open_db(tmp_path)
    write_fleet(con, shas, hour_base(20))
    gitgraph.load_graph(con, tmp_path / "puppet")
    con.close()
    return tmp_path / "fleet.duckdb", shas


def run(db: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["--db", str(db), *args], catch_exceptions=False)


def documents(text: str) -> list[Any]:
    decoder, docs, i = json.JSONDecoder(), [], 0
    while text[i:].strip():
        doc, end = decoder.raw_decode(text, i + len(text[i:]) - len(text[i:].lstrip()))
        docs.append(doc)
        i = end
    return docs


def test_json_document_is_the_documented_shape(db: tuple[Path, dict[str, str]]) -> None:
    path, s = db
    result = run(path, "rollout", s["T"][:8], "--format", "json", "--part", "report")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert list(doc) == ["summary", "roles", "curve", "stragglers", "hosts"]
    assert list(doc["summary"]) == SUMMARY_KEYS
    assert list(doc["hosts"][0]) == HOST_KEYS
    summary = doc["summary"]
    assert (summary["converged"], summary["hosts"]) == (4, 9)
    assert summary["pct_converged"] == pytest.approx(400 / 9)  # not rounded
    assert (summary["p50_converge_s"], summary["max_converge_s"]) == (7200, 36000)
    assert summary["first_seen"].endswith("Z")
    assert list(doc["curve"][0]) == ["hour", "converged"]
    assert doc["hosts"][0]["status"] == "failed"  # worst first
    assert doc["hosts"][0]["failure_exit_codes"] == [1, 1]


def test_parts_csv_and_table(db: tuple[Path, dict[str, str]]) -> None:
    path, s = db
    curve = run(path, "rollout", s["T"], "--format", "csv", "--part", "curve").stdout
    lines = curve.splitlines()
    assert lines[0] == "hour,converged"
    assert lines[1].endswith(",1") and lines[2].endswith(",3")
    roles = json.loads(run(path, "rollout", s["T"], "--format", "json", "--part", "roles").stdout)
    assert [(r["role"], r["converged"]) for r in roles] == [("db", 1), ("web", 3)]
    hosts_csv = run(path, "rollout", s["T"], "--format", "csv").stdout
    assert "failure_exit_codes" in hosts_csv.splitlines()[0] and ",2,1 1\n" in hosts_csv
    table = run(path, "rollout", s["T"]).stdout
    assert "p50 2h 00m, p90 10h 00m, max 10h 00m" in table
    assert "converged hosts by hour" in table and "█" in table
    assert "stragglers" in table


def test_min_gate(db: tuple[Path, dict[str, str]]) -> None:
    path, s = db
    assert run(path, "rollout", s["T"], "--min", "44", "-f", "csv").exit_code == 0
    assert run(path, "rollout", s["T"], "--min", "45", "-f", "csv").exit_code == 3
    assert run(path, "rollout", s["T"], "--role", "web", "--min", "75", "-f", "csv").exit_code == 0


def write_mirror(root: Path, host: str, sha: str, ts: str) -> None:
    record = {
        "schema_version": 1, "ts": ts, "success": True, "exit_code": 2, "git_repo": None,
        "git_branch": "main", "git_sha": sha, "override_sha": None, "vault_sha": None,
        "override_path": "/etc/puppet/ronin_settings", "role": "web", "duration_s": 30,
    }  # fmt: skip
    (root / host).mkdir(parents=True, exist_ok=True)
    with (root / host / "history.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def test_watch_ingests_each_time_and_stops(db: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    path, s = db
    mirror = tmp_path / "mirror"
    when = hour_base(1) + timedelta(minutes=5)
    write_mirror(mirror, "h10", s["R"], when.isoformat()[:19] + "Z")
    out = run(path, "rollout", s["T"], "--watch", "--from", str(mirror), "--interval", "0",
              "--iterations", "2", "-f", "json", "--part", "summary")  # fmt: skip
    assert out.exit_code == 0, out.output
    docs = documents(out.stdout)
    assert len(docs) == 1  # json: one document, of the last refresh; the others on stderr
    assert docs[0][0]["hosts"] == 10  # h10 was ingested before the first refresh
    assert docs[0][0]["converged"] == 5
    assert out.stderr.count("5 of 10 hosts converged") == 1  # bounded: the rollout is not complete


def test_watch_stops_when_complete(tmp_path: Path) -> None:
    shas = build_repo(tmp_path / "puppet")
    mirror = tmp_path / "mirror"
    write_mirror(mirror, "h1", shas["T"], (hour_base(2)).isoformat()[:19] + "Z")
    path = tmp_path / "fleet.duckdb"
    out = run(path, "rollout", shas["T"], "--watch", "--from", str(mirror), "--interval", "0",
              "--iterations", "5", "-f", "json", "--part", "summary")  # fmt: skip
    assert out.exit_code == 0, out.output
    docs = documents(out.stdout)
    assert len(docs) == 1 and docs[0][0]["pct_converged"] == 100.0


def test_watch_without_ingest_stops_when_the_gate_is_met(db: tuple[Path, dict[str, str]]) -> None:
    path, s = db
    met = run(path, "rollout", s["T"], "--watch", "--interval", "0", "--iterations", "3",
              "--min", "40", "-f", "json", "--part", "summary")  # fmt: skip
    assert met.exit_code == 0 and len(documents(met.stdout)) == 1
    unmet = run(path, "rollout", s["T"], "--watch", "--interval", "0", "--iterations", "2",
                "--min", "50", "-f", "json", "--part", "summary")  # fmt: skip
    assert unmet.exit_code == 3 and len(documents(unmet.stdout)) == 1
    assert unmet.stderr.count("hosts converged;") == 1 and "gate not met" in unmet.stderr
