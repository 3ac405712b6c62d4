"""The layering the code promises, checked on its imports: fetching (SSH) and saving
(DuckDB) never meet outside the command layer, and only the command layer knows typer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PIPELINE = Path(__file__).resolve().parent.parent / "pipeline"
SSH_SIDE = {"collect", "mirror", "remote", "targets", "progress"}
WAREHOUSE_SIDE = {"load", "records", "observations", "warehouse", "report", "analytics",
                  "monitor", "filters", "metrics", "gitgraph"}  # fmt: skip
PRESENTATION = {"render", "progress", "cli"}


def imports(module: str) -> set[str]:
    """Top-level names of everything `module` imports, at the top or inside functions."""
    tree = ast.parse((PIPELINE / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
            if node.module == "pipeline":
                names |= {f"pipeline.{a.name}" for a in node.names}
            elif node.module.startswith("pipeline."):
                names.add(node.module)
    return names


MODULES = sorted(p.stem for p in PIPELINE.glob("*.py") if p.stem not in ("__init__", "__main__"))


@pytest.mark.parametrize("module", MODULES)
def test_only_the_command_layer_imports_typer(module: str) -> None:
    if module != "cli":
        assert "typer" not in imports(module)


@pytest.mark.parametrize("module", MODULES)
def test_rich_stays_in_presentation(module: str) -> None:
    if module not in PRESENTATION:
        assert "rich" not in imports(module)


@pytest.mark.parametrize("module", sorted(SSH_SIDE))
def test_the_ssh_side_never_touches_the_warehouse(module: str) -> None:
    found = imports(module)
    assert not found & {"duckdb", "polars", "pyarrow"}
    assert not {f"pipeline.{m}" for m in WAREHOUSE_SIDE} & found


@pytest.mark.parametrize("module", sorted(WAREHOUSE_SIDE))
def test_the_warehouse_side_never_opens_ssh(module: str) -> None:
    found = imports(module)
    assert "paramiko" not in found
    assert not {f"pipeline.{m}" for m in SSH_SIDE} & found


def test_the_module_lists_are_current() -> None:
    assert SSH_SIDE | WAREHOUSE_SIDE <= set(MODULES)


def test_the_import_reader_sees_what_it_must_forbid() -> None:
    """Guard against a reader that finds nothing and so forbids nothing."""
    assert "typer" in imports("cli")
    assert {"duckdb", "pipeline.records"} <= imports("load")
    assert "paramiko" in imports("collect")
    assert "pyarrow" in imports("load")  # imported inside a function
    assert "rich" in imports("progress")
