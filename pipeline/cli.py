"""The `fleetstate` command: parse, open the warehouse, call the core, render.

Domain errors (FleetstateError) become one line on stderr and exit code 1 here,
and only here. Heavy modules (duckdb, polars, paramiko) are imported inside the
commands so that `--help` starts instantly.
"""

from __future__ import annotations

import re
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.errors import FleetstateError
from pipeline.exitcodes import Exit

if TYPE_CHECKING:
    import duckdb

    from pipeline.analytics import Rollout

app = typer.Typer(
    help="Ground truth of what masterless Puppet applied on every host, and when.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: wrapped to the terminal, never cut off
    context_settings={"max_content_width": 120},
)


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="table, json or csv.")]


class State:
    db: Path = Path("data/fleetstate.duckdb")
    connections: list[duckdb.DuckDBPyConnection] = []

    def close(self) -> None:
        """Close what the command opened, so an in-process caller can open the file again."""
        while self.connections:
            self.connections.pop().close()


state = State()


@app.callback()
def main_options(
    ctx: typer.Context,
    db: Annotated[
        Path | None,
        typer.Option(
            envvar="FLEETSTATE_DB", help="Warehouse file (default: data/fleetstate.duckdb)."
        ),
    ] = None,
) -> None:
    """Ground truth of what masterless Puppet applied on every host, and when."""
    from pipeline.warehouse import DEFAULT_DB

    state.db = db or DEFAULT_DB
    ctx.call_on_close(state.close)


DEFAULT_MIRROR = Path("data/mirror")

# How `ingest` collects over SSH; `rollout --watch --ingest` takes the same options.
JobsOpt = Annotated[int, typer.Option(min=1, max=256, metavar="N", help="Hosts collected at once.")]
AcceptNewOpt = Annotated[
    bool,
    typer.Option(
        help="Trust and save keys of hosts not yet in known_hosts (as ssh_config's "
        "StrictHostKeyChecking accept-new does per host); a changed or revoked key is always "
        "refused."
    ),
]
SshConfigOpt = Annotated[
    Path | None, typer.Option(help="ssh_config to read (default: ~/.ssh/config).")
]
KnownHostsOpt = Annotated[
    Path | None,
    typer.Option(
        help="Where host keys are looked up and new ones saved (default: ssh_config's "
        "UserKnownHostsFile, else ~/.ssh/known_hosts); /etc/ssh/ssh_known_hosts (or "
        "GlobalKnownHostsFile) is read too, never written."
    ),
]
UserOpt = Annotated[str | None, typer.Option(help="SSH user when ssh_config names none.")]
HostTimeoutOpt = Annotated[
    float, typer.Option(min=0.1, max=86400, metavar="SECONDS", help="Seconds one host may take.")
]
ConnectTimeoutOpt = Annotated[
    float, typer.Option(min=0.1, max=3600, metavar="SECONDS", help="Seconds to establish SSH.")
]
RetriesOpt = Annotated[
    int,
    typer.Option(
        min=0, max=10, metavar="N", help="Retries of refused/timed-out/reset connections."
    ),
]
PortOpt = Annotated[int | None, typer.Option(help="SSH port when ssh_config names none.")]
IdentityOpt = Annotated[
    list[Path] | None, typer.Option(metavar="FILE", help="Private key file (repeatable).")
]
# the parameters above, by name, as `ingest` takes them
SSH_OPTIONS = (
    "jobs", "accept_new_host_keys", "ssh_config", "known_hosts", "user", "timeout",
    "connect_timeout", "retries", "port", "identity",
)  # fmt: skip


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the option `name` was given on the command line (not a default or envvar)."""
    source = ctx.get_parameter_source(name)  # click's ParameterSource, which typer vendors
    return source is not None and source.name == "COMMANDLINE"


def _sha_form(value: str | None) -> str | None:
    """What cannot name a commit (7 to 40 hex digits) is a usage error (exit 2)."""
    if value is not None and not re.fullmatch(r"[0-9a-fA-F]{7,40}", value):
        raise typer.BadParameter(f"not a commit sha or prefix of 7+ hex digits: {value!r}")
    return value


def _open(read_only: bool = True) -> duckdb.DuckDBPyConnection:
    from pipeline import warehouse

    con = warehouse.connect(state.db, read_only=read_only)
    state.connections.append(con)
    if not read_only:  # an ingest of any kind: the demo may no longer replace it
        warehouse.mark_written(con)
    return con


def _close(con: duckdb.DuckDBPyConnection) -> None:
    """Close a connection of `_open` before the command ends (and forget it)."""
    if con in state.connections:
        state.connections.remove(con)
    con.close()


def _progress(message: str) -> None:
    """A line on stderr; control characters (from hosts, git, APIs) shown escaped."""
    from pipeline.render import printable

    print(printable(message), file=sys.stderr, flush=True)


@app.command()
def ingest(
    targets: Annotated[
        list[str] | None,
        typer.Argument(metavar="HOST|FILE", help="Host names or host-list files."),
    ] = None,
    from_dir: Annotated[
        Path | None, typer.Option("--from", help="Load a mirror-layout directory instead of SSH.")
    ] = None,
    mirror: Annotated[
        Path, typer.Option(envvar="FLEETSTATE_MIRROR", help="Where collected bytes are kept.")
    ] = DEFAULT_MIRROR,
    jobs: JobsOpt = 16,
    accept_new_host_keys: AcceptNewOpt = False,
    ssh_config: SshConfigOpt = None,
    known_hosts: KnownHostsOpt = None,
    user: UserOpt = None,
    timeout: HostTimeoutOpt = 60.0,
    connect_timeout: ConnectTimeoutOpt = 10.0,
    retries: RetriesOpt = 2,
    port: PortOpt = None,
    identity: IdentityOpt = None,
) -> None:
    """Pull new history bytes and current state from hosts, then load them.

    \b
    Example: fleetstate ingest hosts.txt --jobs 32
             fleetstate ingest --from data/sample-fleet
    """
    from pipeline import load

    if from_dir is None and not targets:
        raise typer.BadParameter("give host names or host-list files, or --from DIR")
    if from_dir is not None and targets:  # --from is instead of SSH: not both
        raise typer.BadParameter("give host names or --from DIR, not both", param_hint="--from")
    if from_dir is not None:  # before the warehouse is made: a typo must not leave one
        load.check_mirror(from_dir)
    failed: dict[str, str] = {}
    if targets:
        from pipeline import collect
        from pipeline import targets as targets_mod
        from pipeline.mirror import Mirror

        hosts = targets_mod.parse_targets(targets)
        options = collect.CollectOptions(
            ssh_config=ssh_config, known_hosts=known_hosts, user=user,
            accept_new_host_keys=accept_new_host_keys, host_timeout=timeout, jobs=jobs,
            connect_timeout=connect_timeout, retries=retries, port=port,
            identity_files=list(identity or []),
        )  # fmt: skip
        result = collect.collect_fleet(hosts, Mirror(mirror), options, progress=_collect_progress())
        failed = result.hosts_failed
        from_dir = mirror
        for host, error in sorted(failed.items()):
            _progress(f"failed: {host}: {error}")
    assert from_dir is not None
    con = _open(read_only=False)
    try:
        stats = load.load_mirror(
            con,
            from_dir,
            progress=lambda s: _progress(f"loaded {s.bytes_read:,} bytes, {s.runs_added:,} runs"),
        )
    finally:  # let go at once: `rollout --watch` sleeps after this, a cron ingest runs
        _close(con)
    _progress(
        f"{stats.files} files, {stats.lines:,} new lines: {stats.runs_added:,} runs, "
        f"{stats.observations_added:,} observations, {stats.rejects_added:,} rejects"
        + (
            f", {stats.pending_bytes:,} bytes of unfinished lines left for next time"
            if stats.pending_bytes
            else ""
        )
        + (
            f"; {stats.aliases_skipped} files skipped: links to files of other hosts"
            if stats.aliases_skipped
            else ""
        )
    )
    for problem in stats.unreadable[:20]:
        _progress(f"not read: {problem}")
    if len(stats.unreadable) > 20:
        _progress(f"not read: {len(stats.unreadable) - 20} more files")
    if failed or stats.unreadable:
        raise typer.Exit(Exit.PARTIAL)


def _collect_progress() -> Any:
    try:
        from pipeline.progress import make_progress  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return make_progress()


@app.command()
def status(
    filter_: Annotated[
        str,
        typer.Option("--filter", help="e.g. 'applied=N role~talos pp_last>20h sort:pp_last:desc'"),
    ] = "",
    fmt: FormatOpt = Format.table,
) -> None:
    """The monitor: one row per host, what puppet last applied and whether it is current.

    \b
    Example: fleetstate status --filter 'applied=N|? pp_last>2h'
    """
    from pipeline import filters, monitor

    try:
        query = filters.parse(filter_)
    except FleetstateError as exc:
        raise typer.BadParameter(str(exc), param_hint="--filter") from None
    monitor.emit_status(monitor.status(_open(), query), fmt.value)


class Part(StrEnum):
    hosts = "hosts"
    roles = "roles"
    curve = "curve"
    stragglers = "stragglers"
    summary = "summary"
    report = "report"


@app.command()
def rollout(
    ctx: typer.Context,
    sha: Annotated[
        str,
        typer.Argument(help="Full sha or a unique prefix of 7+ hex digits.", callback=_sha_form),
    ],
    role: Annotated[str | None, typer.Option(help="Only hosts of this role.")] = None,
    min_pct: Annotated[
        float | None,
        typer.Option(
            "--min",
            min=0,
            max=100,
            metavar="PCT",
            help="Exit 3 when less than this percentage of hosts has converged.",
        ),
    ] = None,
    stale_hours: Annotated[
        int, typer.Option(min=0, metavar="HOURS", help="Silent this long = unreported.")
    ] = 24,
    part: Annotated[
        Part | None,
        typer.Option(
            help="One part (json/csv default hosts, table default everything); "
            "'report': everything as one json object."
        ),
    ] = None,
    watch: Annotated[
        bool, typer.Option(help="Ingest, refresh, repeat until complete (or --min met).")
    ] = False,
    interval: Annotated[
        float | None,
        typer.Option(
            min=0, max=86400, metavar="SECONDS", help="--watch: seconds between refreshes [60]."
        ),
    ] = None,
    from_dir: Annotated[
        Path | None, typer.Option("--from", help="--watch: load this mirror directory each time.")
    ] = None,
    ingest_targets: Annotated[
        list[str] | None,
        typer.Option(
            "--ingest", metavar="HOST|FILE", help="--watch: collect these hosts each time."
        ),
    ] = None,
    iterations: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="--watch: stop after this many refreshes."),
    ] = None,
    mirror: Annotated[
        Path,
        typer.Option(
            envvar="FLEETSTATE_MIRROR", help="--watch --ingest: where collected bytes are kept."
        ),
    ] = DEFAULT_MIRROR,
    jobs: JobsOpt = 16,
    accept_new_host_keys: AcceptNewOpt = False,
    ssh_config: SshConfigOpt = None,
    known_hosts: KnownHostsOpt = None,
    user: UserOpt = None,
    timeout: HostTimeoutOpt = 60.0,
    connect_timeout: ConnectTimeoutOpt = 10.0,
    retries: RetriesOpt = 2,
    port: PortOpt = None,
    identity: IdentityOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Progress of a commit across the fleet, in depth: statuses, how far behind or ahead each
    host is, time to converge (p50, p90, max), the hourly convergence curve, roles, stragglers.

    \b
    Example: fleetstate rollout 3f2a9c1 --role gecko_t_linux_talos --min 95
             fleetstate rollout 3f2a9c1 --watch --interval 300 --ingest hosts.txt
             fleetstate rollout 3f2a9c1 --format csv --part curve

    --watch --ingest collects as `ingest` does, and takes its SSH options (--jobs to
    --identity below).
    """
    from pipeline import locks, views

    if not watch and (
        from_dir is not None or ingest_targets or iterations is not None or interval is not None
    ):
        raise typer.BadParameter(
            "only with --watch", param_hint="--from/--ingest/--iterations/--interval"
        )
    if part is not None and part.value == "report" and fmt is not Format.json:
        raise typer.BadParameter(
            "'report' is one json object: with --format json", param_hint="--part"
        )
    if from_dir is not None and ingest_targets:
        raise typer.BadParameter("--from DIR or --ingest TARGET, not both", param_hint="--from")
    collecting = ("mirror", *SSH_OPTIONS)
    stray = [name for name in collecting if _given(ctx, name)]  # FLEETSTATE_MIRROR: no request
    if not ingest_targets and stray:
        raise typer.BadParameter(
            "only with --watch --ingest",
            param_hint="/".join("--" + name.replace("_", "-") for name in stray),
        )
    ssh = {name: ctx.params[name] for name in SSH_OPTIONS}  # as parsed, for the ingest
    ingesting = watch and (from_dir is not None or bool(ingest_targets))
    refreshes = 0
    shown: Rollout | None = None  # json and csv: the refresh stdout has not had yet
    try:
        while True:
            refreshes += 1
            try:
                if ingesting:
                    _ingest_quietly(ingest_targets, from_dir, mirror, ssh)
                # after an ingest in this process, reopen the warehouse the way the ingest did
                result = _rollout_once(sha, role, stale_hours, read_only=not ingesting)
            except locks.Busy as exc:  # a cron ingest, say: a watch tries again next time
                if not watch or refreshes == iterations:
                    raise
                _progress(f"{exc} (refresh {refreshes} skipped)")
                time.sleep(60.0 if interval is None else interval)
                continue
            gate_met = min_pct is not None and result.meets(min_pct)
            last = not watch or result.complete or gate_met or refreshes == iterations
            if fmt is Format.table:
                if watch and sys.stdout.isatty():
                    print("\033[H\033[2J", end="")
                views.emit_rollout_depth(result, fmt.value, part.value if part else None)
            elif last:  # json and csv: one document on stdout, the refreshes before on stderr
                shown = None
                views.emit_rollout_depth(result, fmt.value, part.value if part else None)
            else:
                shown = result
                _progress(_rollout_line(result))
            if last:
                break
            time.sleep(60.0 if interval is None else interval)
    except BaseException as exc:  # Ctrl-C (in a query, an error of DuckDB's) ends a watch
        if _from_ctrl_c(exc) and shown is not None:  # stdout still gets its document
            views.emit_rollout_depth(shown, fmt.value, part.value if part else None)
        raise
    if min_pct is not None and not result.meets(min_pct):
        s = result.summary.row(0, named=True)
        if not s["hosts"]:
            _progress(f"gate not met: no hosts in scope (--min {min_pct:g}%)")
        else:
            share = _share_below(100 * s["converged"] / s["hosts"], min_pct)
            _progress(
                f"gate not met: {s['converged']} of {s['hosts']} hosts converged "
                f"({share}%) < {min_pct:g}%"
            )
        raise typer.Exit(Exit.GATE)


def _share_below(share: float, limit: float) -> str:
    """`share` (below `limit`) with as many digits as it takes to read as below it:
    2 of 3 is 66.67 at 4 digits, which is not below --min 66.67."""
    for digits in range(4, 18):
        text = f"{share:.{digits}g}"
        if float(text) < limit:
            return text
    return repr(share)


def _rollout_line(result: Rollout) -> str:
    s = result.summary.row(0, named=True)
    return (
        f"{s['converged']} of {s['hosts']} hosts converged; {s['failed']} failed, "
        f"{s['pending']} pending, {s['regressed']} regressed, {s['unreported']} unreported"
    )


def _rollout_once(sha: str, role: str | None, stale_hours: int, read_only: bool) -> Rollout:
    from pipeline import analytics, report

    con = _open(read_only=read_only)
    try:
        return analytics.rollout(con, report.resolve_sha(con, sha), role, stale_hours)
    finally:
        con.close()


def _ingest_quietly(
    targets: list[str] | None, from_dir: Path | None, mirror: Path, ssh: dict[str, Any]
) -> None:
    """The same ingest the user would run; hosts that fail are reported, not fatal, in a watch."""
    try:
        ingest(targets=targets, from_dir=from_dir, mirror=mirror, **ssh)
    except typer.Exit as exc:
        if exc.exit_code != Exit.PARTIAL:
            raise


@app.command()
def history(
    host: Annotated[
        str, typer.Argument(help="Host name as in `status` (any case), or its unique short name.")
    ],
    limit: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="Only the newest N runs [all].")
    ] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """The runs of one host, newest first.

    \b
    Example: fleetstate history t-linux64-ms-001.test.releng.mdc1.mozilla.com --limit 10
    """
    from pipeline import report, views

    runs = report.history(_open(), host, None if limit is None else limit + 1)
    if limit is not None and runs.height > limit:  # said, so a script knows it is cut
        runs = runs.head(limit)
        _progress(f"the newest {limit} runs shown; the host has more (without --limit: all)")
    views.emit_history(runs, fmt.value)


class DriftPart(StrEnum):
    daily = "daily"
    intervals = "intervals"


@app.command()
def drift(
    since: Annotated[str, typer.Option(help="How far back: 30d, 12h, 2w.")] = "30d",
    role: Annotated[str | None, typer.Option(help="Only this role.")] = None,
    part: Annotated[
        DriftPart, typer.Option(help="daily (drift_daily) or intervals (host_intervals).")
    ] = DriftPart.daily,
    host: Annotated[str | None, typer.Option(help="intervals: only this host.")] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Drift over time: per day and role, how many commits the fleet ran and who was off the
    norm, failing, overridden, dirty, or not running its current override or vault.

    \b
    Example: fleetstate drift --since 14d --format csv
             fleetstate drift --part intervals --host t-linux64-ms-001.test.releng.mdc1.mozilla.com
    """
    from pipeline import analytics, render, views
    from pipeline.durations import parse_duration

    if host is not None and part is not DriftPart.intervals:
        raise typer.BadParameter("only with --part intervals", param_hint="--host")
    try:
        since_s = parse_duration(since)
    except FleetstateError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    if since_s == 0:
        raise typer.BadParameter("a duration longer than 0 (30d, 12h, 2w)", param_hint="--since")
    con = _open()
    if part is DriftPart.intervals:
        if host is not None:
            from pipeline import report

            host = report.resolve_host(con, host)
        frame = analytics.intervals(con, since_s, host, role)
        render.emit(frame, fmt.value, title=f"commit intervals over the last {since}")
        return
    daily = analytics.drift(con, since_s, role)
    title = f"drift over the last {since}"
    views.emit_drift(daily, analytics.drift_by_day(daily), fmt.value, title)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="Any read-only SQL.")],
    fmt: FormatOpt = Format.table,
) -> None:
    """Ad-hoc SQL against the warehouse, opened read-only.

    \b
    Example: fleetstate sql "SELECT role, count(*) FROM host_state GROUP BY role"
    """
    from pipeline import render, report

    con = _open()
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    render.emit(report.sql(con, query), fmt.value)


@app.command()
def rebuild(
    mirror: Annotated[
        Path, typer.Option(envvar="FLEETSTATE_MIRROR", help="The mirror to rebuild from.")
    ] = DEFAULT_MIRROR,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Rebuild even when files the warehouse loaded are not in the mirror, or when "
            "the old warehouse cannot be opened (what only it holds is then lost).",
        ),
    ] = False,
) -> None:
    """Drop the warehouse and recreate it from the mirror alone (after an upgrade, say).

    The commit graph and worker activity, which are not in the mirror, are copied from the
    old warehouse. A file the warehouse loaded that the mirror does not hold (loaded with
    ingest --from another directory) would be dropped: refused unless --force. So is an
    old warehouse that cannot be opened (its write-ahead log is not its own, say).

    \b
    Example: fleetstate rebuild --mirror data/mirror
    """
    from pipeline import load, warehouse

    if not mirror.is_dir():
        what = "is not a directory" if mirror.exists() else "does not exist"
        raise FleetstateError(f"mirror directory {mirror} {what}; nothing to rebuild from")
    have = load.mirror_files(mirror)

    def keeps_every_file(old: duckdb.DuckDBPyConnection) -> None:
        """Every file the warehouse loaded is one the rebuild reads (a host's older runs
        loaded with `ingest --from` an archive would go, though the mirror has the host)."""
        loaded = old.execute(
            "SELECT host, source_path FROM load_cursors ORDER BY host, source_path"
        ).fetchall()
        missing = [(host, path) for host, path in loaded if path not in have]
        if missing and not force:
            host, path = missing[0]
            raise FleetstateError(
                f"{len(missing)} file(s) the warehouse loaded are not in {mirror} (first: "
                f"{path}, of host {host}) and their runs would be dropped; rebuild from the "
                "mirror that holds them, or pass --force"
            )

    def loses_nothing(old: duckdb.DuckDBPyConnection, new: duckdb.DuckDBPyConnection) -> None:
        """No file's runs, and no history's or observation log's observations and rejects,
        are fewer than before: a history replaced since it was loaded, a file that cannot be
        read, or a state file's run that never reached the history would be lost."""
        if force:
            return
        lost = load.rows_lost(old, new)
        if lost:
            table, path, before, after = lost
            raise FleetstateError(
                f"the rebuilt warehouse would hold {after} {table} of {path} where the old "
                f"one holds {before} (the file was replaced or cannot be read since it was "
                "loaded); the old warehouse is kept. Pass --force to rebuild from the "
                "mirror as it is"
            )

    carry = warehouse.NOT_FROM_MIRROR
    with warehouse.rebuilding(
        state.db, carry, keeps_every_file, replace_unreadable=force, verify=loses_nothing
    ) as con:
        stats = load.load_mirror(con, mirror)
        if stats.unreadable and not force:
            raise FleetstateError(
                f"not read: {stats.unreadable[0]}"
                + (f" (and {len(stats.unreadable) - 1} more)" if len(stats.unreadable) > 1 else "")
                + "; the old warehouse is kept. Pass --force to rebuild without it"
            )
        warehouse.mark_written(con)  # not the demo's any more, if it was
    _progress(f"rebuilt {state.db}: {stats.runs_added:,} runs, {stats.rejects_added:,} rejects")


@app.command()
def demo(
    mirror: Annotated[
        Path, typer.Option(help="Where the sample fleet is written (replaced on each run).")
    ] = Path("data/demo"),  # git-ignored: the demo must not change the checkout
) -> None:
    """Run the whole pipeline on the bundled sample fleet: generate, ingest, status, rollout.

    \b
    Example: fleetstate demo
    """
    from pipeline import demo as demo_mod

    demo_mod.run(state.db, mirror, _progress)


@app.command("ingest-git")
def ingest_git(
    repo: Annotated[Path, typer.Argument(help="A local clone of the puppet repository.")],
) -> None:
    """Load the puppet repository's commit graph (new commits and branch tips) from a clone.

    Afterwards a host on a descendant of a rollout's target counts as at the target.
    Incremental: commits reachable from the branch tips saved last time are not read again.

    \b
    Example: git -C ~/ronin_puppet fetch && fleetstate ingest-git ~/ronin_puppet
    """
    from pipeline import gitgraph

    stats = gitgraph.load_graph(_open(read_only=False), repo)
    _progress(
        f"{stats.commits_added:,} new commits, {stats.refs} branches "
        f"({stats.refs_changed} moved, created or deleted)"
    )


@app.command("ingest-workers")
def ingest_workers(
    pools: Annotated[
        list[str],
        typer.Option(
            "--pool",
            envvar="FLEETSTATE_WORKER_POOLS",
            metavar="POOL",
            help="provisionerId/workerType; repeat, or comma-separate in the env var.",
        ),
    ],
    root_url: Annotated[
        str, typer.Option(envvar="TASKCLUSTER_ROOT_URL", help="Taskcluster deployment root URL.")
    ],
    timeout: Annotated[
        float,
        typer.Option(min=0.1, max=3600, metavar="SECONDS", help="Seconds per HTTP request."),
    ] = 30.0,
) -> None:
    """Record each worker's last-active time and quarantine from Taskcluster's queue (HEALTHY).

    Workers match hosts by short host name; unmatched workers are counted, not stored.

    \b
    Example: fleetstate ingest-workers --root-url https://firefox-ci-tc.services.mozilla.com \\
                 --pool releng-hardware/gecko-t-linux-talos
    """
    from datetime import UTC, datetime

    from pipeline import activity

    names = [p.strip() for item in pools for p in item.split(",") if p.strip()]
    if not names:
        raise typer.BadParameter("no pool given (provisionerId/workerType)", param_hint="--pool")
    fetched = [(pool, activity.fetch_workers(root_url, pool, timeout)) for pool in names]
    con = _open(read_only=False)
    now = datetime.now(UTC)  # one fetch: every pool's rows carry the same time
    for pool, workers in fetched:
        stats = activity.save_activity(con, root_url, pool, workers, observed_at=now)
        _progress(
            f"{pool}: {stats.workers} workers, {stats.matched} matched a host"
            + (f", unmatched: {' '.join(stats.unmatched[:10])}" if stats.unmatched else "")
        )


@app.command()
def metrics(
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write this file atomically (a .prom file for the "
            "node_exporter textfile collector); default stdout."
        ),
    ] = None,
    rollout_sha: Annotated[
        str | None,
        typer.Option(
            "--rollout",
            envvar="FLEETSTATE_ROLLOUT_SHA",
            callback=_sha_form,
            help="Also export the rollout share of this commit.",
        ),
    ] = None,
    stale_hours: Annotated[
        int, typer.Option(min=0, metavar="HOURS", help="Silent this long = unreported.")
    ] = 24,
) -> None:
    """The fleet state in Prometheus text format: last run time and success, applied commit,
    override applied, healthy, and a configured commit's rollout share.

    \b
    Example: fleetstate metrics --rollout 3f2a9c1 --out /var/lib/node_exporter/fleetstate.prom
    """
    from pipeline import metrics as metrics_mod
    from pipeline import report

    con = _open()
    sha = report.resolve_sha(con, rollout_sha) if rollout_sha else None
    text = metrics_mod.exposition(con, sha, stale_hours)
    if out is None:
        sys.stdout.write(text)
    else:
        metrics_mod.write_textfile(out, text)


def _one_line_summaries() -> None:
    """The command list shows each command's whole summary (its docstring's first
    paragraph as one line, wrapped to the terminal): left to click, a summary is cut to
    fit with '...'."""
    for info in app.registered_commands:
        if info.short_help is None and info.callback is not None and info.callback.__doc__:
            first = info.callback.__doc__.split("\n\n")[0]
            info.short_help = " ".join(first.split())


_one_line_summaries()


def main() -> None:
    """Entry point: run the app, mapping domain errors to one line and exit code 1, and
    Ctrl-C, wherever it lands, to one line and exit code 130."""
    import signal

    _interrupt_queries_on_ctrl_c()
    try:
        _run()
    except SystemExit as exc:  # typer turns Ctrl-C into a silent exit 130
        if exc.code == Exit.INTERRUPTED and _from_ctrl_c(exc):
            _interrupted()
        raise
    except BaseException as exc:  # in a query, DuckDB turns it into an error of its own
        if _from_ctrl_c(exc):
            _interrupted()
        raise
    finally:  # the command is over: Ctrl-C now would only break Python's own exit, with a
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # traceback of its shutdown


def _interrupted() -> None:
    """One line and exit 130. The signal DuckDB answered may still be pending for Python,
    which would raise it again on the way out (and die of SIGINT): it is ignored now."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("fleetstate: interrupted", file=sys.stderr)
    sys.exit(Exit.INTERRUPTED)


def _interrupt_queries_on_ctrl_c() -> None:
    """Ctrl-C stops a running DuckDB query at once. Python handles the signal only when the
    main thread runs Python again, and DuckDB, busy in a query, checks for it only now and
    then (a long `sql` query could run on); the signal's byte on a wakeup pipe reaches a
    thread that asks DuckDB to interrupt, and the query ends in KeyboardInterrupt or
    "Query interrupted", as usual."""
    import os
    import signal
    import threading

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def watch() -> None:
        while byte := os.read(read_end, 1):
            if byte[0] == signal.SIGINT:
                for con in list(state.connections):
                    try:
                        con.interrupt()
                    except Exception:  # noqa: S112 -- closed meanwhile: nothing to stop
                        continue

    threading.Thread(target=watch, name="ctrl-c", daemon=True).start()


# how DuckDB words Ctrl-C: "Query interrupted" (RuntimeError), "INTERRUPT Error:
# Interrupted!", or "... failed: KeyboardInterrupt:" when it met the signal in a Python scan
_CTRL_C_WORDS = ("KeyboardInterrupt", "Query interrupted", "Interrupted!")


def _from_ctrl_c(exc: BaseException) -> bool:
    """Whether `exc` is Ctrl-C: a KeyboardInterrupt in the chain that led to it, or DuckDB's
    error for one."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, KeyboardInterrupt) or (
            not isinstance(seen, SystemExit) and any(w in str(seen) for w in _CTRL_C_WORDS)
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _run() -> None:
    try:
        app()
    except (FleetstateError, OSError) as exc:
        _progress(f"fleetstate: error: {exc}")
        sys.exit(Exit.ERROR)
    except MemoryError:
        _progress("fleetstate: error: out of memory (FLEETSTATE_BATCH_BYTES=32M uses less)")
        sys.exit(Exit.ERROR)
    except Exception as exc:
        if not type(exc).__module__.lstrip("_").startswith("duckdb") or _from_ctrl_c(exc):
            raise  # main() names Ctrl-C
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        _progress(f"fleetstate: error: {first}")
        sys.exit(Exit.ERROR)
