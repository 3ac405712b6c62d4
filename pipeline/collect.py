"""Collect every host over SSH: one connection and one remote script per host.

SSH is set up the way operators already have it: ~/.ssh/config (HostName,
User, Port, IdentityFile, ProxyJump, ProxyCommand), ssh-agent keys, host keys
checked against known_hosts, never a prompt. Results go to the Mirror only;
this module never touches the warehouse.
"""

from __future__ import annotations

import errno
import getpass
import glob
import logging
import os
import random
import re
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paramiko

from pipeline import knownhosts
from pipeline.errors import FleetstateError
from pipeline.mirror import CURSOR, Cursor, Mirror
from pipeline.remote import ReportError, build_command, interpret, parse_sections, posix_cksum
from pipeline.targets import validate_host

# paramiko's transport thread logs a failed handshake (with a traceback) before the caller
# gets it as an exception; the collector names each host's error in one line itself
logging.getLogger("paramiko").addHandler(logging.NullHandler())

COLLECTOR_VERSION = "fleetstate-collect/1"


@dataclass
class CollectOptions:
    ssh_config: Path | None = None  # None: ~/.ssh/config when it exists
    known_hosts: Path | None = None  # None: ssh_config's UserKnownHostsFile, else ~/.ssh/
    accept_new_host_keys: bool = False  # else as ssh_config's StrictHostKeyChecking says
    user: str | None = None
    port: int | None = None
    identity_files: list[Path] = field(default_factory=list)
    connect_timeout: float = 10
    host_timeout: float = 60
    retries: int = 2
    jobs: int = 16
    backoff: float = 0.5  # first retry delay in seconds; doubles, with jitter

    def known_hosts_path(self) -> Path:
        return self.known_hosts or Path("~/.ssh/known_hosts").expanduser()

    def ssh_config_path(self) -> Path | None:
        if self.ssh_config is not None:
            return self.ssh_config
        default = Path("~/.ssh/config").expanduser()
        return default if default.exists() else None


@dataclass(frozen=True)
class ProgressEvent:
    """Sent from the collecting thread's caller: `start`, `host`, then `finish`."""

    kind: str
    total: int
    done: int
    failed: int
    bytes_pulled: int
    host: str | None = None
    error: str | None = None


@dataclass
class HostResult:
    host: str
    ok: bool
    error: str | None = None
    history_bytes: int = 0  # new history bytes appended to the mirror
    report_bytes: int = 0  # bytes of the remote script's output
    bytes_on_wire: int = 0  # raw SSH bytes, both directions, handshake included
    attempts: int = 0
    seconds: float = 0.0
    mode: str | None = None  # append | rotated | restart | first


@dataclass
class FleetResult:
    hosts_ok: list[str]
    hosts_failed: dict[str, str]
    bytes_pulled: int
    bytes_on_wire: int
    seconds: float = 0.0
    per_host: dict[str, HostResult] = field(default_factory=dict)


class _CountingSocket:
    """Delegates to a socket-like object and counts the bytes through it."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.sent = 0
        self.received = 0

    def send(self, data: bytes) -> int:
        n: int = self._sock.send(data)
        self.sent += n
        return n

    def recv(self, size: int) -> bytes:
        data: bytes = self._sock.recv(size)
        self.received += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def collect_fleet(
    hosts: list[str],
    mirror: Mirror,
    options: CollectOptions,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> FleetResult:
    """Collect `hosts` concurrently (`options.jobs` at a time) into `mirror`."""
    hosts = list(dict.fromkeys(validate_host(h) for h in hosts))
    config = load_ssh_config(options.ssh_config_path())
    started = time.monotonic()
    result = FleetResult([], {}, 0, 0)
    emit = progress or (lambda event: None)

    def event(kind: str, host: str | None = None, error: str | None = None) -> None:
        emit(
            ProgressEvent(
                kind,
                len(hosts),
                len(result.per_host),
                len(result.hosts_failed),
                result.bytes_pulled,
                host,
                error,
            )
        )

    event("start")
    abort = Abort()
    with mirror.locked(), ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
        futures = {pool.submit(collect_host, h, mirror, options, config, abort): h for h in hosts}
        try:
            for future in as_completed(futures):
                hr = future.result()
                result.per_host[hr.host] = hr
                result.bytes_pulled += hr.history_bytes
                result.bytes_on_wire += hr.bytes_on_wire
                if hr.ok:
                    result.hosts_ok.append(hr.host)
                else:
                    result.hosts_failed[hr.host] = hr.error or "failed"
                event("host", hr.host, hr.error)
        except BaseException:  # Ctrl-C: hosts not started are dropped, those in flight stop
            pool.shutdown(wait=False, cancel_futures=True)
            abort.fire()
            event("finish")  # the progress display gives the terminal back
            raise
    result.hosts_ok.sort()
    result.seconds = time.monotonic() - started
    event("finish")
    return result


class Abort:
    """A collection cut short (Ctrl-C): the hosts in flight close their connections at
    once, instead of each waiting out its timeout, and record nothing of this attempt."""

    def __init__(self) -> None:
        self.fired = threading.Event()
        self._kills: set[Callable[[], None]] = set()
        self._lock = threading.Lock()

    def register(self, kill: Callable[[], None]) -> None:
        with self._lock:
            self._kills.add(kill)
        if self.fired.is_set():
            kill()

    def unregister(self, kill: Callable[[], None]) -> None:
        with self._lock:
            self._kills.discard(kill)

    def fire(self) -> None:
        self.fired.set()
        with self._lock:
            kills = list(self._kills)
        for kill in kills:
            kill()


def collect_host(
    host: str,
    mirror: Mirror,
    options: CollectOptions,
    config: paramiko.SSHConfig,
    abort: Abort | None = None,
) -> HostResult:
    """One host: run the script (with retries), then mirror, then commit the cursor."""
    abort = abort or Abort()
    started = time.monotonic()
    deadline = started + options.host_timeout
    hr = HostResult(host, ok=False)
    try:
        mirror.host_dir(host)
    except OSError as exc:  # a file where its directory should be, say: this host only
        hr.error = f"the mirror's directory {mirror.root / host} cannot be used: {exc}"
        hr.seconds = time.monotonic() - started
        return hr
    try:
        cursor = mirror.read_cursor(host)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        # Guessing would pull the host's history into the mirror a second time: the
        # operator decides (the error names the file), and the other hosts go on.
        path = mirror.root / host / CURSOR
        hr.error = (
            f"the mirror's cursor {path} cannot be read ({exc}); removing it collects this "
            "host afresh (the mirror keeps what it holds; what the host still has is pulled "
            "again: its runs are not stored twice, its rejected lines are)"
        )
        hr.seconds = time.monotonic() - started
        return hr
    target = SshTarget(host, host, options.port or 22, options.user or "?")
    try:
        target = resolve_target(host, config, options)
        crc = posix_cksum(cursor.window) if cursor.window else 0
        done_crc = posix_cksum(cursor.done_window) if cursor.done_window else 0
        done = (cursor.done_inode, cursor.done_offset, done_crc, len(cursor.done_window))
        command = build_command(cursor.offset, cursor.inode, crc, len(cursor.window), done)
        out = _run_with_retries(target, command, options, deadline, hr, abort)
        hr.report_bytes = len(out)
        pull = interpret(parse_sections(out), cursor.window, cursor.done)
        mirror.append_history(host, pull.history)
        obs = observation(host, pull.facts, pull.error, len(pull.history), pull.mode)
        mirror.append_observation(host, obs)
        if pull.moves_cursor:
            moved = Cursor(pull.inode, pull.offset, pull.window, 0, 0, *pull.done)
            mirror.save_cursor(host, moved)
        else:
            mirror.save_cursor(host, cursor)
        hr.ok, hr.error = pull.error is None, pull.error
        hr.history_bytes, hr.mode = len(pull.history), pull.mode
    except Exception as exc:  # every failure becomes an observation, never a crash
        if abort.fired.is_set():  # cut short by the operator: the host did nothing wrong
            hr.error = "interrupted"
            try:
                mirror.truncate_uncommitted(host, cursor)
            except OSError:
                pass  # the cursor was not moved: the next collection reads these bytes again
            hr.seconds = time.monotonic() - started
            return hr
        hr.error = describe_error(exc, target, options)
        try:
            mirror.truncate_uncommitted(host, cursor)
            mirror.append_observation(host, observation(host, error=hr.error))
            mirror.save_cursor(host, cursor)
        except OSError as io_exc:
            hr.error += f"; and the mirror could not record it: {io_exc}"
    hr.seconds = time.monotonic() - started
    return hr


def observation(
    host: str,
    facts: dict[str, Any] | None = None,
    error: str | None = None,
    history_bytes: int = 0,
    mode: str | None = None,
) -> dict[str, Any]:
    """One line of observations.jsonl (the mirror layout's keys, then extras)."""
    f = facts or {}
    keys = (
        "os",
        "role",
        "override_present",
        "override_sha",
        "vault_sha",
        "override_repo",
        "override_branch",
        "vault_status",
        "uptime_s",
        "state_file",
        "state_file_path",
        "legacy_summary",
        "legacy_summary_path",
    )
    obs: dict[str, Any] = {
        "host": host,
        "observed_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "reachable": facts is not None,
        "error": error,
    }
    obs.update({k: f.get(k) for k in keys})
    if f.get("state_file_b64"):  # a state file that is not UTF-8, byte for byte
        obs["state_file_b64"] = f["state_file_b64"]
    obs["history_bytes"] = history_bytes
    obs["collector_version"] = COLLECTOR_VERSION
    obs["history_mode"] = mode
    obs["override_path"] = f.get("override_path")
    obs["vault_path"] = f.get("vault_path")
    return obs


def _run_with_retries(
    target: SshTarget,
    command: str,
    options: CollectOptions,
    deadline: float,
    hr: HostResult,
    abort: Abort,
) -> bytes:
    delay = options.backoff
    while True:
        hr.attempts += 1
        try:
            return run_script(target, command, options, deadline, hr, abort)
        except Exception as exc:
            if abort.fired.is_set() or not is_transient(exc) or hr.attempts > options.retries:
                raise
            pause = delay * (1 + random.random() / 2)
            if time.monotonic() + pause >= deadline or abort.fired.wait(pause):
                raise
            delay *= 2


def is_transient(exc: BaseException) -> bool:
    """Refused, timed out, reset, dropped: retry. Auth and host keys: never."""
    if isinstance(exc, HostKeyError | paramiko.AuthenticationException | ReportError):
        return False
    if isinstance(exc, TimeoutError) and "host timeout" in str(exc):
        return False
    return isinstance(exc, OSError | EOFError | paramiko.SSHException)


def run_script(
    target: SshTarget,
    command: str,
    options: CollectOptions,
    deadline: float,
    hr: HostResult,
    abort: Abort | None = None,
) -> bytes:
    """Connect, exec `command`, return its stdout; bounded by `deadline`."""
    closers: list[Any] = []
    fired = threading.Event()

    def kill() -> None:
        fired.set()
        for c in reversed(closers):
            try:
                c.close()
            except Exception:  # noqa: S110 - best effort while aborting
                pass

    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"host timeout ({options.host_timeout:g}s) exceeded")
    watchdog = threading.Timer(remaining, kill)
    watchdog.daemon = True
    watchdog.start()
    counter: list[_CountingSocket] = []
    if abort is not None:
        abort.register(kill)
    try:
        client = connect_client(target, options, closers, counter, fired)
        out = _exec(client, command, deadline)
        if fired.is_set():  # the watchdog closed the channel: what came is not the report
            raise TimeoutError(f"host timeout ({options.host_timeout:g}s) exceeded")
        return out
    except Exception as exc:
        # the watchdog fired, or the channel's own timeout (set to the same deadline) ran
        # out first: either way the host's time is up
        timed_out = isinstance(exc, TimeoutError) and time.monotonic() >= deadline
        if fired.is_set() or timed_out:
            raise TimeoutError(f"host timeout ({options.host_timeout:g}s) exceeded") from exc
        raise
    finally:
        watchdog.cancel()
        if abort is not None:
            abort.unregister(kill)
        kill()
        if counter:
            hr.bytes_on_wire += counter[0].sent + counter[0].received


def _exec(client: paramiko.SSHClient, command: str, deadline: float) -> bytes:
    transport = client.get_transport()
    assert transport is not None
    chan = transport.open_session(timeout=max(0.1, deadline - time.monotonic()))
    chan.settimeout(max(0.1, deadline - time.monotonic()))
    chan.exec_command(command)
    chan.shutdown_write()
    out, err = bytearray(), bytearray()
    while True:
        data = chan.recv(1 << 16)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(1 << 16)
        if not data:
            break
        out += data
    status = chan.recv_exit_status()
    while chan.recv_stderr_ready():
        err += chan.recv_stderr(1 << 16)
    if status != 0 and not out:
        msg = err.decode("utf-8", "replace").strip()[:300]
        raise ReportError(f"remote script failed (exit {status}): {msg}")
    return bytes(out)


def describe_error(exc: BaseException, target: SshTarget, options: CollectOptions) -> str:
    """A one-line message that says what happened and, when known, what to do."""
    where = f"{target.user}@{target.hostname}:{target.port}"
    if isinstance(exc, HostKeyError):
        return str(exc)
    if isinstance(exc, paramiko.AuthenticationException):
        return (
            f"authentication failed for {where}: no key from ssh-agent or IdentityFile "
            f"was accepted ({exc})"
        )
    if isinstance(exc, ConnectionRefusedError | paramiko.ssh_exception.NoValidConnectionsError):
        return f"connection refused by {where}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"timed out talking to {where}: {str(exc) or 'no answer'}"
    if isinstance(exc, ReportError):
        return f"bad report from {where}: {exc}"
    return f"{type(exc).__name__} on {where}: {exc}"


# --- SSH the way the operator has it set up -------------------------------------------


class HostKeyError(paramiko.SSHException):
    """Unknown, changed or revoked host key: refused, never retried."""


# OpenSSH's default GlobalKnownHostsFile: read, never written
GLOBAL_KNOWN_HOSTS = (Path("/etc/ssh/ssh_known_hosts"), Path("/etc/ssh/ssh_known_hosts2"))


@dataclass(frozen=True)
class SshTarget:
    """Where and how to connect, after ~/.ssh/config and command-line options."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    proxycommand: str | None = None
    jumps: tuple[SshTarget, ...] = ()
    known_hosts: tuple[Path, ...] = ()  # ssh_config's UserKnownHostsFile
    global_known_hosts: tuple[Path, ...] = GLOBAL_KNOWN_HOSTS  # ... GlobalKnownHostsFile
    strict_host_key_checking: str | None = None  # ssh_config's StrictHostKeyChecking
    host_key_alias: str | None = None  # ssh_config's HostKeyAlias

    @property
    def known_hosts_name(self) -> str:
        """The name the server's key is looked up and saved under: HostKeyAlias as it is
        (a tunnel or a shared address names the host, not the address), else the host
        name, with its port when not 22 (as ssh does)."""
        if self.host_key_alias:
            return self.host_key_alias
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


class SshConfigError(FleetstateError):
    """The ssh_config cannot be read or parsed."""


def load_ssh_config(path: Path | None) -> paramiko.SSHConfig:
    """Parse ssh_config, expanding `Include` (which paramiko does not) like ssh does."""
    if path is None:
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_text(_expand_includes(path, depth=0, scope=None))
    except (OSError, UnicodeDecodeError, paramiko.ConfigParseError, ValueError) as exc:
        raise SshConfigError(f"cannot use ssh config {path}: {exc}") from exc


# The *KnownHostsFile options list files; paramiko keeps their value as text (minus the
# quotes of a whole-quoted value), so the expansion below writes a list whose names hold
# spaces with this separator instead, which no path contains.
_PATH_SEP = "\0"
_PATH_LISTS = ("userknownhostsfile", "globalknownhostsfile")


def _expand_includes(path: Path, depth: int, scope: str | None) -> str:
    """The config at `path` with its `Include`s in place, as one text paramiko can read.

    An Include inside a `Host` or `Match` block applies only where that block does, as in
    ssh_config(5): the included file's own blocks become `Match` lines that require the
    enclosing block's hosts as well (`scope`, in Match's words), and the lines after each
    included file are put back in the enclosing block by repeating its header. (A
    repeated `Match host` / `Match user` header is judged again against a HostName or
    User set inside the block, where ssh keeps the block: docs/collector.md.)"""
    if depth > 16:
        raise SshConfigError(f"ssh config Include nested too deeply at {path}")
    out = []
    header: str | None = None  # this file's current block, as written out
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _KEYWORD.match(line)
        key, value = (m.group(1).lower(), m.group(2)) if m else ("", "")
        if key in ("host", "match") and value:
            header = _scoped(key, value, scope)
            out.append(header)
        elif key == "include" and value:
            inner = _criteria(header) if header else scope
            back = header or (f"Match {scope}" if scope else "Host *")
            try:
                patterns = shlex.split(value, comments=True)
            except ValueError as exc:
                raise SshConfigError(f"{path}: cannot read {line.strip()!r}: {exc}") from exc
            for pattern in patterns:
                pattern = os.path.expanduser(pattern)
                if not os.path.isabs(pattern):  # relative to ~/.ssh, as in ssh_config(5)
                    pattern = os.path.expanduser(f"~/.ssh/{pattern}")
                for included in sorted(glob.glob(pattern)):
                    out.append(_expand_includes(Path(included), depth + 1, inner))
                    # back to where the Include was: this block, the enclosing one, or
                    # every host (each file starts where the Include stands)
                    out.append(back)
        elif key in _PATH_LISTS:
            out.append(_path_list_line(line, key, value))
        else:
            out.append(line)
    return "\n".join(out) + "\n"


# `Keyword value` or `Keyword=value`, as ssh_config(5) reads a line
_KEYWORD = re.compile(r"\s*(\w+)(?:\s*=\s*|\s+)(.*?)\s*$")


def _criteria(header: str) -> str | None:
    """A block header as Match criteria: `Host a !b` -> `originalhost a,!b`; None for a
    block of every host (`Match all`, `Host *`)."""
    words = header.split(None, 1)
    if words[0].lower() == "match":
        return None if words[1].strip().lower() == "all" else words[1]
    patterns = shlex.split(words[1])
    return None if patterns == ["*"] else "originalhost " + ",".join(patterns)


def _scoped(key: str, value: str, scope: str | None) -> str:
    """A Host or Match line (as `Host value`), narrowed to the enclosing block's scope."""
    line = f"{key.capitalize()} {value}"
    if scope is None:
        return line
    own = _criteria(line)
    return f"Match {scope}" if own is None else f"Match {scope} {own}"


def _path_list_line(line: str, key: str, value: str) -> str:
    """A *KnownHostsFile line (`key`, `value` as _KEYWORD read them) with its files split as
    ssh splits them (quotes kept together)."""
    try:
        names = shlex.split(value)
    except ValueError:
        return line
    if names == value.split():  # no quotes: paramiko's own reading is ssh's
        return line
    return f"{key} {_PATH_SEP.join(names)}"


def resolve_target(host: str, config: paramiko.SSHConfig, options: CollectOptions) -> SshTarget:
    """Apply ssh_config to `host`; command-line user/port/identities win, as with ssh."""
    extra = tuple(str(p.expanduser()) for p in options.identity_files)
    return _resolve(host, config, options.user, options.port, extra, with_jumps=True)


def _resolve(
    host: str,
    config: paramiko.SSHConfig,
    user: str | None,
    port: int | None,
    extra_ids: tuple[str, ...],
    with_jumps: bool,
) -> SshTarget:
    c = config.lookup(host)
    proxycommand = c.get("proxycommand")
    jumps: tuple[SshTarget, ...] = ()
    spec = c.get("proxyjump")
    if with_jumps and spec and spec.lower() != "none" and not proxycommand:
        jumps = tuple(_resolve_hop(hop, config) for hop in spec.split(","))
    hostname = c.get("hostname", host)
    port = port or int(c.get("port", 22))
    user = user or c.get("user") or getpass.getuser()
    alias = c.get("hostkeyalias") or host
    tokens = {"h": hostname, "p": str(port), "r": user, "n": host, "k": alias}
    return SshTarget(
        alias=host,
        hostname=hostname,
        port=port,
        user=user,
        identity_files=extra_ids + tuple(c.get("identityfile", [])),
        identities_only=c.get("identitiesonly", "no").lower() == "yes",
        proxycommand=None if not proxycommand or proxycommand.lower() == "none" else proxycommand,
        jumps=jumps,
        known_hosts=_config_paths(c.get("userknownhostsfile"), tokens) or (),
        global_known_hosts=_config_paths(c.get("globalknownhostsfile"), tokens)
        or GLOBAL_KNOWN_HOSTS,
        strict_host_key_checking=c.get("stricthostkeychecking", "").lower() or None,
        host_key_alias=c.get("hostkeyalias") or None,
    )


def _config_paths(value: str | None, tokens: dict[str, str]) -> tuple[Path, ...] | None:
    """The files a *KnownHostsFile option lists; None when it is not set. `none` names no
    file: it reads as the empty /dev/null, where a key accepted is not kept (as with ssh)."""
    if value is None:
        return None
    names = value.split(_PATH_SEP) if _PATH_SEP in value else value.split()
    paths = tuple(_config_path(p, tokens) for p in names if p.lower() != "none")
    return paths or (Path(os.devnull),)


def _config_path(value: str, tokens: dict[str, str]) -> Path:
    """A path from ssh_config with `~` and ssh's %-tokens expanded (%d home, %u local user,
    %h host name, %p port, %r remote user, %n and %k the name given, %l and %L this
    machine, %i uid, %% a percent sign; others are left as written)."""
    local = socket.gethostname()
    table = {"d": str(Path.home()), "u": getpass.getuser(), "l": local,
             "L": local.split(".")[0], "i": str(os.getuid()), "%": "%", **tokens}  # fmt: skip
    value = re.sub(r"%(.)", lambda m: table.get(m.group(1), m.group(0)), value)
    return Path(value).expanduser()


def _known_hosts_files(target: SshTarget, options: CollectOptions) -> list[Path]:
    """--known-hosts, else ssh_config's UserKnownHostsFile, else ~/.ssh/known_hosts; keys
    are looked up in all of them and new ones saved to the first, as ssh does."""
    if options.known_hosts is not None:
        return [options.known_hosts]
    return list(target.known_hosts) or [options.known_hosts_path()]


def _accepts_new_keys(target: SshTarget, options: CollectOptions) -> bool:
    """--accept-new-host-keys, or StrictHostKeyChecking accept-new in ssh_config. `no` and
    `off` count as accept-new: a changed key is refused whatever the configuration."""
    strict = target.strict_host_key_checking
    return options.accept_new_host_keys or strict in ("accept-new", "no", "off")


def _resolve_hop(hop: str, config: paramiko.SSHConfig) -> SshTarget:
    hop = hop.strip().removeprefix("ssh://")
    user, _, hostport = hop.rpartition("@")
    host, _, port = hostport.partition(":")
    return _resolve(host, config, user or None, int(port) if port else None, (), False)


class _KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko when it holds no key of the server's key type for the host.

    The key is accepted when known_hosts lists it among several of that type (paramiko
    holds one per type); refused as CHANGED when known_hosts lists others of that type;
    otherwise it is new: refused, or with the user's consent saved to `path`. A revoked
    key is refused in every case."""

    def __init__(
        self,
        path: Path,
        accept_new: bool,
        known: list[paramiko.PKey] | None = None,
        revoked: Callable[[paramiko.PKey], bool] | None = None,
        authority: bool = False,
        name: str | None = None,
    ) -> None:
        self.path, self.accept_new, self.known = path, accept_new, known or []
        self.name = name  # known_hosts' name for the server (paramiko's, without an alias)
        self.revoked = revoked or (lambda key: False)
        self.authority = authority

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        hostname = self.name or hostname  # HostKeyAlias: paramiko knows only the address
        if self.revoked(key):
            raise _revoked(hostname, key)
        if any(knownhosts.same_key(key, k) for k in self.known):
            return
        if any(k.get_name() == key.get_name() for k in self.known):
            raise _changed(hostname, key, self.path)
        if not self.accept_new:
            hint = (
                " (known_hosts trusts a certificate authority for it, which fleetstate "
                "cannot check: paramiko has no host certificates)"
                if self.authority
                else ""
            )
            raise HostKeyError(
                f"unknown host key for {hostname} ({key.get_name()} {key.fingerprint}): not in "
                f"{self.path}{hint}; check it and add it (ssh-keyscan, or ssh once), "
                "or re-run with --accept-new-host-keys"
            )
        knownhosts.append(self.path, hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)


def _changed(name: str, key: paramiko.PKey, path: Path) -> HostKeyError:
    return HostKeyError(
        f"host key for {name} has CHANGED (now {key.get_name()} {key.fingerprint}); if the "
        f"host was reimaged, remove the old key with `ssh-keygen -R '{name}' -f {path}` and "
        "re-run with --accept-new-host-keys; otherwise treat it as a possible attack"
    )


def _revoked(name: str, key: paramiko.PKey) -> HostKeyError:
    return HostKeyError(
        f"host key for {name} is REVOKED in known_hosts ({key.get_name()} "
        f"{key.fingerprint}): refused"
    )


def known_host_keys(path: Path) -> knownhosts.KnownHosts:
    """The parsed known_hosts at `path`, parsed again only when the file changed."""
    return knownhosts.load(path)


def connect_client(
    target: SshTarget,
    options: CollectOptions,
    closers: list[Any],
    counter: list[_CountingSocket],
    stop: threading.Event | None = None,
) -> paramiko.SSHClient:
    """An authenticated client for `target`; everything opened is added to `closers`.
    `stop` (the host's timeout or Ctrl-C) gives up a TCP connection still being made."""
    counting = _CountingSocket(_open_socket(target, options, closers, stop))
    counter.append(counting)
    return _handshake(target, counting, options, closers)


def _open_socket(
    target: SshTarget, options: CollectOptions, closers: list[Any], stop: threading.Event | None
) -> Any:
    if target.proxycommand:
        proxy = paramiko.ProxyCommand(target.proxycommand)
        closers.append(proxy)
        return proxy
    via: paramiko.Transport | None = None
    for hop in target.jumps:
        hop_sock = _open_hop(hop, via, options, stop)
        closers.append(hop_sock)
        via = _handshake(hop, hop_sock, options, closers).get_transport()
    sock = _open_hop(target, via, options, stop)
    closers.append(sock)
    return sock


def _open_hop(
    target: SshTarget,
    via: paramiko.Transport | None,
    options: CollectOptions,
    stop: threading.Event | None = None,
) -> Any:
    if via is None:
        return _connect_tcp(target.hostname, target.port, options.connect_timeout, stop)
    return via.open_channel(
        "direct-tcpip",
        (target.hostname, target.port),
        ("127.0.0.1", 0),
        timeout=options.connect_timeout,
    )


def _connect_tcp(
    host: str, port: int, timeout: float, stop: threading.Event | None
) -> socket.socket:
    """socket.create_connection, given up within 0.2 s of `stop` being set: a connect to
    an address that does not answer would otherwise hold Ctrl-C for the whole timeout."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(address)
            while code in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
                if stop is not None and stop.is_set():
                    raise ConnectionAbortedError("connection given up")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("timed out")
                if select.select([], [sock], [], min(0.2, left))[1]:
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
            sock.settimeout(timeout)  # as create_connection leaves it
            return sock
        except (ConnectionAbortedError, TimeoutError):
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError(f"no address for {host}")


def _handshake(
    target: SshTarget, sock: Any, options: CollectOptions, closers: list[Any]
) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    closers.append(client)
    files = _known_hosts_files(target, options)
    name = target.known_hosts_name  # the name known_hosts lists the server by
    lines = [
        e for p in (*files, *target.global_known_hosts) for e in known_host_keys(p).naming(name)
    ]
    known = [e.key for e in lines if e.marker is None]
    types = [key.get_name() for key in known]
    for key in known:  # paramiko holds one key per type: several go to the policy
        if types.count(key.get_name()) == 1:
            client.get_host_keys().add(name, key.get_name(), key)

    def revoked(key: paramiko.PKey) -> bool:
        return any(e.marker == "revoked" and knownhosts.same_key(e.key, key) for e in lines)

    authority = any(e.marker == "cert-authority" for e in lines)
    accept = _accepts_new_keys(target, options)
    client.set_missing_host_key_policy(
        _KnownHostsPolicy(files[0], accept, known, revoked, authority, name)
    )
    t = options.connect_timeout
    try:
        client.connect(
            target.hostname,
            target.port,
            username=target.user,
            key_filename=list(target.identity_files) or None,  # type: ignore[arg-type]
            timeout=t,
            allow_agent=True,
            look_for_keys=not target.identities_only,
            sock=sock,
            banner_timeout=t,
            auth_timeout=t,
            channel_timeout=t,
        )
    except paramiko.BadHostKeyException as exc:
        raise _changed(name, exc.key, files[0]) from exc
    except paramiko.SSHException as exc:
        if isinstance(exc, HostKeyError | paramiko.AuthenticationException):
            raise
        text = str(exc)
        # paramiko's words when the server accepted the connection but no SSH came back
        if text in ("No existing session", "Negotiation failed.") or "banner" in text:
            raise TimeoutError(
                f"no SSH handshake within {t:g}s: the server accepted the connection but "
                f"did not answer as an SSH server ({text})"
            ) from exc
        raise
    transport = client.get_transport()
    server_key = transport.get_remote_server_key() if transport else None
    if server_key is not None and revoked(server_key):  # known and trusted, but revoked
        raise _revoked(name, server_key)
    return client
