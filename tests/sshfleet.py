"""Simulated hosts for the collector tests: a real OpenSSH sshd per host.

Each host is `sshd -D` on its own loopback port inside its own mount namespace
(`unshare -m`), where /etc and /var are overlays and /etc/puppet, /var/log,
/root, /opt and /var/root are bind mounts of directories under the host's
tmp directory, so a test writes a host's files directly and the host sees them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.collect import CollectOptions

SSHD = "/usr/sbin/sshd"

NAMESPACE_SCRIPT = r"""
set -e
R=$1
mount -t tmpfs tmpfs /run
mkdir -p /run/sshd
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$R/ns/etc_up,workdir=$R/ns/etc_work" /etc
mount -t overlay overlay -o "lowerdir=/var,upperdir=$R/ns/var_up,workdir=$R/ns/var_work" /var
mount --bind "$R/fs/etc_puppet" /etc/puppet
mount --bind "$R/fs/puppet_role" /etc/puppet_role
mount --bind "$R/fs/var_log" /var/log
mount --bind "$R/fs/var_root" /var/root
mount --bind "$R/fs/root" /root
mount --bind "$R/fs/opt" /opt
exec /usr/sbin/sshd -D -e -f "$R/sshd_config"
"""

# remote path prefix -> directory under <host>/fs
_MOUNTS = {
    "/etc/puppet_role": "puppet_role",
    "/etc/puppet": "etc_puppet",
    "/var/log": "var_log",
    "/var/root": "var_root",
    "/root": "root",
    "/opt": "opt",
}

HISTORY = "/var/log/puppet_run_history.jsonl"

MAC_SHIMS = {
    "uname": '#!/bin/sh\ncase "$1" in -r) echo 23.4.0;; -m) echo arm64;; *) echo Darwin;; esac\n',
    "stat": (
        "#!/bin/sh\n"
        'L=; if [ "$1" = -L ]; then L=-L; shift; fi\n'  # BSD: stat [-L] -f FORMAT FILE
        '[ "$1" = -f ] || { echo "stat: illegal option -- ${1#-}" >&2; exit 1; }\n'
        'fmt=$(printf %s "$2" | sed "s/%z/%s/g; s/%l/%h/g")\n'
        'exec /usr/bin/stat $L -c "$fmt" "$3"\n'
    ),
    "shasum": '#!/bin/sh\n[ "$1" = -a ] && shift 2\nexec /usr/bin/sha256sum "$@"\n',
    "sysctl": (
        "#!/bin/sh\nread -r up _ </proc/uptime\n"
        'echo "{ sec = $(($(/usr/bin/date +%s) - ${up%%.*})), usec = 0 } Mon Jan  5 10:00:00"\n'
    ),
}
MAC_TOOLS = ["sh", "cat", "wc", "tr", "tail", "head", "sed", "grep", "id", "date", "cksum", "cut"]
SUDO_REFUSED = '#!/bin/sh\necho "sudo: a password is required" >&2\nexit 1\n'


def skip_reason() -> str | None:
    """Why the simulated fleet cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (mount namespaces, sshd)"
    for tool in (SSHD, shutil.which("unshare"), shutil.which("ssh-keygen")):
        if not tool or not os.access(tool, os.X_OK):
            return f"missing tool: {tool or 'unshare/ssh-keygen'}"
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True
    )
    if probe.returncode != 0:
        return f"unshare -m does not work here: {probe.stderr.decode().strip()}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True
    )
    return path.with_suffix(".pub").read_text().split()[1]


def record(
    ts: str, sha: str = "a" * 40, success: bool = True, **extra: object
) -> dict[str, object]:
    """A schema v1 run record, as the wrapper writes it."""
    rec: dict[str, object] = {
        "schema_version": 1,
        "ts": ts,
        "success": success,
        "exit_code": 0 if success else 1,
        "git_repo": "https://example.com/puppet.git",
        "git_branch": "main",
        "git_sha": sha,
        "override_sha": None,
        "vault_sha": None,
        "override_path": "/etc/puppet/ronin_settings",
        "role": "worker",
        "duration_s": 30,
        "git_dirty": False,
        "vault_path": "/root/vault.yaml",
        "host": "sim",
        "run_id": str(uuid.uuid4()),
        "started_at": ts,
        "attempt": 1,
        "stage": "puppet",
        "os": "Linux",
        "wrapper_version": "test",
    }
    rec.update(extra)
    return rec


def lines(n: int, start: int = 0, pad: int = 0) -> bytes:
    """`n` history lines; `pad` adds a filler field to make lines bigger."""
    out = []
    for i in range(start, start + n):
        rec = record(
            f"2026-01-{1 + i // 1440 % 28:02d}T{i // 60 % 24:02d}:{i % 60:02d}:00Z",
            run_id=f"run-{i:06d}",
        )
        if pad:
            rec["filler"] = "x" * pad
        out.append(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
    return b"".join(out)


@dataclass
class SimHost:
    name: str
    base: Path
    user: str = "root"
    macos: bool = False
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> Path:
        return self.base / self.name

    def path(self, remote: str) -> Path:
        """The local file behind a path on the host."""
        for prefix, sub in _MOUNTS.items():
            if remote == prefix or remote.startswith(prefix + "/"):
                return self.root / "fs" / sub / remote[len(prefix) :].lstrip("/")
        raise ValueError(f"{remote} is not a simulated path")

    def write(self, remote: str, data: bytes | str) -> None:
        p = self.path(remote)
        p.parent.mkdir(parents=True, exist_ok=True)
        if remote == "/etc/puppet_role":  # a bind-mounted file: rewrite in place
            with open(p, "r+b") as fh:
                fh.truncate(0)
                fh.write(data.encode() if isinstance(data, str) else data)
            return
        p.write_bytes(data.encode() if isinstance(data, str) else data)

    def append(self, remote: str, data: bytes) -> None:
        p = self.path(remote)
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "ab") as fh:
            fh.write(data)

    def prepare(self, user_key_pub: str) -> None:
        r = self.root
        for d in (
            "ns/etc_up/ssh",
            "ns/etc_up/puppet",
            "ns/etc_up/fleetsim/bin",
            "ns/etc_work",
            "ns/var_up/root",
            "ns/var_work",
            *(f"fs/{s}" for s in _MOUNTS.values()),
        ):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "fs/puppet_role").rmdir()
        (r / "fs/puppet_role").write_text("")
        (r / "ns/etc_up/puppet_role").write_text("")
        for d in ("fs/var_log", "fs/opt", "fs/etc_puppet"):
            os.chmod(r / d, 0o755)
        for d in ("fs/root", "fs/var_root"):
            os.chmod(r / d, 0o700)
        (r / "ns/etc_up/ssh/fleetsim_authorized_keys").write_text(f"ssh-ed25519 {user_key_pub}\n")
        bindir = r / "ns/etc_up/fleetsim/bin"
        _script(bindir / "sudo", SUDO_REFUSED)
        path = "/etc/fleetsim/bin:/usr/local/bin:/usr/bin:/bin"
        if self.macos:
            path = "/etc/fleetsim/mac"
            mac = r / "ns/etc_up/fleetsim/mac"
            mac.mkdir()
            for name, text in MAC_SHIMS.items():
                _script(mac / name, text)
            for tool in MAC_TOOLS:
                (mac / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
        if self.user != "root":
            _add_user(r / "ns/etc_up", self.user)
        keygen(r / "ssh_host_key")
        os.chmod(r / "ssh_host_key", 0o600)
        (r / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {r}/ssh_host_key\n"
            "PidFile none\nAuthorizedKeysFile /etc/ssh/fleetsim_authorized_keys\n"
            "StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "AllowTcpForwarding yes\nMaxStartups 200\nMaxSessions 50\nLogLevel ERROR\n"
            f"SetEnv PATH={path}\n"
        )

    def host_key(self) -> str:
        return (self.root / "ssh_host_key.pub").read_text().split()[1]

    def new_host_key(self) -> None:
        """Reimage the host's identity: a fresh host key (takes effect on restart)."""
        for f in ("ssh_host_key", "ssh_host_key.pub"):
            (self.root / f).unlink()
        keygen(self.root / "ssh_host_key")
        os.chmod(self.root / "ssh_host_key", 0o600)

    def start(self) -> None:
        log = open(self.root / "sshd.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                NAMESPACE_SCRIPT,
                "sh",
                str(self.root),
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        wait_for_banner(self.port, self.proc, self.root / "sshd.log")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    os.chmod(path, 0o755)


def _add_user(etc_up: Path, user: str) -> None:
    (etc_up / "passwd").write_text(
        Path("/etc/passwd").read_text() + f"{user}:x:4242:4242:{user}:/tmp:/bin/sh\n"
    )
    (etc_up / "shadow").write_text(
        Path("/etc/shadow").read_text() + f"{user}:*:19000:0:99999:7:::\n"
    )
    (etc_up / "group").write_text(Path("/etc/group").read_text() + f"{user}:x:4242:\n")


def wait_for_banner(
    port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 10
) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"sshd on port {port} did not answer: {log.read_text()[-2000:]}")


@dataclass
class Fleet:
    """Hosts plus the client side: user key, known_hosts and an ssh_config naming them."""

    base: Path
    hosts: dict[str, SimHost] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.client = self.base / "client"
        self.client.mkdir(exist_ok=True)
        self.user_key = self.client / "id_ed25519"
        self.user_key_pub = keygen(self.user_key)
        self.known_hosts = self.client / "known_hosts"
        self.ssh_config = self.client / "config"

    def add(self, name: str, **kw: object) -> SimHost:
        host = SimHost(name, self.base / "hosts", **kw)  # type: ignore[arg-type]
        host.prepare(self.user_key_pub)
        self.hosts[name] = host
        return host

    def start(self, skip: tuple[str, ...] = ()) -> None:
        for h in self.hosts.values():
            if h.name not in skip:
                h.start()
        self.write_client_files()

    def write_client_files(self, extra_config: str = "") -> None:
        self.known_hosts.write_text(
            "".join(
                f"[127.0.0.1]:{h.port} ssh-ed25519 {h.host_key()}\n" for h in self.hosts.values()
            )
        )
        cfg = [extra_config]
        for h in self.hosts.values():
            cfg.append(
                f"Host {h.name}\n  HostName 127.0.0.1\n  Port {h.port}\n  User {h.user}\n"
                f"  IdentityFile {self.user_key}\n"
            )
        self.ssh_config.write_text("\n".join(cfg))

    def stop(self) -> None:
        for h in self.hosts.values():
            h.stop()


# A `tail` that, when armed (/root/rotate-after names a file), rotates the history the way
# the wrapper does (rename to .1, then a new file from /root/next-history) right after it
# has printed that file: a rotation that lands while a collection is reading the host.
ROTATING_TAIL = r"""#!/bin/sh
for last in "$@"; do :; done
case $last in -* | +* | '') last=$(readlink "/proc/$$/fd/0") ;; esac  # reading stdin
if [ -f /root/rotate-after ] && [ "$last" = "$(cat /root/rotate-after)" ]; then
  /usr/bin/tail "$@"; rc=$?
  rm -f /root/rotate-after
  mv /var/log/puppet_run_history.jsonl /var/log/puppet_run_history.jsonl.1
  cat /root/next-history >/var/log/puppet_run_history.jsonl
  exit $rc
fi
exec /usr/bin/tail "$@"
"""


def install_rotating_tail(host: SimHost) -> None:
    shim = host.root / "ns/etc_up/fleetsim/bin/tail"
    shim.write_text(ROTATING_TAIL)
    os.chmod(shim, 0o755)


def collect_options(fleet: Fleet, **kw: Any) -> CollectOptions:
    """What the collector tests run with: the fleet's ssh_config and known_hosts, short
    timeouts; `kw` overrides."""
    base: dict[str, Any] = dict(
        ssh_config=fleet.ssh_config,
        known_hosts=fleet.known_hosts,
        connect_timeout=5,
        host_timeout=20,
        backoff=0.05,
    )
    base.update(kw)
    return CollectOptions(**base)


@pytest.fixture
def no_operator_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's own ~/.ssh and agent out of a test (modules that collect use it
    for every test: `pytestmark = pytest.mark.usefixtures("no_operator_ssh")`)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
