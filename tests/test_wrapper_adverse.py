"""Adverse hosts and callers: the record stays valid JSON the collector accepts.

Odd clocks (no date, before 1970, past 9999), integers out of the collector's
ranges, and sha256 repositories.
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
