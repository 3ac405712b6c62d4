"""Collector pieces that need no sshd: the remote command, report framing, the mirror."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.collect import CollectOptions, collect_fleet
from pipeline.errors import FleetstateError
from pipeline.mirror import Cursor, Mirror
from pipeline.remote import (
    SCRIPT,
    WIRE_SCRIPT,
    ReportError,
    build_command,
    interpret,
    parse_sections,
    posix_cksum,
    whole_lines,
)
from pipeline.targets import TargetError

HOSTILE = [
    "a;rm -rf /",
    "$(touch /tmp/pwned)",
    "`id`",
    "h' || true '",
    "x\ny",
    "../etc",
    "h o",
    "-oProxyCommand=sh",
    "ünïcode",
]
COMMAND = re.compile(r"/bin/sh -c (?P<script>'.*') fleetstate" + r" (\d+)" * 8, re.S)


def test_command_is_the_fixed_script_plus_eight_integers() -> None:
    cmd = build_command(123, 456, 789, 1024, (7, 8, 9, 10))
    m = COMMAND.fullmatch(cmd)
    assert m and m.groups()[1:] == ("123", "456", "789", "1024", "7", "8", "9", "10")
    assert shlex.split(cmd) == [
        "/bin/sh", "-c", WIRE_SCRIPT, "fleetstate", "123", "456", "789", "1024", "7", "8", "9", "10"
    ]  # fmt: skip


@pytest.mark.parametrize("bad", ["1", "1; id", -1, 1.5, True, None, 10**3 * -1])
def test_command_refuses_anything_but_non_negative_integers(bad: object) -> None:
    with pytest.raises(ValueError):
        build_command(bad, 0, 0, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        build_command(0, 0, 0, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        build_command(0, 0, 0, 0, (0, 0, bad, 0))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_host_names_stop_before_any_connection(name: str, tmp_path: Path) -> None:
    with pytest.raises(TargetError):
        collect_fleet([name], Mirror(tmp_path), CollectOptions(ssh_config=tmp_path / "none"))
    with pytest.raises(TargetError):
        Mirror(tmp_path).host_dir(name)
    assert list(tmp_path.iterdir()) == []


@given(st.binary(max_size=2048), st.integers(0, 2**64), st.integers(0, 2**40))
def test_any_history_content_gives_the_same_script_and_integers_only(
    window: bytes, inode: int, extra: int
) -> None:
    """History bytes reach the command only as a cksum and a length."""
    cursor = Cursor(inode=inode, offset=len(window) + extra, window=window)
    cmd = build_command(cursor.offset, cursor.inode, posix_cksum(cursor.window), len(cursor.window))
    m = COMMAND.fullmatch(cmd)
    assert m and shlex.split(m.group("script")) == [WIRE_SCRIPT]
    assert m.groups()[1:] == tuple(
        str(v) for v in (cursor.offset, inode, posix_cksum(window), len(window), 0, 0, 0, 0)
    )


def test_script_is_posix_sh(tmp_path: Path) -> None:
    subprocess.run(["sh", "-n", "-c", SCRIPT], check=True)
    subprocess.run(["sh", "-n", "-c", WIRE_SCRIPT], check=True)
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed")
    (tmp_path / "remote.sh").write_text("#!/bin/sh\n" + SCRIPT)
    subprocess.run([shellcheck, "-s", "sh", str(tmp_path / "remote.sh")], check=True)


def test_posix_cksum_matches_cksum_binary() -> None:
    for data in (b"", b"x", b"hello\n" * 999):
        out = subprocess.run(["cksum"], input=data, capture_output=True, check=True).stdout
        assert posix_cksum(data) == int(out.split()[0])


def _report(*sections: tuple[str, bytes]) -> bytes:
    body = b"".join(b"@%s %d\n%s\n" % (n.encode(), len(v), v) for n, v in sections)
    return b"FLEETSTATE-REPORT 1\n" + body + b"@end 0\n\n"


def test_sections_are_binary_safe() -> None:
    payload = b"\x00\xff@end 0\n\n@hist 3\nabc\n"
    assert parse_sections(_report(("hist", payload), ("os", b"Linux")))["hist"] == payload


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"Last login: ...\n",
        b"FLEETSTATE-REPORT 1\n@hist 10\nabc\n",
        b"FLEETSTATE-REPORT 1\n@os 5\nLinux\n",
        b"FLEETSTATE-REPORT 1\n@os x\n\n",
    ],
)
def test_framing_errors_are_report_errors(bad: bytes) -> None:
    with pytest.raises(ReportError):
        parse_sections(bad)


def test_whole_lines_stop_at_torn_line_and_nul_padding() -> None:
    assert whole_lines(b'{"a":1}\n{"b"') == b'{"a":1}\n'
    assert whole_lines(b'{"a":1}\n{"b":2}\n\x00\x00') == b'{"a":1}\n{"b":2}\n'
    # NULs followed by a newline are the file's own: padding ends a section
    assert whole_lines(b'{"a":1}\n{"b":\x00\x00\n{"c":3}\n') == b'{"a":1}\n{"b":\x00\x00\n{"c":3}\n'


def test_rotated_torn_tail_is_kept_terminated_and_cursor_moves_on() -> None:
    sections = parse_sections(
        _report(
            ("mode", b"rotated"),
            ("rot_ino", b"5"),
            ("rot_skip", b"10"),
            ("rot", b'{"x":1}\n{"tor'),
            ("hist_ino", b"9"),
            ("hist_start", b"0"),
            ("hist", b'{"y":2}\n{"half'),
        )
    )
    pull = interpret(sections, b"0123456789")
    assert pull.history == b'{"x":1}\n{"tor\n{"y":2}\n'
    assert (pull.inode, pull.offset, pull.window) == (9, 8, b'{"y":2}\n')


def test_mirror_rolls_back_appends_that_were_never_committed(tmp_path: Path) -> None:
    m = Mirror(tmp_path)
    m.append_history("h1", b"one\n")
    m.append_observation("h1", {"host": "h1"})
    committed = m.save_cursor("h1", Cursor(inode=3, offset=4, window=b"one\n"))
    m.append_history("h1", b"two\n")  # ...and the collector dies here
    m.append_observation("h1", {"host": "h1", "n": 2})
    assert m.read_cursor("h1") == committed
    d = tmp_path / "h1"
    assert (d / "history.jsonl").read_bytes() == b"one\n"
    assert [json.loads(x) for x in (d / "observations.jsonl").read_text().splitlines()] == [
        {"host": "h1"}
    ]
    with pytest.raises(ValueError):
        m.append_history("h1", b"torn")


def test_mirror_pulls_again_when_history_was_deleted(tmp_path: Path) -> None:
    m = Mirror(tmp_path)
    m.append_history("h1", b"one\n")
    m.save_cursor("h1", Cursor(inode=3, offset=4, window=b"one\n"))
    (tmp_path / "h1" / "history.jsonl").unlink()
    assert (m.read_cursor("h1").inode, m.read_cursor("h1").offset) == (0, 0)


def test_one_collector_per_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETSTATE_LOCK_WAIT_S", "0.2")
    m = Mirror(tmp_path)
    with m.locked(), pytest.raises(FleetstateError, match="another collector"), m.locked():
        pass


def test_a_second_collector_waits_for_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cron ingest and an operator's overlap: the second waits FLEETSTATE_LOCK_WAIT_S
    for the mirror, as for the warehouse (it used to fail at once)."""
    monkeypatch.setenv("FLEETSTATE_LOCK_WAIT_S", "60")
    m = Mirror(tmp_path)
    held, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def first() -> None:
        with m.locked():
            held.set()
            release.wait(60)

    def second() -> None:
        held.wait(60)
        with m.locked():
            seen.append(release.is_set())  # it got in only once the first let go

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    held.wait(60)
    time.sleep(0.3)  # the second is trying meanwhile (not a timing assertion)
    release.set()
    for t in threads:
        t.join(60)
    assert seen == [True]


def test_errors_are_fleetstate_errors(tmp_path: Path) -> None:
    from pipeline.collect import SshConfigError, load_ssh_config
    from pipeline.errors import FleetstateError

    assert issubclass(TargetError, FleetstateError) and issubclass(TargetError, ValueError)
    with pytest.raises(SshConfigError, match="cannot use ssh config"):
        load_ssh_config(tmp_path / "missing")
    loop = tmp_path / "loop"
    loop.write_text(f"Include {loop}\n")
    with pytest.raises(SshConfigError, match="nested"):
        load_ssh_config(loop)


def test_layering_collect_has_no_duckdb_mirror_has_no_paramiko() -> None:
    code = (
        "import sys, pipeline.collect, pipeline.mirror, pipeline.remote, pipeline.targets\n"
        "assert 'duckdb' not in sys.modules, 'collect imports duckdb'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import sys, pipeline.mirror; assert 'paramiko' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_known_hosts_is_parsed_once_and_again_only_when_it_changes(tmp_path: Path) -> None:
    import paramiko

    from pipeline import collect

    path = tmp_path / "known_hosts"
    a, b = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    path.write_text(
        f"a.example.com {a.get_name()} {a.get_base64()}\n"
        f"[b.example.com]:2222 {b.get_name()} {b.get_base64()}\n"
    )
    first = collect.known_host_keys(path)
    assert collect.known_host_keys(path) is first  # unchanged: the same parse
    assert first.keys_for("[b.example.com]:2222")
    assert not first.keys_for("b.example.com")

    # someone removes a key (ssh-keygen -R): the next connection sees the new file
    path.write_text(f"a.example.com {a.get_name()} {a.get_base64()}\n")
    second = collect.known_host_keys(path)
    assert second is not first and not second.keys_for("[b.example.com]:2222")

    # a key accepted with --accept-new-host-keys is saved and joins the parsed copy
    policy = collect._KnownHostsPolicy(path, accept_new=True)
    policy.missing_host_key(paramiko.SSHClient(), "c.example.com", b)
    assert collect.known_host_keys(path) is second
    assert second.keys_for("c.example.com")
    assert "c.example.com" in path.read_text()

    # refused when not opted in, and nothing is written
    before = path.read_text()
    with pytest.raises(collect.HostKeyError, match="unknown host key"):
        collect._KnownHostsPolicy(path, accept_new=False).missing_host_key(
            paramiko.SSHClient(), "d.example.com", a
        )
    assert path.read_text() == before
    assert not collect.known_host_keys(tmp_path / "absent").keys_for("a.example.com")


def test_known_hosts_reads_what_openssh_reads() -> None:
    """Markers, patterns, negation, hashed names and damaged lines, as in sshd(8)'s
    SSH_KNOWN_HOSTS FILE FORMAT; paramiko's reader raised on the first marker line."""
    import paramiko

    from pipeline import knownhosts

    a, b, c, d = (paramiko.ECDSAKey.generate() for _ in range(4))

    def line(hosts: str, key: paramiko.PKey, marker: str = "") -> str:
        return f"{marker}{hosts} {key.get_name()} {key.get_base64()} comment\n"

    hashed = paramiko.HostKeys.hash_host("[h.example.com]:2222")
    table = knownhosts.parse(
        "# a comment\n\n"
        + line("*.example.com", c, "@cert-authority ")
        + "@future-marker x ssh-ed25519 AAAA\n"
        + "broken.example.com ssh-ed25519 !!!notbase64\n"
        + "odd.example.com sk-unknown-type AAAAB3NzaC1yc2E=\n"
        + "short-line\n"
        + line("web?.example.com,!web9.example.com", a)
        + line("[10.0.0.*]:2222", b)
        + line(hashed, d)
        + line("*", b, "@revoked ")
    )
    assert [e.marker for e in table.entries] == ["cert-authority", None, None, None, "revoked"]
    assert knownhosts.same_key(table.keys_for("WEB1.example.com")[0], a)  # case-insensitive
    assert not table.keys_for("web9.example.com")  # excluded by the negated pattern
    assert not table.keys_for("web10.example.com")  # ? is one character
    assert table.keys_for("[10.0.0.7]:2222") and not table.keys_for("10.0.0.7")
    assert not table.keys_for("[10.0.0.7]:22")  # brackets are literal, not a class
    assert knownhosts.same_key(table.keys_for("[h.example.com]:2222")[0], d)
    assert not table.keys_for("h.example.com")
    assert table.is_revoked("anything", b) and not table.is_revoked("anything", a)
    # plain names are looked up by name (a fleet's file has thousands of lines): still
    # case-insensitive, one key per line even when a line repeats a name, and lines
    # added after a lookup are found
    plain = knownhosts.parse(line("Mixed.Example.com,mixed.example.com", c))
    assert len(plain.keys_for("mixed.EXAMPLE.com")) == 1
    plain.add("late.example.com", d)
    assert knownhosts.same_key(plain.keys_for("late.example.com")[0], d)
    assert table.has_authority_for("x.example.com") and not table.has_authority_for("x.org")


def test_policy_accepts_any_listed_key_and_refuses_revoked_and_changed(tmp_path: Path) -> None:
    import paramiko

    from pipeline import collect

    a, a2, other = (paramiko.ECDSAKey.generate() for _ in range(3))
    path = tmp_path / "known_hosts"
    client = paramiko.SSHClient()

    # two keys of one type listed (a key being rotated): either is accepted, none saved
    policy = collect._KnownHostsPolicy(path, accept_new=True, known=[a, a2])
    policy.missing_host_key(client, "h", a2)
    with pytest.raises(collect.HostKeyError, match="CHANGED"):
        policy.missing_host_key(client, "h", other)  # even with accept-new
    assert not path.exists()

    # revoked: refused even when listed and even with accept-new
    revoked = collect._KnownHostsPolicy(path, accept_new=True, known=[a], revoked=lambda k: k is a)
    with pytest.raises(collect.HostKeyError, match="REVOKED"):
        revoked.missing_host_key(client, "h", a)
    assert not path.exists()

    # a host known only through a certificate authority: the refusal says why
    ca = collect._KnownHostsPolicy(path, accept_new=False, authority=True)
    with pytest.raises(collect.HostKeyError, match="certificate authority"):
        ca.missing_host_key(client, "h", other)


def test_ssh_config_include_is_scoped_like_ssh(tmp_path: Path) -> None:
    from pipeline.collect import _config_paths, load_ssh_config

    (tmp_path / "star.conf").write_text("Host *\n  ServerAliveInterval 30\n")
    (tmp_path / "other.conf").write_text("User early\nHost unrelated\n  User nobody\n")
    (tmp_path / "config").write_text(
        f"Include {tmp_path}/other.conf\n"  # top level: as written, then every host again
        "Port 2200\n"
        f"Host lab-*\n  Include {tmp_path}/star.conf\n  StrictHostKeyChecking no\n"
        f"Host h1\n  Include {tmp_path}/other.conf\n  HostName 127.0.0.9\n"
        '  UserKnownHostsFile "/k h/known hosts" /plain\n'
    )
    cfg = load_ssh_config(tmp_path / "config")

    def get(host: str, key: str) -> object:
        return cfg.lookup(host).get(key)

    assert get("lab-1", "stricthostkeychecking") == "no"
    assert get("lab-1", "serveraliveinterval") == "30"
    assert get("h1", "stricthostkeychecking") is None  # not re-scoped to Host *
    assert get("h1", "serveraliveinterval") is None  # the included Host * is lab-* only
    assert (get("h1", "hostname"), get("h1", "user")) == ("127.0.0.9", "early")
    assert _config_paths(str(get("h1", "userknownhostsfile")), {}) == (
        Path("/k h/known hosts"), Path("/plain"),
    )  # fmt: skip
    assert get("unrelated", "user") == "early"  # the top-level Include's first line wins
    assert get("anything", "port") == get("h1", "port") == "2200"  # back to every host


def test_an_accepted_key_starts_its_own_line(tmp_path: Path) -> None:
    import paramiko

    from pipeline import knownhosts

    path = tmp_path / "known_hosts"
    a, b = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    path.write_text(f"a.example.com {a.get_name()} {a.get_base64()}")  # no final newline
    knownhosts.append(path, "b.example.com", b)
    parsed = knownhosts.parse(path.read_text())
    assert parsed.keys_for("a.example.com") and parsed.keys_for("b.example.com")
    assert path.read_text().endswith("\n") and path.read_text().count("\n") == 2


def test_a_cursor_that_cannot_be_read_fails_its_host_only(tmp_path: Path) -> None:
    from pipeline import collect

    mirror = Mirror(tmp_path)
    (mirror.host_dir("h1") / ".cursor.json").write_text("")  # host_dir creates it
    hr = collect.collect_host("h1", mirror, collect.CollectOptions(), collect.load_ssh_config(None))
    assert not hr.ok and hr.error is not None
    assert ".cursor.json cannot be read" in hr.error and "afresh" in hr.error
    assert (mirror.host_dir("h1") / ".cursor.json").read_text() == ""  # left for the operator


# config shapes whose reading must match OpenSSH's own (`ssh -G`); {d} is the directory
SSH_G_SHAPES = {
    "include several files, top level": (
        "Include {d}/a {d}/b\nHost *\n  User last\n",
        {"a": "Host h1\n  Port 4141\n", "b": "User bu\n"},
        ["h1", "h2"],
    ),
    "include a glob inside a Host block": (
        "Host h1 h2\n  Include {d}/conf.d/*\n  Port 2323\n",
        {"conf.d/1": "Host h1\n  HostName one\n", "conf.d/2": "User bu\n"},
        ["h1", "h2", "h3"],
    ),
    "Key=value Include and Host": (
        "Host=h1\n  Include={d}/inc\n  Port 1616\n",
        {"inc": "User incu\n"},
        ["h1", "h2"],
    ),
    "include with a Host line inside Match all": (
        "Match all\n  Include {d}/inc\n  Port 4200\n",
        {"inc": "Host h1\n  HostName h1real\n"},
        ["h1", "h2"],
    ),
    "quoted include path with a space": (
        'Host h1\n  Include "{d}/my inc"\n  Port 1717\n',
        {"my inc": "User incu\n"},
        ["h1", "h2"],
    ),
    "lines after an Include stay in its block": (
        "Host lab-*\n  Include {d}/star\n  StrictHostKeyChecking no\n"
        "Host h1\n  HostName 127.0.0.9\n",
        {"star": "Host *\n  ServerAliveInterval 30\n  User staru\n"},
        ["h1", "lab-1"],
    ),
    "quoted known_hosts names": (
        'UserKnownHostsFile "{d}/kh1" "{d}/kh2"\nGlobalKnownHostsFile "{d}/g1" {d}/g2\n',
        {},
        ["h1"],
    ),
    "known_hosts names with %-tokens": (
        "Host h1\n  HostName real1\n  Port 2200\n  User bob\n"
        "  UserKnownHostsFile {d}/kh_%h_%p_%r_%n\n",
        {},
        ["h1"],
    ),
}


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs OpenSSH's ssh (for ssh -G)")
@pytest.mark.parametrize("shape", sorted(SSH_G_SHAPES))
def test_ssh_config_reads_as_openssh_reads_it(tmp_path: Path, shape: str) -> None:
    from pipeline.collect import CollectOptions, load_ssh_config, resolve_target

    main, files, hosts = SSH_G_SHAPES[shape]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    cfg = tmp_path / "config"
    cfg.write_text(main.format(d=tmp_path))
    config = load_ssh_config(cfg)
    strict = {"no": "false", "off": "false", "yes": "true", None: "ask"}
    for host in hosts:
        done = subprocess.run(
            ["ssh", "-G", "-F", str(cfg), host], capture_output=True, text=True, check=True
        )
        theirs = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
        ours = resolve_target(host, config, CollectOptions())
        assert (ours.hostname, str(ours.port), ours.user) == (
            theirs["hostname"], theirs["port"], theirs["user"],
        ), host  # fmt: skip
        assert (
            strict.get(ours.strict_host_key_checking, ours.strict_host_key_checking)
            == (theirs["stricthostkeychecking"])
        ), host
        assert [str(p) for p in ours.known_hosts or ()] in (
            theirs["userknownhostsfile"].split(),
            [],  # not set: ssh -G prints its defaults
        ), host
        if "GlobalKnownHostsFile" in main:
            assert [str(p) for p in ours.global_known_hosts] == theirs[
                "globalknownhostsfile"
            ].split(), host


def test_a_cursor_removed_by_hand_keeps_the_mirror_and_is_committed_at_once(
    tmp_path: Path,
) -> None:
    """Without a cursor the mirror's bytes are kept as committed, and that cursor is saved
    before any pull: a pull that dies afterwards is cut back to them, not kept too."""
    m = Mirror(tmp_path)
    m.append_history("h1", b"one\n")
    m.append_observation("h1", {"host": "h1"})
    m.save_cursor("h1", Cursor(inode=3, offset=4, window=b"one\n"))
    (tmp_path / "h1" / ".cursor.json").unlink()
    cursor = m.read_cursor("h1")
    assert (cursor.inode, cursor.history_size) == (0, 4)
    saved = json.loads((tmp_path / "h1" / ".cursor.json").read_text())
    assert (saved["history_size"], saved["inode"]) == (4, 0)
    m.append_history("h1", b"two\n")  # a pull that dies before its commit
    assert m.read_cursor("h1").history_size == 4
    assert (tmp_path / "h1" / "history.jsonl").read_bytes() == b"one\n"


def test_a_new_host_directory_starts_with_a_cursor_of_nothing(tmp_path: Path) -> None:
    """Bytes of a first collection that dies before its commit are cut (the loader reads
    nothing of the host until the first commit)."""
    m = Mirror(tmp_path)
    m.append_history("h1", b"one\n")
    assert json.loads((tmp_path / "h1" / ".cursor.json").read_text())["history_size"] == 0
    assert m.read_cursor("h1").history_size == 0
    assert (tmp_path / "h1" / "history.jsonl").read_bytes() == b""


def test_the_wire_script_is_the_script_without_its_comment_lines() -> None:
    code = [ln for ln in SCRIPT.splitlines() if not ln.lstrip().startswith("#")]
    assert WIRE_SCRIPT.splitlines() == code
    assert len(WIRE_SCRIPT) < len(SCRIPT) - 300


def test_a_timeout_without_words_is_named() -> None:
    """paramiko's channel raises socket.timeout() with no message when its own timeout
    runs out; the error read 'timed out talking to root@h:22: ' (an exception object is
    true even when its text is empty)."""
    from pipeline.collect import SshTarget, describe_error

    target = SshTarget("h", "h", 22, "root")
    said = describe_error(TimeoutError(), target, CollectOptions())  # socket.timeout is it
    assert said == "timed out talking to root@h:22: no answer"
