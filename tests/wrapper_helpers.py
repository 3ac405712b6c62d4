"""Shared pieces for the wrapper tests: a fake host laid out in tmp_path.

The wrapper is run by real bash against a real git repository (a file://
remote) with a fake `puppet` on PATH; nothing touches /etc or /var/log.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WRAPPER_DIR = Path(__file__).resolve().parent.parent / "wrapper"
LIB = WRAPPER_DIR / "puppet_state.sh"
LINUX_SCRIPT = WRAPPER_DIR / "run-puppet-linux.sh"
MACOS_SCRIPT = WRAPPER_DIR / "run-puppet-macos.sh"
BASH = "/bin/bash"

FIELDS = [
    "schema_version",
    "ts",
    "success",
    "exit_code",
    "git_repo",
    "git_branch",
    "git_sha",
    "override_sha",
    "vault_sha",
    "override_path",
    "role",
    "duration_s",
    "git_dirty",
    "vault_path",
    "host",
    "run_id",
    "started_at",
    "attempt",
    "stage",
    "os",
    "wrapper_version",
]
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# A puppet that prints, leaves a marker, then exits FAKE_PUPPET_RC (or hangs).
FAKE_PUPPET = """#!/bin/bash
echo "fake puppet $*"
echo "role=$FACTER_puppet_role" >> "$FAKE_PUPPET_MARKER"
if [ -n "${FAKE_PUPPET_HANG:-}" ]; then sleep 300; fi
exit "${FAKE_PUPPET_RC:-0}"
"""

GIT_ID = ["-c", "user.email=t@example.com", "-c", "user.name=test"]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def git(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(
        ["git", *GIT_ID, *args], cwd=cwd, check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def make_upstream(path: Path) -> str:
    """A real git repo shaped like the puppet code; returns the HEAD sha of main."""
    git("init", "-q", "-b", "main", str(path))
    (path / "manifests").mkdir()
    (path / "manifests" / "site.pp").write_text("node default {}\n")
    (path / "modules").mkdir()
    (path / "modules" / ".keep").write_text("")
    git("add", ".", cwd=path)
    git("commit", "-q", "-m", "init", cwd=path)
    return git("rev-parse", "HEAD", cwd=path)


def fqdn() -> str:
    out = subprocess.run(["hostname", "-f"], capture_output=True, text=True)
    return (
        out.stdout.strip()
        or subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    )


@dataclass
class Host:
    """A fake host in a temp dir: every path the wrapper uses is redirected."""

    root: Path
    upstream_sha: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def state(self) -> Path:
        return self.root / "etc" / "puppet" / "last_run_metadata.json"

    @property
    def history(self) -> Path:
        return self.root / "log" / "puppet_run_history.jsonl"

    @property
    def override(self) -> Path:
        return self.root / "etc" / "puppet" / "ronin_settings"

    @property
    def vault(self) -> Path:
        return self.root / "root" / "vault.yaml"

    @property
    def role_file(self) -> Path:
        return self.root / "etc" / "puppet_role"

    @property
    def working_dir(self) -> Path:
        return self.root / "ronin_puppet"

    @property
    def marker(self) -> Path:
        return self.root / "puppet_called"

    @property
    def upstream(self) -> Path:
        return self.root / "upstream"

    def history_records(self) -> list[dict[str, Any]]:
        if not self.history.exists():
            return []
        return [json.loads(line) for line in self.history.read_text().splitlines()]

    def state_record(self) -> dict[str, Any]:
        text = self.state.read_text()
        assert text.endswith("\n") and text.count("\n") == 1
        return dict(json.loads(text))

    def run(
        self, script: Path = LINUX_SCRIPT, timeout: float = 60, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **extra}
        return subprocess.run(
            [BASH, str(script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )

    def bash(
        self, snippet: str, *args: str | bytes, timeout: float = 60, **extra: str
    ) -> subprocess.CompletedProcess[bytes]:
        """Run snippet after sourcing the library; args are $1..."""
        env = {**self.env, **extra}
        cmd: list[str | bytes] = [BASH, "-c", f'. "{LIB}"\n{snippet}', "snippet", *args]
        return subprocess.run(cmd, env=env, capture_output=True, timeout=timeout, cwd=self.root)


def make_host(root: Path) -> Host:
    host = Host(root=root)
    for d in (host.bin, host.state.parent, host.history.parent, host.vault.parent):
        d.mkdir(parents=True, exist_ok=True)
    host.upstream_sha = make_upstream(host.upstream)
    write_exe(host.bin / "puppet", FAKE_PUPPET)
    host.override.write_text(
        f'PUPPET_REPO="file://{host.upstream}"\nPUPPET_BRANCH="main"\nPUPPET_MAIL="x@y"\n'
    )
    host.vault.write_text("secret_token: vault-content-must-not-leak-4242\n")
    host.role_file.write_text("gecko_t_linux_talos\n")
    host.env = {
        "PATH": f"{host.bin}:{os.environ['PATH']}",
        "HOME": str(root),
        "LANG": "C.UTF-8",
        "PUPPET_STATE_FILE": str(host.state),
        "PUPPET_RUN_HISTORY": str(host.history),
        "PUPPET_OVERRIDE_FILE": str(host.override),
        "PUPPET_VAULT_FILE": str(host.vault),
        "PUPPET_ROLE_FILE": str(host.role_file),
        "PUPPET_WORKING_DIR": str(host.working_dir),
        "PUPPET_RUN_LOG": str(root / "log" / "puppet_run.log"),
        "PUPPET_RETRY_DELAY_S": "0",
        "PUPPET_SINGLE_RUN": "1",
        "FAKE_PUPPET_MARKER": str(host.marker),
    }
    return host


def restricted_bin(dest: Path, without: set[str]) -> Path:
    """A PATH dir holding every tool of /usr/bin except `without` (symlinks)."""
    dest.mkdir(parents=True, exist_ok=True)
    for d in ("/usr/local/bin", "/usr/bin", "/usr/sbin"):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            target = dest / name
            if name in without or target.exists() or target.is_symlink():
                continue
            src = os.path.join(d, name)
            if os.access(src, os.X_OK) and not os.path.isdir(src):
                target.symlink_to(src)
    return dest


def check_record(
    rec: dict[str, Any],
    host: Host,
    *,
    exit_code: int | None,
    stage: str = "puppet",
    attempt: int = 1,
    os_name: str = "Linux",
) -> None:
    """Field-by-field check of one record written by a wrapper run on `host`."""
    assert list(rec) == FIELDS
    assert rec["schema_version"] == 1
    assert ISO_RE.match(rec["ts"]) and ISO_RE.match(rec["started_at"])
    assert rec["started_at"] <= rec["ts"]
    assert rec["exit_code"] == exit_code
    assert rec["success"] is (exit_code in (0, 2))
    assert rec["override_path"] == str(host.override)
    assert rec["vault_path"] == str(host.vault)
    assert rec["override_sha"] == sha256_file(host.override)
    assert rec["vault_sha"] == (sha256_file(host.vault) if host.vault.exists() else None)
    assert isinstance(rec["duration_s"], int) and rec["duration_s"] >= 0
    assert rec["host"] == fqdn()
    assert UUID_RE.match(rec["run_id"])
    assert rec["attempt"] == attempt
    assert rec["stage"] == stage
    assert rec["os"] == os_name
    assert rec["wrapper_version"] == "1.0.0"
    if stage == "puppet":
        assert rec["role"] == "gecko_t_linux_talos"
        assert rec["git_repo"] == f"file://{host.upstream}"
        assert rec["git_branch"] == "main"
        assert rec["git_sha"] == host.upstream_sha
        assert rec["git_dirty"] is False
