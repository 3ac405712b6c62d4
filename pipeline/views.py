"""How each reporting command presents its frames: columns, ages, colours.

report.py asks the questions; this module decides what a person sees. json and
csv carry the typed columns (full shas, ISO timestamps); the table is for eyes.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import polars as pl

from pipeline import charts, render

if TYPE_CHECKING:
    from pipeline import analytics


_STATUS_STYLE = {
    "converged": "green", "failed": "bold red", "regressed": "magenta",
    "pending": "yellow", "unreported": "dim",
}  # fmt: skip


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


ROLLOUT_PARTS = ("hosts", "roles", "curve", "stragglers", "summary")


def _records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return [{k: render._jsonable(v) for k, v in r.items()} for r in frame.iter_rows(named=True)]


def rollout_document(r: analytics.Rollout) -> dict[str, Any]:
    """The json of `fleetstate rollout` (documented in docs/analytics.md; keys only ever added)."""
    return {
        "summary": _records(r.summary)[0],
        "roles": _records(r.roles),
        "curve": _records(r.curve),
        "stragglers": _records(r.stragglers),
        "hosts": _records(r.hosts),
    }


def _flat(frame: pl.DataFrame) -> pl.DataFrame:
    """Lists (exit codes, branches) as space-separated text, for csv."""
    lists = [c for c, t in frame.schema.items() if isinstance(t, pl.List)]
    return frame.with_columns(_spaced(c) for c in lists)


def _spaced(column: str) -> pl.Expr:
    """A list column as its items joined by spaces, a null item as `-` (a failure before
    puppet started has no exit code; list.join would drop it, so 3 failures read `1 4`)."""
    items = pl.element().cast(pl.Utf8).fill_null("-")
    return pl.col(column).list.eval(items).list.join(" ")


def emit_rollout_depth(r: analytics.Rollout, fmt: str, part: str | None = None) -> None:
    """json/csv: one part as an array (hosts by default), or with part 'report' (json) the
    whole document as one object; table: everything (summary, convergence, curve chart,
    roles, stragglers, hosts), or the one part asked for."""
    if fmt == "json" and part == "report":
        sys.stdout.write(json.dumps(rollout_document(r), indent=2) + "\n")
        return
    if fmt in ("json", "csv"):
        frame: pl.DataFrame = getattr(r, part or "hosts")
        render.emit(_flat(frame) if fmt == "csv" else frame, fmt)
        return
    everything = part in (None, "report")
    sections = [
        (everything or part == "summary", _summary_lines(r)),
        (everything or part == "curve", _curve_lines(r)),
        (everything or part == "roles", _role_lines(r)),
    ]
    text = [line for wanted, lines in sections if wanted for line in lines]
    for line in text[1:] if text and text[0] == "" else text:
        print(line)
    styles = {"status": lambda v: _STATUS_STYLE.get(v)}
    if (everything or part == "stragglers") and r.stragglers.height:
        print("\nstragglers (longest waiting first)" if everything else "stragglers")
        render.emit(_stragglers_table(r.stragglers), "table", styles=styles)
    if everything or part == "hosts":
        if everything:
            print()
        render.emit(_hosts_table(r.hosts), "table", styles=styles)


def _dur(seconds: Any) -> str:
    return "-" if seconds is None else render.age(seconds)


def _summary_lines(r: analytics.Rollout) -> list[str]:
    s = r.summary.row(0, named=True)
    subject = s["subject"] if s["subject"] is not None else "(commit graph not loaded)"
    subject = render.printable(subject)  # a commit subject is anyone's text
    authored = render._jsonable(s["author_time"]) or "-"
    return [
        f"commit {s['sha']}  {subject}",
        f"authored {authored}  first seen {render._jsonable(s['first_seen']) or 'never'}"
        + (f"  branches {render.printable(' '.join(s['branches']))}" if s["branches"] else ""),
        f"{render.percent(s['pct_converged'] or 0)}% converged: {s['converged']} of "
        f"{s['hosts']} hosts; "
        f"{s['failed']} failed, {s['regressed']} regressed, {s['pending']} pending, "
        f"{s['unreported']} unreported",
        f"time to converge since first seen: p50 {_dur(s['p50_converge_s'])}, "
        f"p90 {_dur(s['p90_converge_s'])}, max {_dur(s['max_converge_s'])}",
    ]


def _curve_lines(r: analytics.Rollout) -> list[str]:
    if not r.curve.height:
        return []
    hosts = r.summary.row(0, named=True)["hosts"]
    first, last = r.curve["hour"][0], r.curve["hour"][-1]
    return ["", "converged hosts by hour"] + charts.curve(
        r.curve["converged"].to_list(), max(hosts, 1),
        first.strftime("%m-%d %H:%M"), last.strftime("%m-%d %H:%M"),
    )  # fmt: skip


def _role_lines(r: analytics.Rollout) -> list[str]:
    if not r.roles.height:
        return []
    # roles come from hosts; a host without one is not a role named "None"
    roles = [render.printable(x) if x is not None else "(no role)" for x in r.roles["role"]]
    return ["", "converged by role"] + charts.hbars(
        roles, r.roles["pct_converged"].to_list(), width=30,
        top=100, notes=[f"{c}/{h}" for c, h in zip(r.roles["converged"], r.roles["hosts"],
                                                 strict=True)],
    )  # fmt: skip


def _stragglers_table(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(
        "host", "role", "status",
        pl.Series("waiting", [render.age(w) for w in frame["waiting_s"]], dtype=pl.Utf8),
        "failures",
        _spaced("failure_exit_codes").alias("exit_codes"),
        pl.col("latest_sha").str.slice(0, 7), "behind", "ahead",
    )  # fmt: skip


def _hosts_table(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(
        "host", "role", "status",
        pl.col("latest_sha").str.slice(0, 7), "behind", "ahead",
        "latest_ts", "latest_exit_code", "converged_at",
        pl.Series("to_converge", [_dur(x) for x in frame["time_to_converge_s"]], dtype=pl.Utf8),
    )  # fmt: skip


def emit_drift(daily: pl.DataFrame, by_day: pl.DataFrame, fmt: str, title: str) -> None:
    """json/csv: the drift_daily rows; table: a chart of drift by day, then the rows."""
    if fmt != "table":
        render.emit(daily, fmt)
        return
    chart = drift_chart(by_day)
    for line in chart:
        print(line)
    if chart:
        print()
    table = daily.with_columns(pl.col("modal_sha").str.slice(0, 7))
    render.emit(table, "table", title=title,
                styles={"off_modal": lambda v: "yellow" if v else None,
                        "failing": lambda v: "bold red" if v else None})  # fmt: skip


def drift_chart(by_day: pl.DataFrame) -> list[str]:
    """One line a day: the share of reporting hosts off their role's modal commit."""
    if by_day.is_empty():
        return []
    notes = [
        f"{off}/{n} off modal, {fail} failing, {diff} config not applied"
        for off, n, fail, diff in zip(
            by_day["off_modal"], by_day["hosts"], by_day["failing"],
            by_day["config_differs"], strict=True,
        )
    ]  # fmt: skip
    share = [100.0 * o / n if n else 0.0 for o, n in zip(by_day["off_modal"], by_day["hosts"],
                                                         strict=True)]  # fmt: skip
    lines = ["hosts off their role's modal commit, by day (bar: share of hosts reporting)"]
    lines += charts.hbars([str(d) for d in by_day["day"]], share, width=40, top=100, notes=notes)
    return lines
