"""`fleetstate metrics`: Prometheus text exposition of the hand-built rollout fleet."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from analytics_support import add_run, at, build_repo, hour_base, open_db, write_fleet
from typer.testing import CliRunner

from pipeline import gitgraph, metrics
from pipeline.cli import app

SAMPLE = re.compile(r'^([a-z_]+)\{((?:[a-z_]+="(?:[^"\\]|\\.)*",?)*)\} (\S+)$')


def parse(text: str) -> dict[tuple[str, str], float]:
    """name, labels -> value; every non-comment line must be a valid sample."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = SAMPLE.match(line)
        assert m, line
        samples[(m.group(1), m.group(2))] = float(m.group(3))
    return samples


def test_metrics_file(tmp_path: Path) -> None:
    shas = build_repo(tmp_path / "puppet")
    con = open_db(tmp_path)
    base = hour_base(20)
    write_fleet(con, shas, base)
    gitgraph.load_graph(con, tmp_path / "puppet")
    con.close()
    out = tmp_path / "fleetstate.prom"
    result = CliRunner().invoke(app, ["--db", str(tmp_path / "fleet.duckdb"), "metrics",
                                      "--out", str(out), "--rollout", shas["T"][:10]])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    m = parse(out.read_text())
    h4 = 'host="h4",role="db"'
    assert m[("fleetstate_last_run_timestamp_seconds", h4)] == at(base, 6).timestamp()
    assert m[("fleetstate_last_run_success", h4)] == 0
    assert m[("fleetstate_applied_commit_info", f'host="h4",role="db",sha="{shas["R"]}"')] == 1
    # h3 last applied an override, and no collector has seen the host since: its run is the truth
    assert m[("fleetstate_override_applied", 'host="h3",role="web"')] == 1
    assert m[("fleetstate_override_applied", h4)] == 0  # latest run failed: N
    assert not [k for k in m if k[0] == "fleetstate_healthy"]  # no worker data: absent
    target = f'sha="{shas["T"]}"'
    assert m[("fleetstate_rollout_converged_ratio", target)] == 4 / 9
    assert m[("fleetstate_rollout_hosts", target + ',status="failed"')] == 1
    assert m[("fleetstate_rollout_first_seen_timestamp_seconds", target)] == at(base, 0).timestamp()
    assert sum(1 for k in m if k[0] == "fleetstate_last_run_success") == 9


def test_label_values_are_escaped(tmp_path: Path) -> None:
    con = open_db(tmp_path)
    add_run(con, "odd", hour_base(1) + timedelta(minutes=1), "b" * 40, role='a"b\\c\nd')
    text = metrics.exposition(con)
    assert 'role="a\\"b\\\\c\\nd"' in text
    assert parse(text)
