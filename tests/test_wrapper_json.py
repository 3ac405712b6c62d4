"""The state writer's JSON: any input string in, valid JSON out, exact round trip.

Strings go to the real bash function as argv bytes. Bash variables cannot
hold NUL, so the strategy excludes it (and lone surrogates, which have no
UTF-8 encoding); invalid UTF-8 bytes are checked separately: each becomes
U+FFFD.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from wrapper_helpers import FIELDS, Host, git, make_host, sha256_file

# Every code point UTF-8 can encode (so no lone surrogates) except NUL.
CHARS = st.characters(codec="utf-8", exclude_characters="\x00")
TEXT = st.text(CHARS, max_size=40)
NONEMPTY = st.text(CHARS, min_size=1, max_size=40)
PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

RECORD = (
    'puppet_state_record --role "$1" --branch "$2" --override "$3" --vault "$4" '
    '--working-dir "$5" --exit-code "$6" --duration "$7" --stage puppet'
)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return make_host(tmp_path)


def record(host: Host, *args: str | bytes, compat: str = "") -> dict[str, Any]:
    """Write one record through the named API; return it after checking both copies."""
    host.state.unlink(missing_ok=True)
    host.history.unlink(missing_ok=True)
    proc = host.bash(RECORD, *args, **({"BASH_COMPAT": compat} if compat else {}))
    assert proc.returncode == 0, proc.stderr
    raw = host.state.read_bytes()
    assert raw == host.history.read_bytes()
    rec: dict[str, Any] = json.loads(raw)
    assert list(rec) == FIELDS
    return rec


@PROPERTY
@given(role=TEXT, branch=TEXT, override=NONEMPTY, vault=NONEMPTY, wd=NONEMPTY)
@example(role="\\", branch='"\\"', override="\x1f\t\n", vault="é\u2028", wd="&\\&")
def test_any_string_round_trips(
    host: Host, role: str, branch: str, override: str, vault: str, wd: str
) -> None:
    args = [s.encode() for s in (role, branch, override, vault, wd)]
    rec = record(host, *args, b"0", b"5")
    assert rec["role"] == (role or None)
    assert rec["git_branch"] == (branch or None)
    assert rec["override_path"] == override
    assert rec["vault_path"] == vault
    assert rec["success"] is True


@PROPERTY
@given(url=NONEMPTY.filter(lambda u: "@" not in u))
def test_any_repo_url_round_trips(host: Host, url: str) -> None:
    repo = host.working_dir
    if not (repo / ".git").exists():
        git("init", "-q", str(repo))
    subprocess.run(["git", "-C", str(repo), "config", "remote.origin.url", url], check=True)
    # Whatever git stores is the truth; the record must carry it unchanged.
    stored = subprocess.run(
        ["git", "-C", str(repo), "config", "--get", "remote.origin.url"],
        check=True,
        capture_output=True,
    ).stdout
    rec = record(host, b"r", b"b", str(host.override), str(host.vault), str(repo), b"2", b"1")
    assert rec["git_repo"] == stored[:-1].decode()


def test_every_control_character_is_escaped(host: Host) -> None:
    nasty = "".join(chr(c) for c in range(1, 32)) + "\x7f\"\\/ '$`é€😀\u2028"
    rec = record(host, nasty, nasty, "/tmp/" + nasty, nasty, nasty, "1", "1")
    assert rec["role"] == nasty and rec["git_branch"] == nasty
    assert rec["override_path"] == "/tmp/" + nasty


def test_invalid_utf8_bytes_become_replacement_characters(host: Host) -> None:
    role = b"ab\xffcd\xc3(\xed\xa0\x80 ok\xe2\x82\xac"
    rec = record(host, role, b"\xc0\xafx", b"/o", b"/v", b"/w", b"0", b"1")
    assert rec["role"] == "ab\ufffdcd\ufffd(\ufffd\ufffd\ufffd ok\u20ac"
    assert rec["git_branch"] == "\ufffd\ufffdx"


@pytest.mark.parametrize(
    ("exit_code", "duration", "want_exit", "want_duration"),
    [
        ("", "", None, None),
        ("abc", "1.5", None, None),
        ("-1", "-3", None, None),
        ("007", "0012", 7, 12),
        ("2", "99999999999999999999", 2, None),
        ("0", "0", 0, 0),
    ],
)
def test_numbers_are_validated(
    host: Host, exit_code: str, duration: str, want_exit: int | None, want_duration: int | None
) -> None:
    rec = record(host, "r", "b", "/o", "/v", "/w", exit_code, duration)
    assert rec["exit_code"] == want_exit
    assert rec["duration_s"] == want_duration
    assert rec["success"] is (want_exit in (0, 2))


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("https://user:ghp_token123@github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("https://ghp_token123@github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("HTTP://u:ghp_token123@host:8080/r?x=1", "HTTP://host:8080/r?x=1"),
        ("ssh://git:ghp_token123@host/r.git", "ssh://git@host/r.git"),
        ("ssh://git@host/r.git", "ssh://git@host/r.git"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("file:///srv/puppet.git", "file:///srv/puppet.git"),
    ],
)
def test_credentials_are_stripped_from_repo_url(host: Host, url: str, want: str) -> None:
    git("init", "-q", str(host.working_dir))
    git("-C", str(host.working_dir), "remote", "add", "origin", url)
    rec = record(host, "r", "", "/o", "/v", str(host.working_dir), "0", "1")
    assert rec["git_repo"] == want
    assert "ghp_token123" not in host.state.read_text()


def test_seed_positional_call(host: Host) -> None:
    """The seed's call keeps working, honours STATE_FILE and also appends history."""
    git("clone", "-q", str(host.upstream), str(host.working_dir))
    git("-C", str(host.working_dir), "checkout", "-q", "--detach")
    other = host.root / "alt" / "state.json"
    proc = host.bash(
        'set -euo pipefail\nwrite_puppet_state "$@"\necho after',
        str(host.working_dir),
        "role_x",
        "2",
        "37",
        str(host.override),
        str(host.vault),
        str(other),
    )
    assert proc.returncode == 0 and proc.stdout == b"after\n", proc.stderr
    rec = json.loads(other.read_text())
    assert not host.state.exists()
    (hist,) = host.history_records()
    assert hist == rec and list(rec) == FIELDS
    assert rec["role"] == "role_x" and rec["exit_code"] == 2 and rec["duration_s"] == 37
    assert rec["git_branch"] == "main"  # detached: the override's PUPPET_BRANCH
    assert rec["git_sha"] == host.upstream_sha and rec["git_dirty"] is False
    assert rec["override_sha"] == sha256_file(host.override)
    assert rec["vault_sha"] == sha256_file(host.vault)
    assert rec["attempt"] == 1 and rec["stage"] == "puppet"
    from datetime import datetime

    ts = datetime.fromisoformat(rec["ts"].replace("Z", "+00:00"))
    started = datetime.fromisoformat(rec["started_at"].replace("Z", "+00:00"))
    assert 36 <= (ts - started).total_seconds() <= 38


def test_git_dirty_ignores_generated_files_only(host: Host) -> None:
    wd = host.working_dir
    git("clone", "-q", str(host.upstream), str(wd))
    (wd / "data" / "secrets").mkdir(parents=True)
    (wd / "data" / "secrets" / "vault.yaml").write_text("x")
    (wd / "r10k_modules" / "stdlib").mkdir(parents=True)
    (wd / "r10k_modules" / "stdlib" / "init.pp").write_text("x")
    args = ("r", "", "/o", "/v", str(wd), "0", "1")
    rec = record(host, *args)
    assert rec["git_dirty"] is False and rec["git_branch"] == "main"
    (wd / "manifests" / "site.pp").write_text("changed\n")
    assert record(host, *args)["git_dirty"] is True


def test_begin_hashes_files_as_puppet_read_them(host: Host) -> None:
    """A vault or override changed during the run does not change the recorded sha."""
    before_o, before_v = sha256_file(host.override), sha256_file(host.vault)
    snippet = (
        f'puppet_state_begin --attempt 3 --override "{host.override}" '
        f'--vault "{host.vault}"\n'
        f'echo changed >> "{host.override}"; echo changed >> "{host.vault}"\n'
        f'puppet_state_record --exit-code 0 --override "{host.override}" '
        f'--vault "{host.vault}"\n'
        'echo "id=[$PUPPET_STATE_RUN_ID]"'
    )
    proc = host.bash(snippet)
    rec = host.state_record()
    assert rec["override_sha"] == before_o and rec["vault_sha"] == before_v
    assert rec["attempt"] == 3
    assert proc.stdout == b"id=[]\n"  # begin's state is consumed by the record


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(role=TEXT, path=NONEMPTY)
@example(role='a\\b\\\\"c\n\x01&', path="\\")
def test_round_trip_under_bash_3_2_compat_mode(host: Host, role: str, path: str) -> None:
    """BASH_COMPAT=3.2 restores the old quoting rules of pattern substitution.

    No bash 3.2 binary is available here; this is the closest run of its semantics.
    """
    rec = record(host, role.encode(), b"", path.encode(), b"/v", b"/w", b"0", b"1", compat="3.2")
    assert rec["role"] == (role or None) and rec["override_path"] == path


def utf8_fixed(data: bytes) -> str:
    """The wrapper's rule: keep each valid UTF-8 sequence, each other byte is U+FFFD."""
    out, i = [], 0
    while i < len(data):
        b = data[i]
        n = 1 if b < 0x80 else 2 if 0xC2 <= b <= 0xDF else 3 if 0xE0 <= b <= 0xEF else 4
        if b < 0xF5:
            try:
                out.append(data[i : i + n].decode("utf-8"))
                i += n
                continue
            except UnicodeDecodeError:
                pass
        out.append("\ufffd")
        i += 1
    return "".join(out)


PIECES = [
    "é".encode(),
    "€".encode(),
    "😀".encode(),
    "\u2028".encode(),
    b"a",
    b'"\\\n',
    b"\xff",
    b"\xe2\x82",
    b"\xc3",
    b"\x80",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe0\x80\x80",
]


@pytest.mark.parametrize("kind", ["valid", "mixed"])
def test_100_kb_non_ascii_value(host: Host, kind: str) -> None:
    """Long values go through the UTF-8 fix-up by blocks (it was quadratic)."""
    if kind == "valid":
        role = "é€😀ab".encode() * 10_000
    else:
        rng = random.Random(7)
        role = b"".join(rng.choice(PIECES) for _ in range(45_000))
    assert len(role) >= 100_000
    rec = record(host, role, b"b", b"/o", b"/v", b"/w", b"0", b"1")
    assert rec["role"] == utf8_fixed(role)
    if kind == "valid":
        assert rec["role"].encode() == role


@pytest.mark.parametrize("compat", ["", "3.2"], ids=["bash", "compat32"])
def test_utf8_fix_at_block_boundaries(host: Host, compat: str) -> None:
    """Sequences, whole or cut short, starting at each offset around the 512-byte blocks."""
    cases = [
        b"a" * offset + piece + tail
        for offset in [*range(507, 516), *range(1019, 1028)]
        for piece in PIECES[:4] + PIECES[6:] + [b"\xc3\x80\x80\x80\x80", b"\xf0\x90\x80"]
        for tail in (b"", b"z", "é".encode())
    ]
    proc = host.bash(
        'LC_ALL=C\nfor a; do _ps_utf8_fix "$a"; printf "%s\\0" "$_PS_U"; done',
        *cases,
        **({"BASH_COMPAT": compat} if compat else {}),
    )
    assert proc.returncode == 0, proc.stderr
    got = proc.stdout.split(b"\0")[:-1]
    assert [g.decode() for g in got] == [utf8_fixed(c) for c in cases]


def test_record_takes_the_files_named_at_begin(host: Host) -> None:
    """The named API as wrapper/README.md shows it: the files go to begin only."""
    snippet = (
        f'puppet_state_begin --attempt 1 --override "{host.override}" --vault "{host.vault}"\n'
        "puppet_state_record --exit-code 0 --stage puppet --role r --working-dir /nonexistent"
    )
    proc = host.bash(snippet, PUPPET_OVERRIDE_FILE="", PUPPET_VAULT_FILE="")
    assert proc.returncode == 0, proc.stderr
    rec = host.state_record()
    assert (rec["override_path"], rec["override_sha"]) == (
        str(host.override), sha256_file(host.override),
    )  # fmt: skip
    assert (rec["vault_path"], rec["vault_sha"]) == (str(host.vault), sha256_file(host.vault))
