"""Generate a large mirror of realistic puppet run histories for the benchmarks.

The record shape follows pipeline/samplefleet.py (same fields, paths, roles and
value formats) but is written with string templates instead of json.dumps so
that a million records take seconds, not a minute. A small share of lines is
malformed (truncated, garbage, wrong type, short sha) and a small share repeats
the line before it, so the loader's validation, rejects and de-duplication
paths are part of every measurement. Output is deterministic for one seed.

    uv run python tests/benchmarks/gen_history.py bench-data/m1000x1000 --hosts 1000 --runs 1000
    uv run python tests/benchmarks/gen_history.py bench-data/one2g --hosts 1 --bytes 2000000000
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

DOMAIN = ".test.releng.mdc1.mozilla.com"
REPO = "https://github.com/mozilla-platform-ops/ronin_puppet.git"
FORK = "https://github.com/releng-sandbox/ronin_puppet.git"
POOLS = (
    ("gecko_t_linux_talos", "Linux", "t-linux64-ms-{:04d}"),
    ("gecko_t_linux_netperf", "Linux", "t-linux64-np-{:04d}"),
    ("gecko_t_osx_1400_r8", "Darwin", "macmini-r8-{:04d}"),
    ("gecko_t_osx_1015_r8", "Darwin", "macmini-r7-{:04d}"),
)
PATHS = {
    "Linux": ("/etc/puppet/ronin_settings", "/root/vault.yaml"),
    "Darwin": ("/opt/puppet_environments/ronin_settings", "/var/root/vault.yaml"),
}
START = 1_700_000_000  # 2023-11-14: a long history before the sample's window
BAD_EVERY = 2000  # one malformed line per this many records
DUP_EVERY = 1000  # one repeated line per this many records
OLD_FORMAT_SHARE = 0.05  # first runs of a host written by the pre-v1.1 wrapper

NEW = (
    '{{"schema_version":1,"ts":"{ts}","success":{success},"exit_code":{exit_code},'
    '"git_repo":"{repo}","git_branch":"{branch}","git_sha":"{sha}","override_sha":{override},'
    '"vault_sha":"{vault}","override_path":"{opath}","role":"{role}","duration_s":{duration},'
    '"git_dirty":{dirty},"vault_path":"{vpath}","host":"{fqdn}","run_id":"{run_id}",'
    '"started_at":"{started}","attempt":{attempt},"stage":"puppet","os":"{os}",'
    '"wrapper_version":"{wv}"}}\n'
)
OLD = (
    '{{"schema_version":1,"ts":"{ts}","success":{success},"exit_code":{exit_code},'
    '"git_repo":"{repo}","git_branch":"{branch}","git_sha":"{sha}","override_sha":{override},'
    '"vault_sha":"{vault}","override_path":"{opath}","role":"{role}","duration_s":{duration}}}\n'
)


def _iso(t: int, cache: dict[int, str] = {}) -> str:  # noqa: B006 -- memo
    import time

    s = cache.get(t)
    if s is None:
        s = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
        if len(cache) < 1 << 16:
            cache[t] = s
    return s


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def host_lines(index: int, runs: int, rng: random.Random, shas: list[str]) -> list[str]:
    role, os_name, pattern = POOLS[index % len(POOLS)]
    fqdn = pattern.format(index) + DOMAIN
    opath, vpath = PATHS[os_name]
    vault = f"{rng.getrandbits(256):064x}"
    override = "null"
    repo, branch = REPO, "master"
    old_until = int(runs * OLD_FORMAT_SHARE * rng.random() * 2)
    t = START + rng.randint(0, 3600)
    lines: list[str] = []
    for n in range(runs):
        duration = rng.randint(45, 540)
        if rng.random() < 0.002:  # an override set or removed now and then
            override = "null" if override != "null" else f'"{rng.getrandbits(256):064x}"'
            repo, branch = (REPO, "master") if override == "null" else (FORK, "bug-trial")
        exit_code = 1 if rng.random() < 0.03 else (2 if rng.random() < 0.3 else 0)
        values = {
            "ts": _iso(t + duration), "success": "false" if exit_code == 1 else "true",
            "exit_code": exit_code, "repo": repo, "branch": branch,
            "sha": shas[min(len(shas) - 1, n * len(shas) // max(runs, 1))],
            "override": override, "vault": vault, "opath": opath, "role": role,
            "duration": duration,
        }  # fmt: skip
        if n < old_until:
            line = OLD.format(**values)
        else:
            line = NEW.format(
                **values, dirty="true" if rng.random() < 0.01 else "false", vpath=vpath,
                fqdn=fqdn, run_id=_uuid(rng), started=_iso(t), attempt=1, os=os_name,
                wv="1.1.0",
            )  # fmt: skip
        lines.append(line)
        serial = index * runs + n
        if serial % DUP_EVERY == DUP_EVERY - 1:
            lines.append(line)  # a repeat: must load once
        if serial % BAD_EVERY == BAD_EVERY // 2:
            lines.append(_bad(serial // BAD_EVERY, line))
        t += duration + rng.randint(1200, 5400)
    return lines


def _bad(kind: int, line: str) -> str:
    k = kind % 4
    if k == 0:
        return line[: len(line) // 2] + "\n"  # truncated
    if k == 1:
        return "Error: Could not run: SIGTERM\n"  # garbage
    if k == 2:
        return (
            line.replace('"success":true', '"success":"yes"')
            .replace('"success":false', '"success":"yes"')
            .replace('"run_id":"', '"run_id":"x')
        )
    return (
        line.replace('"git_sha":"', '"git_sha":"', 1)
        .replace(
            line[line.index('"git_sha":"') + 11 : line.index('"git_sha":"') + 51],
            line[line.index('"git_sha":"') + 11 : line.index('"git_sha":"') + 50],
        )
        .replace('"run_id":"', '"run_id":"y')
    )  # 39-hex sha


def generate(out: Path, hosts: int, runs: int, total_bytes: int = 0, seed: int = 7) -> int:
    """Write `out/<host>/history.jsonl` for `hosts` hosts; return bytes written.

    With total_bytes, each host gets records until its file reaches
    total_bytes / hosts (for the one-big-file memory benchmark)."""
    rng = random.Random(seed)
    shas = [f"{rng.getrandbits(160):040x}" for _ in range(60)]
    written = 0
    for index in range(1, hosts + 1):
        role, _, pattern = POOLS[index % len(POOLS)]
        hdir = out / (pattern.format(index) + DOMAIN)
        hdir.mkdir(parents=True, exist_ok=True)
        with (hdir / "history.jsonl").open("w", encoding="ascii") as fh:
            if total_bytes:
                target, block = total_bytes // hosts, 0
                while block < target:
                    chunk = "".join(host_lines(index, 20_000, rng, shas))
                    fh.write(chunk)
                    block += len(chunk)
                written += block
            else:
                chunk = "".join(host_lines(index, runs, rng, shas))
                fh.write(chunk)
                written += len(chunk)
    return written


def ensure(out: Path, hosts: int, runs: int, total_bytes: int = 0) -> Path:
    """Generate once; a marker file makes later benchmark runs reuse the data."""
    marker = out / ".complete"
    if not marker.exists():
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        generate(out, hosts, runs, total_bytes)
        marker.write_text(f"{hosts} {runs} {total_bytes}\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--bytes", type=int, default=0, dest="total_bytes")
    args = ap.parse_args()
    n = generate(args.out, args.hosts, args.runs, args.total_bytes)
    print(f"wrote {n:,} bytes to {args.out}")


if __name__ == "__main__":
    main()
