"""Shared fixtures: a throwaway warehouse per test and the developer's environment kept out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from pipeline import warehouse

pytest_plugins = ["sshfleet"]  # its fixtures (no_operator_ssh) for every module


@pytest.fixture(autouse=True)
def _no_user_warehouse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may touch the developer's data/fleetstate.duckdb."""
    monkeypatch.setenv("FLEETSTATE_DB", str(tmp_path / "env-default.duckdb"))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "wh.duckdb"


@pytest.fixture
def con(db_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    c = warehouse.connect(db_path)
    yield c
    c.close()
