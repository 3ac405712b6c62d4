"""The SSH collector against a simulated fleet: one real sshd per host (see sshfleet.py)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sshfleet import HISTORY, Fleet, SimHost, collect_options, lines, record, skip_reason  # noqa: E402

from pipeline import warehouse  # noqa: E402
from pipeline.collect import FleetResult, collect_fleet  # noqa: E402
from pipeline.load import load_mirror  # noqa: E402
from pipeline.mirror import Mirror  # noqa: E402

SKIP = skip_reason()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=f"simulated fleet unavailable: {SKIP}")

REPO = Path(__file__).resolve().parent.parent
VAULT_SECRET = b"vault_password: hunter2-never-leaves-the-host\n"
OVERRIDE = "PUPPET_REPO=\"https://git.example.com/ops/puppet.git\"\nexport PUPPET_BRANCH='canary'\n"
LEGACY = (
    "---\nversion:\n  config: 1700000000\ntime:\n  last_run: 1700000000\nevents:\n  failure: 0\n"
)
STATE = json.dumps(record("2026-01-05T10:00:00Z", run_id="state-1")) + "\n"

NAMES = [
    "basic",
    "rename",
    "copytrunc",
    "reimage",
    "midline",
    "nuls",
    "slow",
    "legacy",
    "mac",
    "ops",
    "big",
    "wrapped",
    "down",
]


def fqdn(short: str) -> str:
    return f"{short}.fleet.test"


pytestmark = pytest.mark.usefixtures("no_operator_ssh")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    for short in NAMES:
        kw: dict[str, Any] = {}
        if short == "mac":
            kw["macos"] = True
        if short == "ops":
            kw["user"] = "ops"
        h = f.add(fqdn(short), **kw)
        h.write("/etc/puppet_role", f"{short}-role\n")
        if short == "legacy":
            h.write("/opt/puppetlabs/puppet/public/last_run_summary.yaml", LEGACY)
            continue
        if short == "mac":
            h.write("/opt/puppet_environments/ronin_settings", OVERRIDE)
            h.write("/opt/puppet_environments/last_run_metadata.json", STATE)
            h.write("/var/root/vault.yaml", VAULT_SECRET)
        else:
            h.write("/etc/puppet/ronin_settings", OVERRIDE)
            h.write("/etc/puppet/last_run_metadata.json", STATE)
            h.write("/root/vault.yaml", VAULT_SECRET)
        if short != "wrapped":
            h.append(HISTORY, lines(300, pad=3000) if short == "big" else lines(5))
    f.start(skip=(fqdn("down"),))
    yield f
    f.stop()


def collect(fleet: Fleet, mirror: Path, names: list[str], **kw: Any) -> FleetResult:
    return collect_fleet(
        [fqdn(n) if "." not in n else n for n in names],
        Mirror(mirror),
        collect_options(fleet, **kw),
    )


def mirrored(mirror: Path, short: str) -> bytes:
    p = mirror / fqdn(short) / "history.jsonl"
    return p.read_bytes() if p.exists() else b""


def observations(mirror: Path, short: str) -> list[dict[str, Any]]:
    text = (mirror / fqdn(short) / "observations.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def host(fleet: Fleet, short: str) -> SimHost:
    return fleet.hosts[fqdn(short)]


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


# --- first ingest, incremental, the observation ----------------------------------------


def test_first_ingest_pulls_history_and_observes_state(fleet: Fleet, tmp_path: Path) -> None:
    h = host(fleet, "basic")
    r = collect(fleet, tmp_path, ["basic"])
    assert r.hosts_ok == [fqdn("basic")] and not r.hosts_failed
    assert mirrored(tmp_path, "basic") == h.path(HISTORY).read_bytes()
    [obs] = observations(tmp_path, "basic")
    assert obs["reachable"] is True and obs["error"] is None
    assert obs["observed_at"].endswith("Z") and obs["os"] == "Linux"
    assert obs["role"] == "basic-role"
    assert obs["override_present"] is True and obs["override_sha"] == sha(OVERRIDE)
    assert obs["override_repo"] == "https://git.example.com/ops/puppet.git"
    assert obs["override_branch"] == "canary"
    assert obs["vault_status"] == "present" and obs["vault_sha"] == sha(VAULT_SECRET)
    assert obs["state_file"] == STATE
    assert obs["state_file_path"] == "/etc/puppet/last_run_metadata.json"
    assert obs["legacy_summary"] is None and obs["history_bytes"] == len(lines(5))
    assert isinstance(obs["uptime_s"], int) and obs["uptime_s"] >= 0
    assert obs["collector_version"]
    # the vault's content never left the host: only its sha256 is anywhere in the mirror
    for f in (tmp_path / fqdn("basic")).iterdir():
        assert b"hunter2" not in f.read_bytes()


def test_incremental_collection_moves_only_new_bytes(fleet: Fleet, tmp_path: Path) -> None:
    h = host(fleet, "basic")
    collect(fleet, tmp_path, ["basic"])
    idle = collect(fleet, tmp_path, ["basic"]).per_host[fqdn("basic")]
    assert idle.history_bytes == 0 and idle.mode == "append"
    new = lines(200, start=100)
    h.append(HISTORY, new)
    busy = collect(fleet, tmp_path, ["basic"]).per_host[fqdn("basic")]
    assert busy.history_bytes == len(new)
    # the report grows by the new bytes (plus a few header digits); the wire likewise
    assert len(new) <= busy.report_bytes - idle.report_bytes < len(new) + 16
    extra_on_wire = busy.bytes_on_wire - idle.bytes_on_wire
    # (handshakes differ by a few hundred bytes from one connection to the next)
    assert len(new) - 1024 <= extra_on_wire < len(new) * 1.1 + 1024
    assert mirrored(tmp_path, "basic") == h.path(HISTORY).read_bytes()
    assert [o["history_bytes"] for o in observations(tmp_path, "basic")] == [
        len(lines(5)),
        0,
        len(new),
    ]


# --- rotation, reimage, torn lines -------------------------------------------------------


def test_rotation_by_rename_reads_unread_tail_then_new_file(fleet: Fleet, tmp_path: Path) -> None:
    h = host(fleet, "rename")
    collect(fleet, tmp_path, ["rename"])
    unread, fresh = lines(3, start=10), lines(2, start=20)
    h.append(HISTORY, unread)
    h.path(HISTORY).rename(h.path(HISTORY + ".1"))
    h.append(HISTORY, fresh)
    hr = collect(fleet, tmp_path, ["rename"]).per_host[fqdn("rename")]
    assert hr.mode == "rotated" and hr.history_bytes == len(unread + fresh)
    assert mirrored(tmp_path, "rename") == lines(5) + unread + fresh
    assert collect(fleet, tmp_path, ["rename"]).per_host[fqdn("rename")].history_bytes == 0


def test_rotation_by_copytruncate_even_when_regrown(fleet: Fleet, tmp_path: Path) -> None:
    h = host(fleet, "copytrunc")
    hist = h.path(HISTORY)
    collect(fleet, tmp_path, ["copytrunc"])

    def copytruncate() -> None:
        h.write(HISTORY + ".1", hist.read_bytes())
        with open(hist, "r+b") as fh:
            fh.truncate(0)

    a, b = lines(2, start=30), lines(1, start=40)
    h.append(HISTORY, a)
    copytruncate()
    h.append(HISTORY, b)  # same inode, shorter than the cursor
    assert collect(fleet, tmp_path, ["copytrunc"]).per_host[fqdn("copytrunc")].mode == "rotated"
    c, d = lines(1, start=50), lines(12, start=60)
    h.append(HISTORY, c)
    copytruncate()
    h.append(HISTORY, d)  # same inode and now *longer* than the cursor: caught by the cksum
    assert hist.stat().st_size > len(b)
    assert collect(fleet, tmp_path, ["copytrunc"]).per_host[fqdn("copytrunc")].mode == "rotated"
    assert mirrored(tmp_path, "copytrunc") == lines(5) + a + b + c + d


def test_reimaged_host_changed_key_refused_then_fresh_start(fleet: Fleet, tmp_path: Path) -> None:
    h = host(fleet, "reimage")
    collect(fleet, tmp_path, ["reimage"])
    h.stop()
    h.new_host_key()
    h.path(HISTORY).unlink()
    h.append(HISTORY, lines(2, start=500))
    h.start()
    r = collect(fleet, tmp_path, ["reimage"])
    err = r.hosts_failed[fqdn("reimage")]
    assert "CHANGED" in err and "ssh-keygen -R" in err and "reimaged" in err
    assert r.per_host[fqdn("reimage")].attempts == 1  # never retried
    assert observations(tmp_path, "reimage")[-1] == {
        **observations(tmp_path, "reimage")[-1],
        "reachable": False,
        "error": err,
    }
    # the operator removes the old key and opts in to the new one
    name = f"[127.0.0.1]:{h.port}"
    old = fleet.known_hosts.read_text()
    fleet.known_hosts.write_text("".join(x for x in old.splitlines(True) if not x.startswith(name)))
    try:
        r = collect(fleet, tmp_path, ["reimage"], accept_new_host_keys=True)
        assert r.hosts_ok == [fqdn("reimage")]
        assert r.per_host[fqdn("reimage")].mode == "restart"
        assert h.host_key() in fleet.known_hosts.read_text()
        assert mirrored(tmp_path, "reimage") == lines(5) + lines(2, start=500)
        assert collect(fleet, tmp_path, ["reimage"]).hosts_ok == [fqdn("reimage")]
    finally:
        fleet.write_client_files()
    # history gone altogether, then started again: a fresh start, nothing pulled twice
    h.path(HISTORY).unlink()
    assert collect(fleet, tmp_path, ["reimage"]).per_host[fqdn("reimage")].history_bytes == 0
    h.append(HISTORY, lines(1, start=600))
    assert collect(fleet, tmp_path, ["reimage"]).hosts_ok
    assert mirrored(tmp_path, "reimage") == lines(5) + lines(2, start=500) + lines(1, start=600)


def test_history_ending_mid_line_takes_whole_lines_only(fleet: Fleet, tmp_path: Path) -> None:
    h = host(fleet, "midline")
    line = lines(1, start=77)
    h.append(HISTORY, line[:25])
    assert collect(fleet, tmp_path, ["midline"]).hosts_ok
    assert mirrored(tmp_path, "midline") == lines(5)
    h.append(HISTORY, line[25:] + lines(1, start=78))
    hr = collect(fleet, tmp_path, ["midline"]).per_host[fqdn("midline")]
    assert hr.history_bytes == len(line) + len(lines(1, start=78))
    assert mirrored(tmp_path, "midline") == h.path(HISTORY).read_bytes()


def test_nul_bytes_inside_the_history_do_not_stop_its_collection(
    fleet: Fleet, tmp_path: Path
) -> None:
    """A stretch of NULs (a crash before the data reached the disk) is the file's own bytes,
    not the report's padding: the lines after it are pulled, now and after a rotation."""
    h = host(fleet, "nuls")
    collect(fleet, tmp_path, ["nuls"])
    damaged = lines(1, start=30) + b"\0" * 64 + b"\n" + lines(3, start=31)
    h.append(HISTORY, damaged)
    assert collect(fleet, tmp_path, ["nuls"]).per_host[fqdn("nuls")].history_bytes == len(damaged)
    more = lines(2, start=40)
    h.append(HISTORY, more + b"\0" * 16)  # ends in NULs: no whole line yet
    assert collect(fleet, tmp_path, ["nuls"]).per_host[fqdn("nuls")].history_bytes == len(more)
    h.path(HISTORY).rename(h.path(HISTORY + ".1"))
    h.append(HISTORY, lines(1, start=50))
    hr = collect(fleet, tmp_path, ["nuls"]).per_host[fqdn("nuls")]
    assert hr.mode == "rotated"
    assert mirrored(tmp_path, "nuls") == lines(5) + damaged + more + lines(1, start=50)


def test_real_wrapper_history_with_its_rotation(fleet: Fleet, tmp_path: Path) -> None:
    """Records written by wrapper/puppet_state.sh, rotated by its size cap between pulls."""
    h = host(fleet, "wrapped")
    env = {
        **os.environ,
        "PUPPET_RUN_HISTORY": str(h.path(HISTORY)),
        "PUPPET_STATE_FILE": str(h.path("/etc/puppet/last_run_metadata.json")),
        "PUPPET_RUN_HISTORY_MAX_BYTES": "2500",
    }
    script = (
        f". {REPO / 'wrapper' / 'puppet_state.sh'}\n"
        'for i in $(seq "$1"); do\n'
        "  puppet_state_record --exit-code 0 --stage puppet --role wrapped-role"
        " --working-dir /nonexistent --duration 1\n"
        "done\n"
    )
    written = 0
    for batch in (2, 3, 1, 3):
        subprocess.run(
            ["bash", "-c", script, "bash", str(batch)], env=env, check=True, capture_output=True
        )
        written += batch
        assert collect(fleet, tmp_path, ["wrapped"]).hosts_ok
    assert h.path(HISTORY + ".1").exists()  # the cap did rotate the file
    records = [json.loads(x) for x in mirrored(tmp_path, "wrapped").splitlines()]
    assert len(records) == len({r["run_id"] for r in records}) == written
    con = warehouse.connect(tmp_path / "wh.duckdb")
    load_mirror(con, tmp_path)
    sources = con.execute("SELECT source, count(*) FROM runs GROUP BY ALL ORDER BY 1").fetchall()
    assert ("history", written) in sources


# --- host variants ----------------------------------------------------------------------


def test_legacy_host_reports_last_run_summary(fleet: Fleet, tmp_path: Path) -> None:
    r = collect(fleet, tmp_path, ["legacy"])
    assert r.hosts_ok == [fqdn("legacy")]
    [obs] = observations(tmp_path, "legacy")
    assert obs["legacy_summary"] == LEGACY
    assert obs["legacy_summary_path"] == "/opt/puppetlabs/puppet/public/last_run_summary.yaml"
    assert obs["state_file"] is None and obs["history_bytes"] == 0
    assert obs["override_present"] is False and obs["vault_status"] == "absent"
    assert mirrored(tmp_path, "legacy") == b""
    # older Puppet keeps the summary in its cache directory
    h = host(fleet, "legacy")
    new, old = (
        h.path(f"/opt/puppetlabs/puppet/{d}/last_run_summary.yaml")
        for d in ("public", "cache/state")
    )
    old.parent.mkdir(parents=True)
    new.rename(old)
    try:
        collect(fleet, tmp_path, ["legacy"])
    finally:
        old.rename(new)
    obs = observations(tmp_path, "legacy")[-1]
    assert obs["legacy_summary_path"] == "/opt/puppetlabs/puppet/cache/state/last_run_summary.yaml"
    assert obs["legacy_summary"] == LEGACY


def test_macos_host_uses_bsd_tools_and_mac_paths(fleet: Fleet, tmp_path: Path) -> None:
    h = host(fleet, "mac")
    collect(fleet, tmp_path, ["mac"])
    [obs] = observations(tmp_path, "mac")
    assert obs["os"] == "Darwin"
    assert obs["override_sha"] == sha(OVERRIDE) and obs["override_branch"] == "canary"
    assert obs["vault_status"] == "present" and obs["vault_sha"] == sha(VAULT_SECRET)
    assert obs["state_file"] == STATE
    assert obs["state_file_path"] == "/opt/puppet_environments/last_run_metadata.json"
    linux_uptime = int(float(Path("/proc/uptime").read_text().split()[0]))
    assert abs(obs["uptime_s"] - linux_uptime) < 60  # from the sysctl kern.boottime shim
    new = lines(3, start=900)
    h.append(HISTORY, new)
    hr = collect(fleet, tmp_path, ["mac"]).per_host[fqdn("mac")]
    assert (hr.mode, hr.history_bytes) == ("append", len(new))  # stat -f gave inode and size
    assert mirrored(tmp_path, "mac") == h.path(HISTORY).read_bytes()


def test_sudo_refused_is_reported_as_no_sudo(fleet: Fleet, tmp_path: Path) -> None:
    r = collect(fleet, tmp_path, ["ops", "legacy"])
    assert sorted(r.hosts_ok) == [fqdn("legacy"), fqdn("ops")]
    [ops] = observations(tmp_path, "ops")
    assert ops["vault_status"] == "no_sudo" and ops["vault_sha"] is None
    assert observations(tmp_path, "legacy")[0]["vault_status"] == "absent"
    assert mirrored(tmp_path, "ops") == host(fleet, "ops").path(HISTORY).read_bytes()


def test_unreadable_history_is_an_error_and_keeps_the_cursor(fleet: Fleet, tmp_path: Path) -> None:
    h = host(fleet, "ops")
    collect(fleet, tmp_path, ["ops"])
    h.path(HISTORY).chmod(0o600)
    try:
        h.append(HISTORY, lines(1, start=700))
        r = collect(fleet, tmp_path, ["ops"])
        err = r.hosts_failed[fqdn("ops")]
        assert "not readable" in err and HISTORY in err
        obs = observations(tmp_path, "ops")[-1]
        assert obs["reachable"] is True and obs["error"] == err and obs["role"] == "ops-role"
    finally:
        h.path(HISTORY).chmod(0o644)
    assert collect(fleet, tmp_path, ["ops"]).per_host[fqdn("ops")].history_bytes == len(
        lines(1, start=700)
    )
    assert mirrored(tmp_path, "ops") == h.path(HISTORY).read_bytes()


def test_connection_reset_is_retried(fleet: Fleet, tmp_path: Path) -> None:
    import threading

    with socket.socket() as rude:  # accepts, then hangs up at once
        rude.bind(("127.0.0.1", 0))
        rude.listen(16)
        port = rude.getsockname()[1]
        seen: list[int] = []

        def serve() -> None:
            for _ in range(3):
                conn, _addr = rude.accept()
                seen.append(1)
                conn.close()

        threading.Thread(target=serve, daemon=True).start()
        fleet.write_client_files(f"Host rude.fleet.test\n  HostName 127.0.0.1\n  Port {port}\n")
        try:
            r = collect(fleet, tmp_path, ["rude.fleet.test"], retries=2)
        finally:
            fleet.write_client_files()
    assert r.per_host["rude.fleet.test"].attempts == 3 and len(seen) == 3
    assert not r.hosts_ok


def test_ssh_config_include_is_followed(fleet: Fleet, tmp_path: Path) -> None:
    legacy = host(fleet, "legacy")
    confd = tmp_path / "home" / ".ssh" / "conf.d"  # HOME is tmp_path/home here
    confd.mkdir(parents=True)
    (confd / "fleet.conf").write_text(
        f"Host included.fleet.test\n  HostName 127.0.0.1\n  Port {legacy.port}\n  User root\n"
        f"  IdentityFile {fleet.user_key}\n"
    )
    cfg = tmp_path / "config"
    cfg.write_text("Include conf.d/*.conf\n")
    r = collect(fleet, tmp_path, ["included.fleet.test"], ssh_config=cfg)
    assert r.hosts_ok == ["included.fleet.test"]


def test_an_include_inside_a_host_block_stays_in_that_block(fleet: Fleet, tmp_path: Path) -> None:
    """`StrictHostKeyChecking no` after an Include in `Host lab-*` is for lab-* hosts only,
    even when the included file opens a `Host *` block: an unknown key is still refused."""
    inc = tmp_path / "inc.conf"
    inc.write_text("Host *\n  ServerAliveInterval 30\n")
    kh = tmp_path / "kh"
    fleet.write_client_files(
        extra_config=f"Host lab-*\n  Include {inc}\n  StrictHostKeyChecking no\n"
    )
    try:
        r = collect(fleet, tmp_path / "m", ["legacy"], known_hosts=kh)
    finally:
        fleet.write_client_files()
    assert "unknown host key" in r.hosts_failed[fqdn("legacy")]
    assert not kh.exists()


def test_down_host_is_retried_then_recorded(fleet: Fleet, tmp_path: Path) -> None:
    r = collect(fleet, tmp_path, ["down", "basic"], retries=2)
    assert r.hosts_ok == [fqdn("basic")]
    assert "connection refused" in r.hosts_failed[fqdn("down")]
    assert r.per_host[fqdn("down")].attempts == 3
    [obs] = observations(tmp_path, "down")
    assert obs["reachable"] is False and "refused" in obs["error"] and obs["os"] is None


def test_hung_host_cannot_stall_the_run(fleet: Fleet, tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts TCP, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        cfg = (
            fleet.ssh_config.read_text()
            + f"\nHost hung.fleet.test\n  HostName 127.0.0.1\n  Port {port}\n"
        )
        fleet.ssh_config.write_text(cfg)
        done: list[FleetResult] = []
        try:
            # an hour to connect, five retries: only the host's own timeout ends it in time
            worker = threading.Thread(
                target=lambda: done.append(
                    collect(
                        fleet,
                        tmp_path,
                        ["hung.fleet.test", "legacy"],
                        connect_timeout=3600,
                        host_timeout=1.5,
                        retries=5,
                    )
                ),
                daemon=True,
            )
            worker.start()
            worker.join(120)
        finally:
            fleet.write_client_files()
    assert done, "the hung host stalled the run past its --timeout"
    (r,) = done
    assert r.hosts_ok == [fqdn("legacy")]
    assert "timed out" in r.hosts_failed["hung.fleet.test"]


def test_a_server_that_never_says_ssh_times_out_with_the_connect_timeout(
    fleet: Fleet, tmp_path: Path
) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        fleet.write_client_files(
            extra_config=f"Host hung.fleet.test\n  HostName 127.0.0.1\n  Port {port}\n"
        )
        try:
            r = collect(fleet, tmp_path, ["hung.fleet.test"], connect_timeout=1, retries=0)
        finally:
            fleet.write_client_files()
    err = r.hosts_failed["hung.fleet.test"]
    assert err.startswith("timed out talking to") and "no SSH handshake within 1s" in err


def test_a_remote_script_that_hangs_is_reported_as_a_timeout(fleet: Fleet, tmp_path: Path) -> None:
    h = host(fleet, "slow")
    # the script asks uname for the OS; this uname hangs while /etc/puppet/hang exists (a
    # file under the host's own /etc/puppet, which the test can add and remove)
    shim = h.root / "ns/etc_up/fleetsim/bin/uname"
    shim.write_text('#!/bin/sh\n[ -e /etc/puppet/hang ] && sleep 30\nexec /bin/uname "$@"\n')
    shim.chmod(0o755)
    h.write("/etc/puppet/hang", "")
    try:
        r = collect(fleet, tmp_path, ["slow", "legacy"], host_timeout=2, retries=0)
    finally:
        h.path("/etc/puppet/hang").unlink()
    assert r.hosts_ok == [fqdn("legacy")]
    err = r.hosts_failed[fqdn("slow")]
    assert err.startswith("timed out talking to") and "host timeout (2s) exceeded" in err
    assert not (tmp_path / fqdn("slow") / "history.jsonl").exists()  # nothing half-pulled
    assert collect(fleet, tmp_path, ["slow"]).hosts_ok  # and all of it on the next run
    assert mirrored(tmp_path, "slow") == lines(5)


def test_unknown_host_key_refused_unless_accept_new(fleet: Fleet, tmp_path: Path) -> None:
    kh = tmp_path / "kh"
    r = collect(fleet, tmp_path / "m", ["legacy"], known_hosts=kh)
    err = r.hosts_failed[fqdn("legacy")]
    assert "unknown host key" in err and "--accept-new-host-keys" in err
    assert r.per_host[fqdn("legacy")].attempts == 1 and not kh.exists()
    assert collect(
        fleet, tmp_path / "m", ["legacy"], known_hosts=kh, accept_new_host_keys=True
    ).hosts_ok
    assert host(fleet, "legacy").host_key() in kh.read_text()
    assert collect(fleet, tmp_path / "m", ["legacy"], known_hosts=kh).hosts_ok


def test_ssh_config_names_the_known_hosts_files_and_the_new_key_policy(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Without --known-hosts, UserKnownHostsFile is read (every file listed, new keys saved
    to the first) and StrictHostKeyChecking accept-new/no accept a new key; a changed key
    is refused whatever ssh_config says."""
    name = fqdn("legacy")
    ours = tmp_path / "ours"
    default = tmp_path / "home" / ".ssh" / "known_hosts"  # HOME is tmp_path/home here

    def configure(header: str) -> None:
        fleet.write_client_files(extra_config=f"Host {name}\n{header}")

    try:
        # both files are read: the key is found in the second
        configure(f"  UserKnownHostsFile {ours} {fleet.known_hosts}\n")
        assert collect(fleet, tmp_path / "m", ["legacy"], known_hosts=None).hosts_ok
        assert not ours.exists() and not default.exists()

        # only an empty file named: refused, naming that file
        configure(f"  UserKnownHostsFile {ours}\n")
        r = collect(fleet, tmp_path / "m", ["legacy"], known_hosts=None)
        assert "unknown host key" in r.hosts_failed[name] and str(ours) in r.hosts_failed[name]
        # --known-hosts wins over ssh_config
        assert collect(fleet, tmp_path / "m", ["legacy"], known_hosts=fleet.known_hosts).hosts_ok

        # accept-new in ssh_config: accepted and saved to the first file
        configure(f"  UserKnownHostsFile {ours}\n  StrictHostKeyChecking accept-new\n")
        assert collect(fleet, tmp_path / "m", ["legacy"], known_hosts=None).hosts_ok
        assert host(fleet, "legacy").host_key() in ours.read_text()

        # a changed key is refused even with StrictHostKeyChecking no
        from sshfleet import keygen

        other = keygen(tmp_path / "other")
        saved = ours.read_text()
        ours.write_text(saved.replace(host(fleet, "legacy").host_key(), other))
        configure(f"  UserKnownHostsFile {ours}\n  StrictHostKeyChecking no\n")
        r = collect(fleet, tmp_path / "m", ["legacy"], known_hosts=None)
        assert "CHANGED" in r.hosts_failed[name]
        assert other in ours.read_text()  # nothing was overwritten
        assert not default.exists()
    finally:
        fleet.write_client_files()


def test_global_known_hosts_patterns_markers_and_revoked_keys(fleet: Fleet, tmp_path: Path) -> None:
    """GlobalKnownHostsFile (as a fleet's config management installs it) is read and never
    written; a known_hosts with @cert-authority lines, patterns and unreadable lines still
    works (paramiko's own reader raised on them); a key marked @revoked is refused."""
    name = fqdn("legacy")
    h = host(fleet, "legacy")
    ours, global_kh = tmp_path / "ours", tmp_path / "ssh_known_hosts"
    ca = paramiko_key_line()

    def configure(header: str) -> None:
        fleet.write_client_files(extra_config=f"Host {name}\n{header}")

    try:
        # the key only in the global file, given by a pattern, among lines paramiko
        # cannot read: accepted, and nothing is written anywhere
        global_kh.write_text(
            f"@cert-authority *.fleet.test {ca}\n"
            "damaged.fleet.test ssh-ed25519 !!!\n"
            f"[127.0.0.?]:{h.port},!10.0.0.1 ssh-ed25519 {h.host_key()}\n"
        )
        before = global_kh.read_text()
        configure(f"  UserKnownHostsFile {ours}\n  GlobalKnownHostsFile {global_kh}\n")
        assert collect(fleet, tmp_path / "m", ["legacy"], known_hosts=None).hosts_ok
        assert not ours.exists() and global_kh.read_text() == before

        # GlobalKnownHostsFile none: only the user's (empty) file, so refused
        configure(f"  UserKnownHostsFile {ours}\n  GlobalKnownHostsFile none\n")
        r = collect(fleet, tmp_path / "m", ["legacy"], known_hosts=None)
        assert "unknown host key" in r.hosts_failed[name]

        # the same key marked @revoked in the user's file: refused, though the global
        # file trusts it, and not retried
        ours.write_text(f"@revoked * ssh-ed25519 {h.host_key()}\n")
        configure(f"  UserKnownHostsFile {ours}\n  GlobalKnownHostsFile {global_kh}\n")
        r = collect(fleet, tmp_path / "m", ["legacy"], known_hosts=None)
        assert "REVOKED" in r.hosts_failed[name]
        assert r.per_host[name].attempts == 1
    finally:
        fleet.write_client_files()


def paramiko_key_line() -> str:
    import paramiko

    key = paramiko.ECDSAKey.generate()
    return f"{key.get_name()} {key.get_base64()}"


def test_auth_failure_is_not_retried(fleet: Fleet, tmp_path: Path) -> None:
    from sshfleet import keygen

    keygen(tmp_path / "stranger")
    fleet.ssh_config.write_text(
        f"Host *.fleet.test\n  IdentityFile {tmp_path / 'stranger'}\n  IdentitiesOnly yes\n"
        + f"Host stranger.fleet.test\n  HostName 127.0.0.1\n  Port {host(fleet, 'legacy').port}\n"
        "  User root\n"
    )
    try:
        r = collect(fleet, tmp_path, ["stranger.fleet.test"], retries=3)
    finally:
        fleet.write_client_files()
    assert "authentication failed" in r.hosts_failed["stranger.fleet.test"]
    assert r.per_host["stranger.fleet.test"].attempts == 1


# --- ssh_config: ProxyJump, ProxyCommand, agent ------------------------------------------


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fleet: Fleet) -> Iterator[None]:
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.02)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(
            ["ssh-add", "-q", str(fleet.user_key)], env=env, check=True, capture_output=True
        )
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        yield
    finally:
        proc.terminate()
        proc.wait()


def test_ssh_config_proxyjump_proxycommand_and_agent(
    fleet: Fleet, tmp_path: Path, agent: None
) -> None:
    jump, target = host(fleet, "legacy"), host(fleet, "ops")
    ssh = (
        f"ssh -F none -i {fleet.user_key} -o BatchMode=yes -o StrictHostKeyChecking=yes "
        f"-o UserKnownHostsFile={fleet.known_hosts} -p {jump.port} -W %h:%p root@127.0.0.1"
    )
    fleet.write_client_files(
        f"Host jumped.fleet.test\n  HostName 127.0.0.1\n  Port {target.port}\n  User ops\n"
        f"  IdentityFile {fleet.user_key}\n  ProxyJump {fqdn('legacy')}\n"
        f"Host proxied.fleet.test\n  HostName 127.0.0.1\n  Port {target.port}\n  User ops\n"
        f"  IdentityFile {fleet.user_key}\n  ProxyCommand {ssh}\n"
        f"Host agent.fleet.test\n  HostName 127.0.0.1\n  Port {target.port}\n  User ops\n"
    )
    try:
        r = collect(
            fleet, tmp_path, ["jumped.fleet.test", "proxied.fleet.test", "agent.fleet.test"]
        )
    finally:
        fleet.write_client_files()
    assert r.hosts_failed == {}
    for alias in ("jumped", "proxied", "agent"):
        got = (tmp_path / f"{alias}.fleet.test" / "history.jsonl").read_bytes()
        assert got == target.path(HISTORY).read_bytes()


def test_whole_fleet_concurrently(fleet: Fleet, tmp_path: Path) -> None:
    events: list[Any] = []
    r = collect_fleet(
        [fqdn(n) for n in NAMES],
        Mirror(tmp_path),
        collect_options(fleet, jobs=4),
        progress=events.append,
    )
    assert set(r.hosts_failed) == {fqdn("down")}
    assert len(r.hosts_ok) == len(NAMES) - 1
    assert [e.kind for e in events] == ["start"] + ["host"] * len(NAMES) + ["finish"]
    assert events[-1].done == len(NAMES) and events[-1].failed == 1
    assert (
        events[-1].bytes_pulled == r.bytes_pulled == sum(len(mirrored(tmp_path, n)) for n in NAMES)
    )
    from io import StringIO

    from rich.console import Console

    from pipeline.progress import make_progress_printer, print_summary

    out = StringIO()
    console = Console(file=out, width=120)
    printer = make_progress_printer(console)
    for e in events:
        printer(e)
    print_summary(r, console)
    assert f"{len(NAMES) - 1}/{len(NAMES)} hosts collected, 1 failed" in out.getvalue()


# --- crash safety -------------------------------------------------------------------------

KILLABLE = ["big", "basic", "mac", "legacy", "ops", "midline", "down"]

COLLECTOR = """
import sys
import threading
from pathlib import Path
from pipeline.collect import CollectOptions, collect_fleet
from pipeline.mirror import Mirror
cfg, kh, mirror, *hosts = sys.argv[1:]
collect_fleet(hosts, Mirror(Path(mirror)), CollectOptions(ssh_config=Path(cfg),
              known_hosts=Path(kh), jobs=2, retries=0))
"""


def _unfinished(mirror: Path, hosts: list[str]) -> bool:
    """Some host has no committed collection yet, or bytes past its committed cursor."""
    for h in hosts:
        cursor = mirror / h / ".cursor.json"
        if not cursor.exists():
            return True
        c = json.loads(cursor.read_text())
        hist = mirror / h / "history.jsonl"
        if hist.exists() and hist.stat().st_size != c["history_size"]:
            return True
    return False


def _comparable(mirror: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for short in KILLABLE:
        last = observations(mirror, short)[-1]
        # per-collection facts: a host finished before the kill is collected once more
        for volatile in ("observed_at", "uptime_s", "history_bytes", "history_mode"):
            last.pop(volatile)
        out[short] = (mirrored(mirror, short), last)
    return out


def test_kill_9_mid_run_then_rerun_gives_the_same_mirror(fleet: Fleet, tmp_path: Path) -> None:
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    hosts = [fqdn(n) for n in KILLABLE]
    interrupted = []
    for attempt in range(3):  # each round kills at a different point of the run
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                COLLECTOR,
                str(fleet.ssh_config),
                str(fleet.known_hosts),
                str(killed),
                *hosts,
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            done = list(killed.glob("*/.cursor.json"))
            if len(done) > attempt * 2 or (attempt == 0 and (killed / fqdn("big")).exists()):
                break
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        interrupted.append(proc.returncode == -signal.SIGKILL and _unfinished(killed, hosts))
    assert any(interrupted), "no kill landed mid-run"
    killed_db = warehouse.connect(tmp_path / "killed.duckdb")
    load_mirror(killed_db, killed)  # worst case: a load sees the half-written mirror
    assert collect(fleet, killed, KILLABLE, retries=0).hosts_ok
    assert collect(fleet, clean, KILLABLE, retries=0).hosts_ok
    assert _comparable(killed) == _comparable(clean)
    assert mirrored(clean, "big") == host(fleet, "big").path(HISTORY).read_bytes()
    load_mirror(killed_db, killed)
    clean_db = warehouse.connect(tmp_path / "clean.duckdb")
    load_mirror(clean_db, clean)
    assert _warehouse(killed_db) == _warehouse(clean_db)
    assert len(_warehouse(clean_db)["runs"]) > 300


def _warehouse(con: Any) -> dict[str, Any]:
    runs = con.execute(
        "SELECT host, run_id, ts, source, success, git_sha FROM runs ORDER BY ALL"
    ).fetchall()
    latest = con.execute(
        "SELECT host, reachable, error, os, role, override_sha, vault_sha FROM observations "
        "QUALIFY row_number() OVER (PARTITION BY host ORDER BY observed_at DESC) = 1 "
        "ORDER BY host"
    ).fetchall()
    rejects = con.execute("SELECT DISTINCT host, reason, line FROM rejects ORDER BY ALL").fetchall()
    return {"runs": runs, "latest": latest, "rejects": rejects}


# --- end to end through the command line --------------------------------------------------


def test_cli_ingest_collects_then_loads_and_exits_4_on_partial_failure(
    fleet: Fleet, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    hosts = tmp_path / "hosts.txt"
    hosts.write_text("# fqdn: .fleet.test\nlegacy\nmac\ndown\nmac.fleet.test\n")
    db = tmp_path / "wh.duckdb"
    args = [
        "--db",
        str(db),
        "ingest",
        str(hosts),
        "--mirror",
        str(tmp_path / "mirror"),
        "--ssh-config",
        str(fleet.ssh_config),
        "--known-hosts",
        str(fleet.known_hosts),
        "--timeout",
        "10",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 4, result.output
    con = warehouse.connect(db)
    by_host = dict(con.execute("SELECT host, count(*) FROM runs GROUP BY host").fetchall())
    assert by_host[fqdn("mac")] == len(mirrored(tmp_path / "mirror", "mac").splitlines()) + 1
    assert by_host[fqdn("legacy")] == 1  # from last_run_summary.yaml
    assert con.execute("SELECT source FROM runs WHERE host = ?", [fqdn("legacy")]).fetchone() == (
        "legacy_summary",
    )
    down = con.execute(
        "SELECT reachable, error FROM observations WHERE host = ?", [fqdn("down")]
    ).fetchall()
    assert down[0][0] is False and "refused" in down[0][1]


def test_hostile_history_content_and_mirror_path_stay_data(fleet: Fleet, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    evil = (
        json.dumps(
            record(
                "2026-02-01T00:00:00Z",
                role=f"'$(touch {pwned})'`touch {pwned}`",
                run_id=f'"; touch {pwned}; \n',
            )
        )
        + "\n"
    )
    h = host(fleet, "rename")
    h.append(HISTORY, evil.encode())
    mirror = tmp_path / f"m i$(touch {pwned})'r`x`"
    assert collect(fleet, mirror, ["rename"]).hosts_ok
    h.append(HISTORY, lines(1, start=4000))
    assert collect(fleet, mirror, ["rename"]).per_host[fqdn("rename")].history_bytes > 0
    rotated = h.path(HISTORY + ".1").read_bytes()  # a fresh mirror starts with the .1 file
    assert mirrored(mirror, "rename") == rotated + h.path(HISTORY).read_bytes()
    assert not pwned.exists()


def watch_cmd(db: Path, *extra: str) -> list[str]:
    """`fleetstate --db DB rollout` of a sha nobody runs, watched over SSH on host basic
    until complete (3 refreshes at most), its summary as json; `extra` appended."""
    return [
        sys.executable, "-m", "pipeline", "--db", str(db), "rollout", "a" * 40, "--watch",
        "--ingest", fqdn("basic"), "--interval", "0", "--iterations", "3",
        "--stale-hours", "100000", "--part", "summary", "-f", "json", *extra,
    ]  # fmt: skip


def test_rollout_watch_collects_over_ssh_with_the_operators_ssh_config(
    fleet: Fleet, tmp_path: Path
) -> None:
    """`rollout --watch --ingest HOST` end to end over SSH, as an operator runs it: no SSH
    options on the command line, only ~/.ssh/config (here naming the fleet's known_hosts
    with UserKnownHostsFile). The watch stops once the rollout is complete."""
    home = tmp_path / "operator"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host *.fleet.test\n  UserKnownHostsFile {fleet.known_hosts}\n\n"
        + fleet.ssh_config.read_text()
    )
    cmd = watch_cmd(tmp_path / "w.duckdb")
    proc = subprocess.run(
        cmd, cwd=tmp_path, env={**os.environ, "HOME": str(home)}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary[0]["hosts"] == 1 and summary[0]["converged"] == 1
    assert summary[0]["pct_converged"] == 100.0
    assert (home / ".ssh" / "known_hosts").exists() is False  # ssh_config's file was used
    assert (tmp_path / "data" / "mirror" / fqdn("basic") / "history.jsonl").exists()


def test_rollout_watch_and_ingest_collect_into_the_mirror_the_operator_names(
    fleet: Fleet, tmp_path: Path
) -> None:
    """`rollout --watch --ingest` took the collector's default mirror (data/mirror) only, so
    a watch beside `ingest --mirror M` pulled every host's history again into a second
    mirror. Now the watch takes --mirror, and both take FLEETSTATE_MIRROR."""
    home = tmp_path / "operator"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host *.fleet.test\n  UserKnownHostsFile {fleet.known_hosts}\n\n"
        + fleet.ssh_config.read_text()
    )
    db = str(tmp_path / "w.duckdb")
    env = {**os.environ, "HOME": str(home)}
    watch = watch_cmd(Path(db))
    named = tmp_path / "named"
    proc = subprocess.run(
        [*watch, "--mirror", str(named)], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["converged"] == 1
    assert (named / fqdn("basic") / "history.jsonl").stat().st_size > 0
    from_env = tmp_path / "from-env"
    for cmd in (watch, [sys.executable, "-m", "pipeline", "--db", db, "ingest", fqdn("basic")]):
        done = subprocess.run(
            cmd, cwd=tmp_path, env={**env, "FLEETSTATE_MIRROR": str(from_env)},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert (from_env / fqdn("basic") / "history.jsonl").stat().st_size > 0
    assert not (tmp_path / "data").exists()  # the default mirror was never made


def test_rollout_watch_collects_with_the_ssh_options_ingest_takes(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The watch's ingest took only ~/.ssh/config: an operator whose fleet is reached through
    another ssh_config and known_hosts (given to `ingest` with --ssh-config/--known-hosts)
    could not watch it. Now the watch takes ingest's SSH options and collects with them."""
    home = tmp_path / "operator"  # no ~/.ssh at all: everything comes from the options
    home.mkdir()
    known = fleet.known_hosts.read_bytes()
    ssh = ["--ssh-config", str(fleet.ssh_config), "--jobs", "1", "--timeout", "3600",
           "--connect-timeout", "60", "--retries", "0"]  # fmt: skip
    cmd = watch_cmd(tmp_path / "w.duckdb", *ssh, "--known-hosts", str(fleet.known_hosts))
    proc = subprocess.run(
        cmd, cwd=tmp_path, env={**os.environ, "HOME": str(home)}, capture_output=True, text=True,
        timeout=3600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["converged"] == 1
    assert (tmp_path / "data" / "mirror" / fqdn("basic") / "history.jsonl").stat().st_size > 0
    assert fleet.known_hosts.read_bytes() == known and not (home / ".ssh").exists()
    # the same without --known-hosts: the host's key is unknown, so the host fails (the
    # watch reports it and goes on) and nothing is collected
    refused = subprocess.run(
        watch_cmd(tmp_path / "w2.duckdb", *ssh, "--mirror", str(tmp_path / "m2")), cwd=tmp_path,
        env={**os.environ, "HOME": str(home)}, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert "failed: " + fqdn("basic") in refused.stderr and "key" in refused.stderr
    assert not (tmp_path / "m2" / fqdn("basic") / "history.jsonl").exists()
