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
