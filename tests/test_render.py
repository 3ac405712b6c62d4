"""Tables as the user sees them: aligned columns, colour only on a terminal, no control
characters from the data reaching the terminal."""

from __future__ import annotations

import io
import sys

import pytest

from pipeline import render


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def table(monkeypatch: pytest.MonkeyPatch, out: io.StringIO, **kw: object) -> str:
    monkeypatch.setattr(sys, "stdout", out)
    rows = render.Rows(["host", "applied", "note"], [
        ("a.example.com", "Y", None),
        ("bb", "N", "line\nbreak \x1b[2J\x9b"),
        ("日本", "-", "é"),
    ])  # fmt: skip
    styles = {"applied": lambda v: {"Y": "green", "N": "bold red"}.get(v)}
    render.print_table(rows, kw.get("title"), styles)  # type: ignore[arg-type]
    return out.getvalue()


def test_columns_line_up_without_colour_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    text = table(monkeypatch, io.StringIO(), title="fleet")
    assert text.splitlines() == [
        "fleet",
        "HOST           APPLIED  NOTE",
        "a.example.com  Y",
        r"bb             N        line\nbreak \x1b[2J\x9b",
        "日本           -        é",  # wide characters take two columns
    ]
    assert "\x1b" not in text


def test_colour_on_a_terminal_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    text = table(monkeypatch, Terminal())
    assert "\x1b[32mY\x1b[0m" in text and "\x1b[1;31mN\x1b[0m" in text
    assert "\x1b[1mHOST\x1b[0m" in text
    # the data's own escape sequence is still shown escaped, never sent
    assert "\x1b[2J" not in text and r"\x1b[2J" in text
    # padding goes after the colour codes, so columns still line up on screen
    visible = [line.replace("\x1b[32m", "").replace("\x1b[1;31m", "").replace("\x1b[0m", "")
               .replace("\x1b[1m", "") for line in text.splitlines()]  # fmt: skip
    assert visible[1].index("Y") == visible[2].index("N") == visible[0].index("APPLIED")
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in table(monkeypatch, Terminal()).replace(r"\x1b[", "")


def test_no_rows_says_so_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    render.print_table(render.Rows(["host"], []), None, {})
    out, err = capsys.readouterr()
    assert out == "HOST\n" and err == "(no rows)\n"


def test_column_names_from_data_are_shown_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PIVOT turns values from hosts into column names."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    render.print_table(render.Rows(["role\x1b[2J\nx", "n"], [(1, 2)]), None, {})
    assert out.getvalue().splitlines()[0] == r"ROLE\x1b[2J\nX  N"
    assert "\x1b" not in out.getvalue()


def test_host_text_in_rich_messages_is_escaped() -> None:
    from pipeline.progress import _shown

    assert _shown("evil\x1b]0;pwned\x07 [bold]x[/]") == r"evil\x1b]0;pwned\x07 \[bold]x\[/]"
    assert _shown(None) == ""


def test_json_of_intervals_is_iso_8601_and_csv_of_structs_is_json() -> None:
    """An INTERVAL was Python's '3 days, 4:05:06' in json; a struct Python's repr in csv."""
    from datetime import timedelta

    rows = render.Rows(
        ["span", "s"],
        [(timedelta(days=3, hours=4, minutes=5, seconds=6), {"a": 1, "b": None}),
         (timedelta(seconds=1.5), {"a": float("nan"), "b": "x"}),
         (-timedelta(hours=2), {"a": 2, "b": "y"})],
    )  # fmt: skip
    parsed = [r["span"] for r in __import__("json").loads(render.to_json(rows))]
    assert parsed == ["P3DT4H5M6S", "PT1.5S", "-PT2H"]
    lines = render.to_csv(rows).splitlines()
    assert lines[1] == 'P3DT4H5M6S,"{""a"": 1, ""b"": null}"'
    assert lines[2] == 'PT1.5S,"{""a"": null, ""b"": ""x""}"'


def test_percent_never_reads_as_all_or_none_when_it_is_not() -> None:
    """The rollout headline printed 2,000 converged of 2,001 as 100.0%."""
    from pipeline.render import percent

    assert percent(100 * 2000 / 2001) == "99.95"
    assert percent(100 * 1 / 2001) == "0.05"
    assert (percent(100.0), percent(0.0), percent(59.0909)) == ("100.0", "0.0", "59.1")
