"""The fleetstate command as a user runs it: a real process on a real warehouse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def ingest_from(db: Path, mirror: Path, **env: str) -> None:
    """`fleetstate --db DB ingest --from MIRROR` (with `env` added), which must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--db", str(db), "ingest", "--from", str(mirror)],
        capture_output=True, text=True, cwd=REPO, env={**cli_env(), **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def fs_json(db: Path, *args: str) -> Any:
    """`fleetstate --db DB ARGS... --format json`, which must succeed, parsed."""
    done = fs(db, *args, "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
