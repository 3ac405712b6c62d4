"""The run-puppet scripts end to end: real bash, a real git remote, a fake puppet.

Each case checks the wrapper's exit code, the state file and the history line
field by field (parsed with json), for both the Linux and the macOS script.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from wrapper_helpers import (
    BASH,
    LINUX_SCRIPT,
    MACOS_SCRIPT,
    WRAPPER_DIR,
    Host,
    check_record,
    git,
    make_host,
)

DRIVER = WRAPPER_DIR / "run-puppet.sh"

SCRIPTS = pytest.mark.parametrize("script", [LINUX_SCRIPT, MACOS_SCRIPT], ids=["linux", "macos"])


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return make_host(tmp_path)


@SCRIPTS
@pytest.mark.parametrize("rc", [0, 1, 2, 4, 6])
def test_each_puppet_exit_code_is_recorded_and_returned(host: Host, script: Path, rc: int) -> None:
    proc = host.run(script, FAKE_PUPPET_RC=str(rc))
    assert proc.returncode == rc, proc.stderr
    history = host.history_records()
    assert len(history) == 1
    check_record(history[0], host, exit_code=rc)
    assert host.state_record() == history[0]
    assert host.state.stat().st_mode & 0o777 == 0o644
    assert "fake puppet apply" in proc.stdout  # puppet's output still reaches the console
    assert host.marker.read_text() == "role=gecko_t_linux_talos\n"


@SCRIPTS
def test_hung_puppet_is_killed_and_recorded_as_failed(host: Host, script: Path) -> None:
    # the fake puppet hangs for good: only the watchdog ends the run before the test's guard
    proc = host.run(
        script, FAKE_PUPPET_RC="0", FAKE_PUPPET_HANG="1", PUPPET_TIMEOUT_S="1", timeout=120
    )
    assert proc.returncode == 143, proc.stderr  # SIGTERM from the watchdog
    (rec,) = host.history_records()
    check_record(rec, host, exit_code=143)
    assert rec["success"] is False and rec["duration_s"] >= 1


def test_retries_record_every_attempt(host: Host) -> None:
    proc = host.run(FAKE_PUPPET_RC="6", PUPPET_SINGLE_RUN="0", PUPPET_MAX_ATTEMPTS="3")
    assert proc.returncode == 6
    history = host.history_records()
    assert [r["attempt"] for r in history] == [1, 2, 3]
    for i, rec in enumerate(history, 1):
        check_record(rec, host, exit_code=6, attempt=i)
    assert len({r["run_id"] for r in history}) == 3
    assert host.state_record() == history[-1]


def test_retry_stops_at_first_success(host: Host) -> None:
    proc = host.run(FAKE_PUPPET_RC="2", PUPPET_SINGLE_RUN="0", PUPPET_MAX_ATTEMPTS="3")
    assert proc.returncode == 2
    assert [r["attempt"] for r in host.history_records()] == [1]


@SCRIPTS
def test_missing_role_is_a_prepare_failure(host: Host, script: Path) -> None:
    host.role_file.unlink()
    proc = host.run(script, FAKE_PUPPET_RC="0")
    assert proc.returncode == 1
    (rec,) = host.history_records()
    check_record(rec, host, exit_code=None, stage="prepare")
    assert rec["role"] is None and rec["success"] is False
    assert not host.marker.exists()


def test_missing_vault_is_a_prepare_failure(host: Host) -> None:
    host.vault.unlink()
    proc = host.run(FAKE_PUPPET_RC="0")
    assert proc.returncode == 1
    (rec,) = host.history_records()
    check_record(rec, host, exit_code=None, stage="prepare")
    assert rec["vault_sha"] is None and rec["role"] == "gecko_t_linux_talos"
    assert not host.marker.exists()


def test_git_fetch_failure_is_a_prepare_failure(host: Host) -> None:
    host.override.write_text(
        f'PUPPET_REPO="file://{host.root}/no-such-repo"\nPUPPET_BRANCH="feature"\n'
    )
    proc = host.run(FAKE_PUPPET_RC="0", PUPPET_SINGLE_RUN="0", PUPPET_MAX_ATTEMPTS="2")
    assert proc.returncode == 1
    history = host.history_records()
    assert [(r["stage"], r["exit_code"], r["attempt"]) for r in history] == [
        ("prepare", None, 1),
        ("prepare", None, 2),
    ]
    check_record(history[0], host, exit_code=None, stage="prepare")
    assert history[0]["git_branch"] == "feature"
    assert not host.marker.exists()


def test_exit_code_is_puppets_not_tees(host: Host) -> None:
    # tee cannot open its log (no such directory) and fails; puppet's 4 still wins.
    proc = host.run(FAKE_PUPPET_RC="4", PUPPET_RUN_LOG=str(host.root / "nodir" / "run.log"))
    assert proc.returncode == 4
    (rec,) = host.history_records()
    assert rec["exit_code"] == 4 and rec["success"] is False


def test_run_log_gets_puppet_output(host: Host) -> None:
    host.run(FAKE_PUPPET_RC="0")
    assert "fake puppet apply" in (host.root / "log" / "puppet_run.log").read_text()


def test_branch_applied_and_new_commits_followed(host: Host) -> None:
    git("checkout", "-q", "-b", "feature/x", cwd=host.upstream)
    (host.upstream / "manifests" / "new.pp").write_text("# new\n")
    git("add", ".", cwd=host.upstream)
    git("commit", "-q", "-m", "feature", cwd=host.upstream)
    sha = git("rev-parse", "HEAD", cwd=host.upstream)
    host.override.write_text(
        f"PUPPET_REPO='file://{host.upstream}'\nexport PUPPET_BRANCH=\"feature/x\"\n"
    )
    assert host.run(FAKE_PUPPET_RC="2").returncode == 2
    rec = host.state_record()
    assert rec["git_branch"] == "feature/x"  # not "HEAD": the checkout is detached
    assert rec["git_sha"] == sha
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=host.working_dir) == "HEAD"


def test_no_override_uses_defaults_and_records_null_override_sha(host: Host) -> None:
    host.override.unlink()
    proc = host.run(
        FAKE_PUPPET_RC="0",
        PUPPET_DEFAULT_REPO=f"file://{host.upstream}",
        PUPPET_DEFAULT_BRANCH="main",
    )
    assert proc.returncode == 0, proc.stderr
    rec = host.state_record()
    assert rec["override_sha"] is None and rec["override_path"] == str(host.override)
    assert rec["git_branch"] == "main" and rec["git_sha"] == host.upstream_sha


def test_vault_content_never_leaves(host: Host) -> None:
    proc = host.run(FAKE_PUPPET_RC="0")
    secret = "vault-content-must-not-leak-4242"
    for text in (proc.stdout, proc.stderr, host.state.read_text(), host.history.read_text()):
        assert secret not in text


def test_generated_vault_copy_does_not_make_checkout_dirty(host: Host) -> None:
    host.run(FAKE_PUPPET_RC="0")
    assert (host.working_dir / "data" / "secrets" / "vault.yaml").exists()
    assert host.state_record()["git_dirty"] is False


def test_wrapper_under_bash_3_2_compat_mode(host: Host) -> None:
    proc = host.run(MACOS_SCRIPT, FAKE_PUPPET_RC="2", BASH_COMPAT="3.2")
    assert proc.returncode == 2, proc.stderr
    (rec,) = host.history_records()
    check_record(rec, host, exit_code=2)


@pytest.mark.parametrize(
    "script", [LINUX_SCRIPT, MACOS_SCRIPT, DRIVER], ids=["linux", "macos", "driver"]
)
def test_exported_cdpath_does_not_break_locating_the_scripts(host: Host, script: Path) -> None:
    """A cd resolved through CDPATH prints the directory: it must not end up in the path."""
    proc = subprocess.run(
        [BASH, f"{WRAPPER_DIR.name}/{script.name}"],
        env={**host.env, "CDPATH": str(WRAPPER_DIR.parent), "FAKE_PUPPET_RC": "2"},
        cwd=WRAPPER_DIR.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "not be recorded" not in proc.stderr and "missing" not in proc.stderr
    (rec,) = host.history_records()
    check_record(rec, host, exit_code=2)


# Override lines and what sh assigns to PUPPET_BRANCH when it sources them.
OVERRIDE_LINES = [
    'PUPPET_BRANCH="main" # my branch',
    "PUPPET_BRANCH='main'  # fork",
    'PUPPET_BRANCH="a\\"b"',
    "PUPPET_BRANCH='it''s'",
    "export PUPPET_BRANCH=feature/x # c",
    'export\tPUPPET_BRANCH="t"',
    "  PUPPET_BRANCH=a\\ b",
    'PUPPET_BRANCH="a\\\\b\\$c\\`d\\e"',
    "PUPPET_BRANCH='a\\\"b # not a comment'",
    "PUPPET_BRANCH=a#b",
    'PUPPET_BRANCH="a#b" #c',
    "PUPPET_BRANCH=x\"y z\"'w'",
    "PUPPET_BRANCH=main;",
    "PUPPET_BRANCH=main; # c",
    'PUPPET_BRANCH="tab\tsep"\t# c',
    'PUPPET_BRANCH="a$" ',
    "PUPPET_BRANCH=100$",
    "PUPPET_BRANCH=a~b",
    'PUPPET_BRANCH="~/x"',
    "PUPPET_BRANCH=*",
    "PUPPET_BRANCH={a,b}",
    "PUPPET_BRANCH=a\\\\b",
    'PUPPET_BRANCH=é"ü"',
    'PUPPET_BRANCH=""',
    "PUPPET_BRANCH=",
    "# PUPPET_BRANCH=commented",
    "PUPPET_BRANCHES=other",
]


def branch_value(host: Host, **env: str) -> subprocess.CompletedProcess[bytes]:
    """PUPPET_BRANCH as the library reads it from the host's override file, on stdout."""
    return host.bash(
        'puppet_state_override_value "$1" PUPPET_BRANCH; printf %s "$PUPPET_STATE_VALUE"',
        str(host.override),
        **env,
    )


@pytest.mark.parametrize("compat", ["", "3.2"], ids=["bash", "compat32"])
@pytest.mark.parametrize("line", OVERRIDE_LINES)
def test_override_value_is_what_sh_assigns(host: Host, line: str, compat: str) -> None:
    host.override.write_text(f"PUPPET_BRANCH=first\n{line}\n")
    sh = subprocess.run(
        ["sh", "-c", '. "$1"; printf %s "$PUPPET_BRANCH"', "sh", str(host.override)],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
    )
    assert sh.returncode == 0 and sh.stderr == b""
    proc = branch_value(host, **({"BASH_COMPAT": compat} if compat else {}))
    assert proc.returncode == 0 and proc.stderr == b""
    assert proc.stdout == sh.stdout


def test_an_override_line_too_long_for_a_branch_is_skipped(host: Host) -> None:
    """The value is read a character at a time; a 100 KB line (no branch or URL is that
    long) is skipped with a warning rather than read, and the next assignment counts."""
    host.override.write_text(f'PUPPET_BRANCH="{"a" * 100_000}"\nPUPPET_BRANCH="main"\n')
    proc = branch_value(host)
    assert proc.returncode == 0 and proc.stdout == b"main"
    assert b"line 1: PUPPET_BRANCH line longer than 4096 bytes; line ignored" in proc.stderr


@pytest.mark.parametrize(
    "line",
    [
        'PUPPET_BRANCH="$HOME"',
        "PUPPET_BRANCH=${HOME}",
        "PUPPET_BRANCH=$(touch {canary})",
        "PUPPET_BRANCH=`touch {canary}`",
        'PUPPET_BRANCH="`touch {canary}`"',
        "PUPPET_BRANCH=$'x'",
        "PUPPET_BRANCH=~/x",
        "PUPPET_BRANCH=a:~/x",
        'PUPPET_BRANCH="unterminated',
        "PUPPET_BRANCH=continued\\",
        "PUPPET_BRANCH=a touch {canary}",
        "PUPPET_BRANCH=a;touch {canary}",
        "PUPPET_BRANCH=a|touch {canary}",
        "PUPPET_BRANCH=a&&touch {canary}",
    ],
)
def test_override_lines_sh_would_run_are_never_run(host: Host, line: str) -> None:
    """Such a line is skipped with a warning; the earlier value stays."""
    canary = host.root / "canary"
    host.override.write_text(f"PUPPET_BRANCH=good\n{line.replace('{canary}', str(canary))}\n")
    proc = branch_value(host)
    assert proc.returncode == 0 and proc.stdout == b"good"
    assert b"line 2: PUPPET_BRANCH is not a plain assignment" in proc.stderr
    assert not canary.exists()


def test_override_with_comments_and_escapes_is_applied(host: Host) -> None:
    host.override.write_text(
        f'PUPPET_REPO="file://{host.upstream}"  # fork\n'
        'export PUPPET_BRANCH="main" # my branch\n'
        "PUPPET_MAIL='x@y' # not used\n"
    )
    proc = host.run(FAKE_PUPPET_RC="2")
    assert proc.returncode == 2, proc.stderr
    check_record(host.state_record(), host, exit_code=2)  # the override's repo and branch
