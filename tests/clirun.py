"""The fleetstate command as a user runs it: a real process on a real warehouse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cli_env(columns: str = "200") -> dict[str, str]:
    """The environment of a test run: a short lock wait, a known terminal width."""
    return {**os.environ, "FLEETSTATE_LOCK_WAIT_S": "1", "COLUMNS": columns}


def fs(
    db: Path, *args: str, cwd: Path | None = None, columns: str = "200"
) -> subprocess.CompletedProcess[str]:
    """`fleetstate --db DB ARGS...`, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "--db", str(db), *args],
        capture_output=True, text=True, cwd=cwd or REPO, env=cli_env(columns),
    )  # fmt: skip
