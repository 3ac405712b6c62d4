"""Security review: one test per defect found, each failing on HEAD for the reason named.

Real parts only: real sshd hosts on loopback (tests/sshfleet.py), the real bash wrapper
library, a real DuckDB warehouse file and the real `fleetstate` command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from clirun import fs  # noqa: E402
from sshfleet import HISTORY, Fleet, SimHost, collect_options, lines, skip_reason  # noqa: E402

from pipeline import warehouse  # noqa: E402
from pipeline.collect import FleetResult, collect_fleet  # noqa: E402
from pipeline.load import load_mirror  # noqa: E402
from pipeline.mirror import Mirror  # noqa: E402
from pipeline.remote import interpret  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LIB = REPO / "wrapper" / "puppet_state.sh"
SKIP = skip_reason()
needs_fleet = pytest.mark.skipif(SKIP is not None, reason=f"simulated fleet unavailable: {SKIP}")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown to another user)")

VAULT = b"pw: hunter2-must-never-leave-the-host\ntoken: 0xDEADBEEF\n"


def fqdn(short: str) -> str:
    return f"{short}.review.test"


pytestmark = pytest.mark.usefixtures("no_operator_ssh")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if SKIP is not None:
        pytest.skip(SKIP)
    f = Fleet(tmp_path_factory.mktemp("review-fleet"))
    for short in ("alias-a", "alias-b", "linked"):
        h = f.add(fqdn(short))
        h.write("/etc/puppet_role", f"{short}-role\n")
        h.write("/root/vault.yaml", VAULT)
        if short != "linked":
            h.append(HISTORY, lines(3))
    # `linked`: the history is a symbolic link to the vault, as anyone who may write
    # /var/log (group syslog on Ubuntu) can make it; the link's own size (what `stat`
    # without -L reports) is the length of its target text, chosen longer than the vault
    linked = f.hosts[fqdn("linked")]
    os.symlink("/root/" + "./" * 60 + "vault.yaml", linked.path(HISTORY))
    # `linked-rot`: its rotated history and its state file are links to the vault
    linked_rot = f.add(fqdn("linked-rot"))
    linked_rot.write("/root/vault.yaml", VAULT)
    linked_rot.append(HISTORY, lines(3))
    os.symlink("/root/vault.yaml", linked_rot.path(HISTORY + ".1"))
    os.symlink("/root/vault.yaml", linked_rot.path("/etc/puppet/last_run_metadata.json"))
    # `hardlinked`: its history and its state file are second hard links to the vault
    hard = f.add(fqdn("hardlinked"))
    hard.write("/root/vault.yaml", VAULT)
    os.link(hard.path("/root/vault.yaml"), hard.path(HISTORY))
    os.link(hard.path("/root/vault.yaml"), hard.path("/etc/puppet/last_run_metadata.json"))
    # `nofd`: a host without /dev/fd (a bare chroot): stat cannot see an open file
    nofd = f.add(fqdn("nofd"))
    nofd.append(HISTORY, lines(5))
    shim = nofd.root / "ns/etc_up/fleetsim/bin/stat"
    shim.write_text(
        '#!/bin/sh\nfor a in "$@"; do case $a in /dev/fd/*) exit 1 ;; esac; done\n'
        'exec /usr/bin/stat "$@"\n'
    )
    shim.chmod(0o755)
    # a role file that is a FIFO (no writer ever comes)
    fifo_role = f.add(fqdn("fifo-role"))
    fifo_role.append(HISTORY, lines(3))
    role = fifo_role.root / "fs" / "puppet_role"
    role.unlink()
    os.mkfifo(role, 0o644)
    # a non-root login whose vault path is a FIFO it may open
    fifo_vault = f.add(fqdn("fifo-vault"), user="ops")
    fifo_vault.write("/etc/puppet_role", "fifo-vault-role\n")
    fifo_vault.append(HISTORY, lines(3))
    os.chmod(fifo_vault.path("/root"), 0o755)
    os.mkfifo(fifo_vault.path("/root/vault.yaml"), 0o644)
    f.start()
    yield f
    f.stop()


def collect(fleet: Fleet, mirror: Path, names: list[str], **kw: Any) -> FleetResult:
    return collect_fleet([fqdn(n) for n in names], Mirror(mirror), collect_options(fleet, **kw))


def host(fleet: Fleet, short: str) -> SimHost:
    return fleet.hosts[fqdn(short)]


# --- 1. HostKeyAlias is ignored by the host key check -------------------------------------


@needs_fleet
def test_host_key_alias_is_what_the_key_is_checked_against(fleet: Fleet, tmp_path: Path) -> None:
    """ssh_config's HostKeyAlias names the known_hosts entry a host's key is checked
    against (ssh_config(5)); the collector checks [HostName]:Port instead. Here alias-a is
    reached through an address (a tunnel, a reused IP) that now leads to alias-b: known_hosts
    holds alias-a's key under its alias, and alias-b's key under the address. `ssh` refuses
    ("Host key for alias-a.review.test has changed"); the collector accepted alias-b's key
    and stored alias-b's runs as alias-a's."""
    a, b = host(fleet, "alias-a"), host(fleet, "alias-b")
    name = fqdn("alias-a")
    kh = tmp_path / "known_hosts"
    kh.write_text(
        f"{name} ssh-ed25519 {a.host_key()}\n[127.0.0.1]:{b.port} ssh-ed25519 {b.host_key()}\n"
    )
    cfg = tmp_path / "ssh_config"
    cfg.write_text(
        f"Host {name}\n  HostName 127.0.0.1\n  Port {b.port}\n  HostKeyAlias {name}\n"
        f"  User root\n  IdentityFile {fleet.user_key}\n"
    )
    r = collect(fleet, tmp_path / "m", ["alias-a"], ssh_config=cfg, known_hosts=kh, retries=0)
    assert r.hosts_ok == [], "a key other than the one known for the HostKeyAlias was accepted"
    assert "CHANGED" in r.hosts_failed[name]
    assert f"host key for {name} has CHANGED" in r.hosts_failed[name]

    # the key known under the alias is accepted; a new one is saved under the alias
    kh.write_text(f"{name} ssh-ed25519 {b.host_key()}\n")
    assert collect(fleet, tmp_path / "m", ["alias-a"], ssh_config=cfg, known_hosts=kh).hosts_ok
    fresh = tmp_path / "fresh_known_hosts"
    r = collect(
        fleet, tmp_path / "m2", ["alias-a"], ssh_config=cfg, known_hosts=fresh,
        accept_new_host_keys=True,
    )  # fmt: skip
    assert r.hosts_ok == [name]
    assert fresh.read_text().split()[:2] == [name, "ssh-ed25519"]


# --- 2. the collector follows a symbolic link planted at the history path ------------------


@needs_fleet
def test_history_symlink_does_not_carry_root_only_files_off_the_host(
    fleet: Fleet, tmp_path: Path
) -> None:
    """/var/log/puppet_run_history.jsonl made a symbolic link to /root/vault.yaml: the
    collector (logged in as root) reads through it, so the vault's bytes land in the mirror
    and, as rejected lines kept verbatim, in the warehouse. Only its sha256 may leave. Now
    the link is not followed and the host is failed with an error that names it."""
    mirror = tmp_path / "m"
    r = collect(fleet, mirror, ["linked"], retries=0)
    assert r.hosts_failed == {
        fqdn(
            "linked"
        ): f"history is a link (symbolic, or a second hard link), not followed: {HISTORY}"
    }
    held = mirror / fqdn("linked") / "history.jsonl"
    pulled = held.read_bytes() if held.exists() else b""
    con = warehouse.connect(tmp_path / "wh.duckdb")
    try:
        load_mirror(con, mirror)
        rejected = [bytes(row[0]) for row in con.execute("SELECT line FROM rejects").fetchall()]
    finally:
        con.close()
    assert b"hunter2" not in pulled, "the vault's content was copied into the mirror"
    assert not any(b"hunter2" in line for line in rejected), "the vault is in the warehouse"


@needs_fleet
def test_a_linked_rotated_history_or_state_file_is_not_followed(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The same for `.1` and the state file: neither is read through its link; the host
    fails, naming the link, and nothing of the vault reaches the mirror."""
    mirror = tmp_path / "m"
    r = collect(fleet, mirror, ["linked-rot"], retries=0)
    assert r.hosts_failed == {
        fqdn(
            "linked-rot"
        ): f"history is a link (symbolic, or a second hard link), not followed: {HISTORY}.1"
    }
    held = b"".join(p.read_bytes() for p in (mirror / fqdn("linked-rot")).iterdir())
    assert b"hunter2" not in held and b"DEADBEEF" not in held


def test_a_file_swapped_between_its_check_and_its_read_is_not_taken() -> None:
    """The script checks a file is regular (not a link), notes its inode, then opens it
    once and reads only if the open file is that inode: else it reports NAME_swapped
    (a link swapped in meanwhile, or the next file of a rotation), and nothing of that
    read is taken: no history bytes, the cursor stays; no state file."""
    sections = {
        "mode": b"restart", "rot_ino": b"11", "rot_skip": b"0", "rot_lead": b"0",
        "rot": b"\0" * 7, "rot_swapped": b"1", "hist_ino": b"0", "end": b"",
    }  # fmt: skip
    pull = interpret(sections, b"")
    assert (pull.history, pull.mode, pull.moves_cursor) == (b"", "rotating", False)
    del sections["rot_swapped"]
    sections["rot"] = b"secret\n"  # the same file throughout: taken
    assert interpret(sections, b"").history == b"secret\n"
    hist = {"mode": b"append", "hist_ino": b"5", "hist_start": b"10", "hist": b"\0" * 4,
            "hist_swapped": b"1", "end": b""}  # fmt: skip
    pull = interpret(hist, b"w")
    assert (pull.history, pull.moves_cursor, pull.window) == (b"", False, b"w")
    state = {"end": b"", "state": b"\0" * 9, "state_swapped": b"1", "state_path": b"/p"}
    assert interpret(state, b"").facts["state_file"] is None


@needs_fleet
def test_a_second_hard_link_to_another_file_is_not_read(fleet: Fleet, tmp_path: Path) -> None:
    """Where the system lets anyone hard-link another user's file (macOS; Linux without
    protected_hardlinks), a hard link at the history's path passes every check a link
    would fail: the history is refused (a second hard link), the state file not taken."""
    mirror = tmp_path / "m"
    r = collect(fleet, mirror, ["hardlinked"], retries=0)
    assert r.hosts_failed == {
        fqdn("hardlinked"): "history is a link (symbolic, or a second hard link), not "
        f"followed: {HISTORY}"
    }
    held = b"".join(p.read_bytes() for p in (mirror / fqdn("hardlinked")).iterdir())
    assert b"hunter2" not in held and b"DEADBEEF" not in held


@needs_fleet
def test_a_host_without_dev_fd_is_still_collected(fleet: Fleet, tmp_path: Path) -> None:
    """The script checks an open file's inode through /dev/fd/3; where that cannot be seen
    (a bare chroot), it checks the path is still the inode it stat'ed and not a link,
    rather than taking every read for a swapped file (no history would ever come)."""
    mirror = tmp_path / "m"
    r = collect(fleet, mirror, ["nofd"], retries=0)
    assert r.hosts_ok == [fqdn("nofd")], r.hosts_failed
    assert (mirror / fqdn("nofd") / "history.jsonl").read_bytes() == lines(5)


# --- 3. files the script opens without checking they are regular files --------------------


@needs_fleet
@pytest.mark.parametrize("short", ["fifo-role", "fifo-vault"])
def test_a_fifo_role_or_vault_does_not_stall_the_host(
    fleet: Fleet, tmp_path: Path, short: str
) -> None:
    """The remote script reads /etc/puppet_role (`[ -r ] && head`) and, for a non-root
    login, the vault (`[ -r ] && sha256sum <`) without the `-f` test it applies to every
    other file: a FIFO there blocks the script until host_timeout, and a host that answered
    is recorded as unreachable with no history pulled. (The wrapper treats both as regular
    files only; the collector's root and sudo branches check -f for the vault too.)"""
    r = collect(fleet, tmp_path / "m", [short], host_timeout=6, retries=0)
    assert r.hosts_failed == {}, f"the host was not collected: {r.hosts_failed}"
    assert r.hosts_ok == [fqdn(short)]


# --- 4. the wrapper lets git run commands from a checkout another user owns -----------------


@needs_root
@pytest.mark.parametrize(
    "lang", [{}, {"LANGUAGE": "de", "LANG": "C.UTF-8"}], ids=["english", "translated"]
)
def test_wrapper_does_not_run_git_hooks_of_a_checkout_owned_by_another_user(
    tmp_path: Path, lang: dict[str, str]
) -> None:
    """_ps_git_info runs `git -c safe.directory='*' ... status` in the working dir, which
    turns off git's own refusal (CVE-2022-24765) to read the config of a repository owned
    by another user. A checkout owned by `nobody` with core.fsmonitor set then runs that
    user's program as root every time a record is written.

    `translated`: the wrapper told git's refusal by its English words, so where git speaks
    another language the log said "not the top level of a git checkout" instead."""
    nobody = 65534
    wd = tmp_path / "checkout"
    subprocess.run(["git", "init", "-q", str(wd)], check=True)
    subprocess.run(
        ["git", "-C", str(wd), "-c", "user.email=a@b", "-c", "user.name=n", "commit", "-q",
         "--allow-empty", "-m", "init"],
        check=True,
    )  # fmt: skip
    marker = tmp_path / "ran-as-root"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\nid -u > {marker}\n")
    hook.chmod(0o755)
    subprocess.run(["git", "-C", str(wd), "config", "core.fsmonitor", str(hook)], check=True)
    for root, dirs, files in os.walk(wd):
        for n in [root, *(os.path.join(root, x) for x in dirs + files)]:
            os.lchown(n, nobody, nobody)
    # plain git refuses this repository
    plain = subprocess.run(
        ["git", "-C", str(wd), "status"], capture_output=True, text=True,
        env={"PATH": os.environ["PATH"], **lang},
    )  # fmt: skip
    assert plain.returncode != 0
    if lang and "dubious ownership" in plain.stderr:
        pytest.skip("this git has no German messages (git's translations not installed)")
    assert ("dubious ownership" in plain.stderr) == (not lang), plain.stderr
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path),
        "PUPPET_STATE_FILE": str(tmp_path / "state.json"),
        "PUPPET_RUN_HISTORY": str(tmp_path / "history.jsonl"),
        "PUPPET_OVERRIDE_FILE": str(tmp_path / "none"), "PUPPET_VAULT_FILE": str(tmp_path / "none"),
        **lang,
    }  # fmt: skip
    done = subprocess.run(
        ["/bin/bash", "-c", f'. "{LIB}"; puppet_state_record --exit-code 0 --role r '
         f'--working-dir "{wd}"'],
        env=env, check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["git_sha"] is None and state["git_repo"] is None  # git said nothing
    assert f"git refuses {wd} (owned by another user" in done.stderr, done.stderr
    assert not marker.exists(), (
        f"core.fsmonitor of a nobody-owned checkout ran as uid {marker.read_text().strip()}"
    )


# --- 5. the wrapper appends through a symbolic link at the history path --------------------


def test_wrapper_does_not_append_through_a_history_symlink(tmp_path: Path) -> None:
    """The history is refused when it is not a regular file, but `[ -f ]` follows links: a
    history path that is a symbolic link makes root append the record to whatever file it
    names (any root-owned file, for whoever may write the history's directory)."""
    victim = tmp_path / "victim.conf"
    victim.write_text("important: untouched\n")
    (tmp_path / "log").mkdir()
    hist = tmp_path / "log" / "puppet_run_history.jsonl"
    hist.symlink_to(victim)
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path),
        "PUPPET_STATE_FILE": str(tmp_path / "state.json"), "PUPPET_RUN_HISTORY": str(hist),
        "PUPPET_OVERRIDE_FILE": str(tmp_path / "none"), "PUPPET_VAULT_FILE": str(tmp_path / "none"),
    }  # fmt: skip
    subprocess.run(
        ["/bin/bash", "-c", f'. "{LIB}"; puppet_state_record --exit-code 0 --role r'],
        env=env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert (tmp_path / "state.json").exists()  # the record was written
    assert victim.read_text() == "important: untouched\n", "the record went into the link's target"


# --- 6. Unicode format characters from hosts reach the terminal raw --------------------------


def test_status_table_escapes_bidi_and_line_separator_characters(tmp_path: Path) -> None:
    """render.printable escapes C0/C1 controls only when str.isprintable() says the text
    is not printable, but then translates only C0/C1/DEL: U+202E (RIGHT-TO-LEFT OVERRIDE,
    which makes a terminal show the rest of the line reversed) and U+2028 (LINE SEPARATOR)
    in a role reported by a host reach the operator's terminal as they are."""
    name = "bidi.review.test"
    d = tmp_path / "mirror" / name
    d.mkdir(parents=True)
    rec = {
        "schema_version": 1, "ts": "2026-01-05T10:00:00Z", "success": True, "exit_code": 0,
        "git_repo": None, "git_branch": "main", "git_sha": "a" * 40, "override_sha": None,
        "vault_sha": None, "override_path": "/etc/puppet/ronin_settings",
        "role": "web\u202e-N FAIL\u2028role", "duration_s": 1,
    }  # fmt: skip
    (d / "history.jsonl").write_text(json.dumps(rec) + "\n")
    db = tmp_path / "wh.duckdb"
    loaded = fs(db, "ingest", "--from", str(tmp_path / "mirror"))
    assert loaded.returncode == 0, loaded.stderr
    out = fs(db, "status")
    assert out.returncode == 0, out.stderr
    assert name in out.stdout
    assert "\u202e" not in out.stdout, "U+202E RIGHT-TO-LEFT OVERRIDE written raw"
    assert "\u2028" not in out.stdout, "U+2028 LINE SEPARATOR written raw"
