from pathlib import Path

import pytest

from pipeline.targets import TargetError, is_valid_host, parse_targets


def test_names_and_files_deduplicated_in_order(tmp_path: Path) -> None:
    lst = tmp_path / "fleet.txt"
    lst.write_text(
        "# the web tier\n"
        "web1.example.com\n"
        "\n"
        "# fqdn: .dc1.example.com\n"
        "db1   # primary\n"
        "db2\n"
        "WEB1.example.com\n"
        "mac1.other.org\n"
        "# fqdn:\n"
        "bare\n"
    )
    assert parse_targets(["solo", str(lst), "db1.dc1.example.com"]) == [
        "solo",
        "web1.example.com",
        "db1.dc1.example.com",
        "db2.dc1.example.com",
        "mac1.other.org",
        "bare",
    ]


def test_directive_without_dot_and_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "hosts").write_text("#fqdn: corp.net\nh1\n# FQDN: .dc3.example.com   # dc3\ny1\n")
    monkeypatch.chdir(tmp_path)
    assert parse_targets(["hosts"]) == ["h1.corp.net", "y1.dc3.example.com"]


def test_unreadable_list_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="cannot read host list"):
        parse_targets([str(tmp_path / "missing.txt")])
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TargetError, match="cannot read host list"):
        parse_targets([str(tmp_path / "bin")])


def test_invalid_name_in_list_names_file_and_line(tmp_path: Path) -> None:
    lst = tmp_path / "l"
    lst.write_text("ok1\nbad_host\n")
    with pytest.raises(TargetError, match=r"'bad_host' \(.*l:2\)"):
        parse_targets([str(lst)])


@pytest.mark.parametrize(
    "name",
    ["-lead", "trail-", "a..b", "sp ace", "x;rm -rf /", "$(id)", "a" * 64, "", "é.com", "a_b"],
)
def test_invalid_host_names_rejected(name: str) -> None:
    assert not is_valid_host(name)
    with pytest.raises(TargetError):
        parse_targets([name])


@pytest.mark.parametrize("name", ["h", "web-01", "127.0.0.1", "a.b.c.example", "x" * 63])
def test_valid_host_names(name: str) -> None:
    assert is_valid_host(name)
