"""Benchmark the SSH collector against the OpenSSH client on a simulated fleet.

Run as root: `uv run python tests/benchmarks/bench_collect.py [HOSTS] [JOBS] [OTHERS]`,
OTHERS being how many other hosts' keys to add to known_hosts (default 0).
Prints one line per figure: name, value, baseline, ratio (value / baseline).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sshfleet import HISTORY, Fleet, lines, skip_reason  # noqa: E402

from pipeline.collect import CollectOptions, FleetResult, collect_fleet  # noqa: E402
from pipeline.mirror import Mirror  # noqa: E402

HISTORY_LINES = 1000  # ~0.5 MB per host
NEW_LINES = 20  # ~10 KB per host per incremental collection


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(fn: Callable[[], object], cpu: Callable[[], float]) -> tuple[float, float, object]:
    c0, t0 = cpu(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, cpu() - c0, out


def ssh_fleet(fleet: Fleet, hosts: list[str], jobs: int, remote: Callable[[str], str]) -> int:
    """The same pull with the OpenSSH client, `jobs` at a time; returns bytes received."""

    def one(h: str) -> int:
        cmd = [
            "ssh",
            "-F",
            str(fleet.ssh_config),
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={fleet.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            h,
            remote(h),
        ]
        return len(subprocess.run(cmd, capture_output=True, check=True).stdout)

    with ThreadPoolExecutor(jobs) as pool:
        return sum(pool.map(one, hosts))


def line(name: str, value: float, baseline: float) -> None:
    ratio = value / baseline if baseline else float("nan")
    print(f"{name:<40} {value:>12.3f} {baseline:>12.3f} {ratio:>8.2f}")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    jobs = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    # entries for other hosts in known_hosts, as in a real fleet's (argument 3)
    pad = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    if (why := skip_reason()) is not None:
        sys.exit(f"cannot simulate a fleet here: {why}")
    base = Path(tempfile.mkdtemp(prefix="bench-collect-"))
    fleet = Fleet(base)
    for i in range(n):
        fleet.add(f"bench{i:03d}.fleet.test").append(HISTORY, lines(HISTORY_LINES, start=i))
    fleet.start()
    if pad:
        _pad_known_hosts(fleet.known_hosts, pad)
    try:
        run(fleet, n, jobs, base)
    finally:
        fleet.stop()


def _pad_known_hosts(path: Path, entries: int) -> None:
    """Add `entries` other hosts' keys, one key type in three as in a mixed fleet."""
    import paramiko

    keys = [paramiko.ECDSAKey.generate(), paramiko.RSAKey.generate(2048)]
    with path.open("a") as fh:
        for i in range(entries):
            key = keys[i % 3 == 0]
            fh.write(f"other{i:05d}.fleet.test {key.get_name()} {key.get_base64()}\n")


def run(fleet: Fleet, n: int, jobs: int, base: Path) -> None:
    hosts = sorted(fleet.hosts)
    options = CollectOptions(ssh_config=fleet.ssh_config, known_hosts=fleet.known_hosts, jobs=jobs)
    mirror = Mirror(base / "mirror")
    print(
        f"# {n} hosts, {jobs} jobs, {HISTORY_LINES} history lines per host, "
        f"{NEW_LINES} new lines per incremental collection"
    )
    print(f"{'name':<40} {'value':>12} {'baseline':>12} {'ratio':>8}")
    wall, cpu, res = timed(lambda: collect_fleet(hosts, mirror, options), time.process_time)
    first: FleetResult = res  # type: ignore[assignment]
    assert not first.hosts_failed, first.hosts_failed
    b_wall, b_cpu, _ = timed(
        lambda: ssh_fleet(fleet, hosts, jobs, lambda h: f"cat {HISTORY}"), children_cpu
    )
    line("first_ingest_wall_s", wall, b_wall)
    line("first_ingest_cpu_ms_per_host", cpu / n * 1000, b_cpu / n * 1000)
    line("first_ingest_wire_bytes_per_host", first.bytes_on_wire / n, first.bytes_pulled / n)

    offsets = {h: fleet.hosts[h].path(HISTORY).stat().st_size for h in hosts}
    new = lines(NEW_LINES, start=10**6)
    for h in hosts:
        fleet.hosts[h].append(HISTORY, new)
    wall, cpu, res = timed(lambda: collect_fleet(hosts, mirror, options), time.process_time)
    inc: FleetResult = res  # type: ignore[assignment]
    assert inc.bytes_pulled == len(new) * n, (inc.bytes_pulled, len(new) * n)
    b_wall, b_cpu, _ = timed(
        lambda: ssh_fleet(fleet, hosts, jobs, lambda h: f"tail -c +{offsets[h] + 1} {HISTORY}"),
        children_cpu,
    )
    line("incremental_wall_s", wall, b_wall)
    line("incremental_cpu_ms_per_host", cpu / n * 1000, b_cpu / n * 1000)
    line("incremental_wire_bytes_per_host", inc.bytes_on_wire / n, len(new))
    report = sum(r.report_bytes for r in inc.per_host.values()) / n
    line("incremental_report_bytes_per_host", report, len(new))
    wall, cpu, res = timed(lambda: collect_fleet(hosts, mirror, options), time.process_time)
    idle: FleetResult = res  # type: ignore[assignment]
    line("idle_wire_bytes_per_host", idle.bytes_on_wire / n, 0)
    line("idle_wall_s", wall, b_wall)


if __name__ == "__main__":
    main()
