"""Live collection progress and the final summary, rendered with rich on stderr.

The collector only emits ProgressEvents; rendering lives here so that the core
modules stay free of rich and the CLI decides what the user sees.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from pipeline.collect import FleetResult, ProgressEvent


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


class ProgressPrinter:
    """A `progress` callback for collect_fleet: hosts done, failed, bytes pulled."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("collecting"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            TextColumn("{task.fields[pulled]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.task: TaskID | None = None

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "start":
            self.progress.start()
            self.task = self.progress.add_task(
                "hosts", total=event.total, failed=0, pulled=human_bytes(0)
            )
            return
        if self.task is not None:
            self.progress.update(
                self.task,
                completed=event.done,
                failed=event.failed,
                pulled=human_bytes(event.bytes_pulled),
            )
        if event.kind == "host" and event.error:
            self.progress.console.print(
                f"[red]{_shown(event.host)}[/]: {_shown(event.error)}", soft_wrap=True
            )
        if event.kind == "finish":
            self.progress.stop()


def _shown(text: str | None) -> str:
    """Host data in a rich message: control characters escaped, no markup of its own."""
    from rich.markup import escape

    from pipeline.render import printable

    return escape(printable(text or ""))


def make_progress_printer(console: Console | None = None) -> ProgressPrinter:
    return ProgressPrinter(console)


def print_summary(result: FleetResult, console: Console | None = None) -> None:
    """One line of totals, then one line per failed host."""
    console = console or Console(stderr=True)
    hosts = len(result.hosts_ok) + len(result.hosts_failed)
    console.print(
        f"{len(result.hosts_ok)}/{hosts} hosts collected, {len(result.hosts_failed)} failed, "
        f"{human_bytes(result.bytes_pulled)} of new history "
        f"({human_bytes(result.bytes_on_wire)} on the wire) in {result.seconds:.1f}s"
    )
    for host, error in sorted(result.hosts_failed.items()):
        console.print(f"  [red]failed[/] {_shown(host)}: {_shown(error)}", soft_wrap=True)


make_progress = make_progress_printer  # the name the CLI imports
