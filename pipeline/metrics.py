"""The fleet's state as Prometheus text exposition, for node_exporter's textfile collector.

One gauge family per question an alert asks (how old is the last run, did it succeed,
which commit, is the override applied, is the worker healthy) plus a configured
rollout's share. The file is replaced atomically so the collector never reads half.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import duckdb

from pipeline.errors import FleetstateError

_FLAG = {"Y": 1, "N": 0}


def escape(value: object) -> str:
    """A label value: backslash, double quote and newline escaped, None as empty."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: object) -> str:
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"


def _family(name: str, help_text: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    lines += [f"{name}{labels} {_number(value)}" for labels, value in samples]
    return lines


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def host_metrics(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute(
        "SELECT host, role, epoch(pp_ts), pp_success, pp_sha, applied, healthy "
        "FROM host_state ORDER BY host"
    ).fetchall()
    ran = [r for r in rows if r[2] is not None]
    return [
        *_family("fleetstate_last_run_timestamp_seconds",
                 "When the latest puppet run on the host finished (unix time).",
                 [(_labels(host=r[0], role=r[1]), r[2]) for r in ran]),
        *_family("fleetstate_last_run_success", "1 when the latest puppet run succeeded.",
                 [(_labels(host=r[0], role=r[1]), 1 if r[3] else 0) for r in ran]),
        *_family("fleetstate_applied_commit_info",
                 "The commit the latest puppet run applied, as the sha label (always 1).",
                 [(_labels(host=r[0], role=r[1], sha=r[4]), 1) for r in ran]),
        *_family("fleetstate_override_applied",
                 "1 when the host's current override is what puppet last applied "
                 "(APPLIED Y, or - with none), 0 when not (N); absent when unknown (?).",
                 [(_labels(host=r[0], role=r[1]), 0 if r[5] == "N" else 1)
                  for r in rows if r[5] in ("Y", "N", "-")]),
        *_family("fleetstate_healthy",
                 "1 when HEALTHY is Y, 0 when N; absent without worker-activity data.",
                 [(_labels(host=r[0], role=r[1]), _FLAG[r[6]]) for r in rows if r[6] in _FLAG]),
    ]  # fmt: skip


def rollout_metrics(con: duckdb.DuckDBPyConnection, sha: str, stale_hours: int = 24) -> list[str]:
    summary = con.execute(
        "SELECT hosts, converged, failed, pending, regressed, unreported, pct_converged, "
        "epoch(first_seen) FROM rollout_summary(?, stale_hours := ?)",
        [sha, stale_hours],
    ).fetchall()[0]
    hosts, statuses = summary[0], dict(
        zip(("converged", "failed", "pending", "regressed", "unreported"), summary[1:6],
            strict=True)
    )  # fmt: skip
    lines = _family(
        "fleetstate_rollout_converged_ratio",
        "Share of hosts in scope converged on the configured commit (0-1).",
        [(_labels(sha=sha), (statuses["converged"] / hosts) if hosts else 0)],
    )
    lines += _family(
        "fleetstate_rollout_hosts", "Hosts per rollout status for the configured commit.",
        [(_labels(sha=sha, status=s), n) for s, n in statuses.items()],
    )  # fmt: skip
    if summary[7] is not None:
        lines += _family(
            "fleetstate_rollout_first_seen_timestamp_seconds",
            "When the fleet first ran the configured commit (unix time).",
            [(_labels(sha=sha), summary[7])],
        )
    return lines


def exposition(
    con: duckdb.DuckDBPyConnection, rollout_sha: str | None = None, stale_hours: int = 24
) -> str:
    """The whole text file."""
    lines = host_metrics(con)
    if rollout_sha is not None:
        lines += rollout_metrics(con, rollout_sha, stale_hours)
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, text: str) -> None:
    """Temp file in the same directory, then rename: the collector sees old or new, never half."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:  # the error names the file asked for, not the temporary one
        raise FleetstateError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise FleetstateError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
