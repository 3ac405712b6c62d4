"""How each reporting command presents its frames: columns, ages, colours.

report.py asks the questions; this module decides what a person sees. json and
csv carry the typed columns (full shas, ISO timestamps); the table is for eyes.
"""

from __future__ import annotations

import sys
from typing import Any

import polars as pl

from pipeline import render

STATUS_COLUMNS = ("host", "role", "os", "pp_sha", "pp_last", "applied", "healthy", "last_seen")
_FLAG_STYLE = {"Y": "green", "N": "bold red", "?": "yellow", "-": "dim"}


def _flag_style(value: Any) -> str | None:
    return _FLAG_STYLE.get(value) if isinstance(value, str) else None


def status_table(frame: pl.DataFrame) -> pl.DataFrame:
    """The monitor's columns: 7-char sha, age of the last run (FAIL when it failed)."""
    pp_last = [
        ("" if a is None else render.age(a) + ("" if ok else " FAIL"))
        for a, ok in zip(frame["pp_age_s"], frame["pp_success"], strict=True)
    ]
    seen = [render.age(a) if a is not None else "never" for a in frame["last_seen_age_s"]]
    return frame.select(
        "host", "role", "os",
        pl.col("pp_sha").str.slice(0, 7).alias("pp_sha"),
        pl.Series("pp_last", pp_last, dtype=pl.Utf8),
        "applied", "healthy",
        pl.Series("last_seen", seen, dtype=pl.Utf8),
    )  # fmt: skip


def emit_status(frame: pl.DataFrame, fmt: str) -> None:
    if fmt != "table":
        render.emit(frame.drop("last_seen_age_s"), fmt)
        return
    table = status_table(frame)
    render.emit(
        table, fmt,
        styles={
            "applied": _flag_style, "healthy": _flag_style,
            "pp_last": lambda v: "bold red" if v and v.endswith("FAIL") else None,
        },
    )  # fmt: skip
    counts = frame.group_by("applied").len().sort("applied")
    summary = ", ".join(f"{n} {a}" for a, n in counts.iter_rows())
    print(f"{frame.height} hosts; applied: {summary}", file=sys.stderr)


_STATUS_STYLE = {
    "converged": "green", "failed": "bold red", "regressed": "magenta",
    "pending": "yellow", "unreported": "dim",
}  # fmt: skip


def emit_rollout(summary: pl.DataFrame, hosts: pl.DataFrame, fmt: str) -> None:
    """json: one object {summary, hosts}; csv: the hosts; table: both."""
    if fmt == "json":
        import json

        doc = {
            "summary": [
                {k: render._jsonable(v) for k, v in r.items()}
                for r in summary.iter_rows(named=True)
            ][0],
            "hosts": [
                {k: render._jsonable(v) for k, v in r.items()} for r in hosts.iter_rows(named=True)
            ],
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    if fmt == "csv":
        render.emit(hosts, "csv")
        return
    s = summary.row(0, named=True)
    print(
        f"commit {s['sha']}  first seen {render._jsonable(s['first_seen']) or 'never'}\n"
        f"{s['pct_converged'] or 0}% converged: {s['converged']} of {s['hosts']} hosts; "
        f"{s['failed']} failed, {s['regressed']} regressed, {s['pending']} pending, "
        f"{s['unreported']} unreported\n"
    )
    table = hosts.select(
        "host", "role", "status",
        pl.col("latest_sha").str.slice(0, 7),
        "latest_ts", "latest_exit_code", "converged_at",
    )  # fmt: skip
    render.emit(table, "table", styles={"status": lambda v: _STATUS_STYLE.get(v)})


def emit_history(frame: pl.DataFrame, fmt: str) -> None:
    if fmt != "table":
        render.emit(frame, fmt)
        return
    table = frame.select(
        "ts",
        pl.when(pl.col("success")).then(pl.lit("ok")).otherwise(pl.lit("FAIL")).alias("result"),
        "exit_code", "stage",
        pl.col("git_sha").str.slice(0, 7), "git_branch", "role", "duration_s",
        pl.col("override_sha").str.slice(0, 8), pl.col("vault_sha").str.slice(0, 8), "source",
    )  # fmt: skip
    render.emit(table, "table", styles={"result": lambda v: "bold red" if v == "FAIL" else "green"})
