"""Adverse hosts and callers: the record stays valid JSON the collector accepts.

Odd clocks (no date, before 1970, past 9999), integers out of the collector's
ranges, sha256 repositories, a working dir inside another repository, and
prepare records after a failed fetch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from wrapper_helpers import (
    ISO_RE,
    Host,
    git,
    make_host,
    write_exe,
)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    h = make_host(tmp_path)
    # no timeout watchdog: with a fake puppet that ends at once its `sleep` can be
    # left behind, and under errexit the watchdog itself is (see the errexit test)
    h.env["PUPPET_TIMEOUT_S"] = "0"
    return h


def _fake_date(host: Host, body: str) -> str:
    """A PATH entry whose `date` runs `body` (sh); returns the new PATH."""
    d = host.root / "fakedate"
    d.mkdir(exist_ok=True)
    write_exe(d / "date", "#!/bin/sh\n" + body + "\n")
    return f"{d}:{host.env['PATH']}"


def test_ts_is_recorded_when_date_fails(host: Host) -> None:
    """ts is required by the collector ("ts is null" rejects the whole record); bash
    itself can tell the time ($EPOCHSECONDS / printf %(%s)T) when date(1) cannot."""
    proc = host.run(FAKE_PUPPET_RC="2", PATH=_fake_date(host, "exit 1"))
    assert proc.returncode == 2
    rec = host.state_record()
    assert rec["ts"] is not None and ISO_RE.match(rec["ts"]), rec["ts"]


def test_git_sha_is_40_hex_or_null_in_a_sha256_repo(host: Host) -> None:
    """Contract and collector: git_sha is a 40-hex commit (else null); a 64-hex sha
    makes the collector reject the whole record."""
    wd = host.working_dir
    git("init", "-q", "--object-format=sha256", "-b", "main", str(wd))
    (wd / "f").write_text("x")
    git("add", ".", cwd=wd)
    git("commit", "-q", "-m", "x", cwd=wd)
    proc = host.bash('write_puppet_state "$1" r 0 1 /o /v', str(wd))
    assert proc.returncode == 0
    sha = host.state_record()["git_sha"]
    assert sha is None or len(sha) == 40, sha


def test_prepare_record_does_not_pair_the_new_repo_with_the_old_commit(host: Host) -> None:
    """A fetch failure after a good run: the record names the new repo and branch
    (remote set-url ran) next to the old checkout's sha, a commit of neither."""
    assert host.run(FAKE_PUPPET_RC="0").returncode == 0
    new_repo = f"file://{host.root}/other-repo"
    host.override.write_text(f'PUPPET_REPO="{new_repo}"\nPUPPET_BRANCH="feature"\n')
    assert host.run(FAKE_PUPPET_RC="0").returncode == 1
    rec = host.history_records()[-1]
    assert rec["stage"] == "prepare"
    assert not (rec["git_repo"] == new_repo and rec["git_sha"] == host.upstream_sha), rec


def _etckeeper(host: Host) -> Path:
    """/etc as a git repository (etckeeper) holding a plain, not yet fetched working dir."""
    outer = host.root / "etc"
    git("init", "-q", "-b", "etc", str(outer))
    git("-C", str(outer), "remote", "add", "origin", "https://etckeeper.example/etc.git")
    git("-C", str(outer), "add", "-A")
    git("-C", str(outer), "commit", "-q", "-m", "etc")
    wd = outer / "puppet" / "environments" / "ronin_puppet"
    wd.mkdir(parents=True)
    return wd


def test_working_dir_inside_another_repo_gives_no_git_facts(host: Host) -> None:
    """The checkout dir exists but is not a repository (not fetched yet) and sits
    inside another repository (etckeeper's /etc): its git facts are not ours. The
    prepare record names the repo and branch asked for (the override's)."""
    wd = _etckeeper(host)
    host.role_file.unlink()  # prepare failure before checkout_code runs
    proc = host.run(PUPPET_WORKING_DIR=str(wd))
    assert proc.returncode == 1
    rec = host.state_record()
    assert (rec["git_sha"], rec["git_dirty"]) == (None, None), rec
    assert (rec["git_repo"], rec["git_branch"]) == (f"file://{host.upstream}", "main")
    # the library itself, given that directory: nothing of etckeeper's
    assert host.bash('write_puppet_state "$1" r 0 1 /o /v', str(wd)).returncode == 0
    rec = host.state_record()
    assert (rec["git_repo"], rec["git_sha"], rec["git_dirty"]) == (None, None, None), rec


def test_integers_the_collector_rejects_are_not_written(host: Host) -> None:
    """exit_code 0..255, attempt >= 1, duration_s 0..2^31-1, started_at ISO: out of
    range, the collector rejects the whole line; the contract says null when unknown."""
    snippet = "puppet_state_record --exit-code 256 --attempt 0 --duration 3000000000 --role r"
    assert host.bash(snippet).returncode == 0
    rec = host.state_record()
    assert rec["exit_code"] in (None, *range(256))
    assert rec["attempt"] is None or rec["attempt"] >= 1
    assert rec["duration_s"] is None or rec["duration_s"] < 2**31
    assert rec["started_at"] is None or ISO_RE.match(rec["started_at"]), rec["started_at"]


# --- clocks and the collector's ranges ---------------------------------------------


@pytest.mark.parametrize(
    "date_body",
    ["exit 1", "echo -86400", "echo 99999999999999", "echo 253402300800"],
    ids=["fails", "before-1970", "far-future", "after-9999"],
)
def test_ts_is_a_time_the_collector_accepts_whatever_date_says(host: Host, date_body: str) -> None:
    """date(1) failing or out of 1970..9999: bash's own clock gives the time; a
    year of 1969 or 3170843 is never written."""
    proc = host.run(FAKE_PUPPET_RC="2", PATH=_fake_date(host, date_body))
    assert proc.returncode == 2
    rec = host.state_record()
    for key in ("ts", "started_at"):
        assert rec[key] is not None and ISO_RE.match(rec[key]), rec[key]
        assert "1970" <= rec[key][:4] <= "9999"
    assert rec["started_at"] <= rec["ts"]


ISO_UTC = '_ps_iso_utc "$1"; echo "rc=$? iso=$_PS_ISO"'


@pytest.mark.parametrize(
    "epoch",
    [0, 1, 86399, 951782400, 1790000000, 4107542400, 253402300799],
)
def test_iso_utc_agrees_with_python(host: Host, epoch: int) -> None:
    proc = host.bash(ISO_UTC, str(epoch))
    expected = datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert proc.stdout.decode() == f"rc=0 iso={expected}\n"


@pytest.mark.parametrize("epoch", ["-1", "-86400", "253402300800", "99999999999999", "", "x1"])
def test_iso_utc_gives_nothing_outside_1970_to_9999(host: Host, epoch: str) -> None:
    """No malformed or pre-1970 time (the collector rejects both): status 1, empty."""
    assert host.bash(ISO_UTC, epoch).stdout == b"rc=1 iso=\n"


def test_started_at_before_1970_is_null(host: Host) -> None:
    """No puppet_state_begin: started_at is ts minus --duration; 2e9 s (a valid
    duration_s) before now is 1963, which the collector rejects."""
    assert host.bash("puppet_state_record --exit-code 0 --duration 2000000000").returncode == 0
    rec = host.state_record()
    assert rec["duration_s"] == 2_000_000_000
    assert rec["started_at"] is None and ISO_RE.match(rec["ts"])


@pytest.mark.parametrize(
    ("args", "field", "value"),
    [
        ("--exit-code 255", "exit_code", 255),
        ("--exit-code 256", "exit_code", None),
        ("--exit-code 007", "exit_code", 7),
        ("--attempt 2147483647", "attempt", 2147483647),
        ("--attempt 2147483648", "attempt", None),
        ("--attempt 0", "attempt", None),
        ("--duration 0", "duration_s", 0),
        ("--duration 2147483648", "duration_s", None),
        ("--duration 0000000000000000000000042", "duration_s", 42),
    ],
)
def test_integer_range_edges(host: Host, args: str, field: str, value: int | None) -> None:
    assert host.bash(f"puppet_state_record --role r {args}").returncode == 0
    assert host.state_record()[field] == value


# --- git facts ---------------------------------------------------------------------


def test_repo_asked_for_that_is_not_the_checkouts_gives_no_commit(host: Host) -> None:
    """--repo names the repo an attempt asked for; a checkout of another repo holds a
    commit of neither (the fetch failed), so git_sha and git_dirty are null."""
    wd = host.working_dir
    git("clone", "-q", str(host.upstream), str(wd))
    record = 'puppet_state_record --exit-code "" --stage prepare --working-dir "$1" --repo "$2"'
    assert host.bash(record, str(wd), "https://other.example/x.git").returncode == 0
    rec = host.state_record()
    assert (rec["git_repo"], rec["git_sha"], rec["git_dirty"]) == (
        "https://other.example/x.git",
        None,
        None,
    )
    assert host.bash(record, str(wd), str(host.upstream)).returncode == 0
    rec = host.state_record()
    assert (rec["git_repo"], rec["git_sha"]) == (str(host.upstream), host.upstream_sha)


def test_failed_fetch_leaves_origin_naming_the_checked_out_commit(host: Host) -> None:
    """origin is set to the new repo only once its commit is checked out: a later
    record of the checkout (seed-style) pairs the old commit with the old repo."""
    assert host.run(FAKE_PUPPET_RC="0").returncode == 0
    host.override.write_text(f'PUPPET_REPO="file://{host.root}/missing"\nPUPPET_BRANCH="x"\n')
    assert host.run(FAKE_PUPPET_RC="0").returncode == 1
    url = git("-C", str(host.working_dir), "config", "--get", "remote.origin.url")
    assert url == f"file://{host.upstream}"


def test_prepare_failure_after_the_checkout_keeps_its_commit(host: Host) -> None:
    """The commit asked for is checked out, then installing the vault fails: the
    prepare record names that commit (the checkout got there), with the repo asked."""
    secrets = host.working_dir / "data" / "secrets"
    git("clone", "-q", str(host.upstream), str(host.working_dir))
    secrets.parent.mkdir()
    secrets.write_text("a file where the directory goes\n")
    proc = host.run(FAKE_PUPPET_RC="0")
    assert proc.returncode == 1 and "could not install the vault" in proc.stderr
    rec = host.state_record()
    assert rec["stage"] == "prepare" and rec["git_sha"] == host.upstream_sha
    assert rec["git_repo"] == f"file://{host.upstream}" and rec["git_branch"] == "main"


def test_subdirectory_of_a_checkout_gives_no_git_facts(host: Host) -> None:
    git("clone", "-q", str(host.upstream), str(host.working_dir))
    sub = host.working_dir / "manifests"
    assert host.bash('write_puppet_state "$1" r 0 1 /o /v', str(sub)).returncode == 0
    rec = host.state_record()
    assert (rec["git_repo"], rec["git_sha"], rec["git_dirty"]) == (None, None, None)


def test_working_dir_reached_through_a_symlink_keeps_its_git_facts(host: Host) -> None:
    """The top-level check compares physical paths: a symlinked path is the checkout."""
    git("clone", "-q", str(host.upstream), str(host.working_dir))
    link = host.root / "link"
    link.symlink_to(host.working_dir)
    assert host.bash('write_puppet_state "$1" r 0 1 /o /v', "link").returncode == 0
    rec = host.state_record()
    assert (rec["git_repo"], rec["git_sha"]) == (str(host.upstream), host.upstream_sha)
