"""The built wheel, installed into a clean virtual environment, runs the demo: queries/ and
the migrations ship inside it, and nothing depends on the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv builds and installs the wheel")
def test_built_wheel_runs_demo_in_a_clean_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(["uv", "build", "--wheel", "--out-dir", str(dist), str(REPO)],
                   check=True, capture_output=True)  # fmt: skip
    (wheel,) = dist.glob("fleetstate-*.whl")
    venv = tmp_path / "venv"
    subprocess.run(["uv", "venv", "--python", sys.executable, str(venv)], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(["uv", "pip", "install", "--python", str(venv / "bin" / "python"), str(wheel)],
                   check=True, capture_output=True)  # fmt: skip
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("FLEETSTATE_DB", "VIRTUAL_ENV")}
    done = subprocess.run([str(venv / "bin" / "fleetstate"), "demo"], cwd=work, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "converged" in done.stdout
    assert (work / "data" / "fleetstate.duckdb").exists()
    names = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib.resources as r; p = r.files('pipeline');"
         "print(sorted(x.name for x in (p / 'queries').iterdir()))"],
        capture_output=True, text=True, check=True, cwd=work,
    ).stdout  # fmt: skip
    assert "20_host_state.sql" in names
