"""known_hosts files read the way OpenSSH reads them, for the collector's host key checks.

paramiko's own reader stops at the first line it cannot parse, and it cannot parse the
`@cert-authority` and `@revoked` lines that fleets with an SSH certificate authority
keep in known_hosts: one such line failed every connection. Here, as in OpenSSH:

* a line that cannot be read (unknown key type, bad base64) is skipped, not fatal;
* host fields may be hashed (`|1|salt|hash`), lists, or patterns with `*` and `?`,
  and a `!pattern` that matches excludes the line;
* `@revoked` keys are refused for the hosts the line names, whatever else trusts them;
* `@cert-authority` lines are noted but cannot be used: paramiko has no host
  certificates, so such hosts need their own key (the refusal says so).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import paramiko


@dataclass(frozen=True)
class Entry:
    marker: str | None  # None, "revoked" or "cert-authority"
    hosts: tuple[str, ...]  # as written: names, patterns, !patterns, |1|salt|hash
    key: paramiko.PKey

    def matches(self, name: str) -> bool:
        """Does this line name host `name` (`host`, or `[host]:port` off port 22)?"""
        name = name.lower()
        found = False
        for host in self.hosts:
            if host.startswith("|1|"):
                found = found or _hashed_match(host, name)
            elif host.startswith("!"):
                if _pattern(host[1:]).fullmatch(name):
                    return False  # a negated pattern excludes the line
            elif _pattern(host).fullmatch(name):
                found = True
        return found


@dataclass
class KnownHosts:
    entries: list[Entry] = field(default_factory=list)
    # lines naming hosts only by plain names, by name; the rest (patterns, hashed
    # names) are matched one by one. A fleet's known_hosts has thousands of lines.
    _by_name: dict[str, list[Entry]] = field(default_factory=dict, repr=False)
    _others: list[Entry] = field(default_factory=list, repr=False)
    _indexed: int = field(default=0, repr=False)  # entries[:_indexed] are in the index

    def naming(self, name: str) -> list[Entry]:
        """The lines that name host `name`, in file order within each kind."""
        for entry in self.entries[self._indexed :]:
            if any(h.startswith(("|", "!")) or "*" in h or "?" in h for h in entry.hosts):
                self._others.append(entry)
            else:
                for host in {h.lower() for h in entry.hosts}:
                    self._by_name.setdefault(host, []).append(entry)
        self._indexed = len(self.entries)
        named = self._by_name.get(name.lower(), [])
        return named + [e for e in self._others if e.matches(name)]

    def keys_for(self, name: str) -> list[paramiko.PKey]:
        """Keys trusted for `name` (plain lines only)."""
        return [e.key for e in self.naming(name) if e.marker is None]

    def is_revoked(self, name: str, key: paramiko.PKey) -> bool:
        return any(e.marker == "revoked" and same_key(e.key, key) for e in self.naming(name))

    def has_authority_for(self, name: str) -> bool:
        return any(e.marker == "cert-authority" for e in self.naming(name))

    def add(self, name: str, key: paramiko.PKey) -> None:
        self.entries.append(Entry(None, (name,), key))


def same_key(a: paramiko.PKey, b: paramiko.PKey) -> bool:
    return a.get_name() == b.get_name() and a.asbytes() == b.asbytes()


def parse(text: str) -> KnownHosts:
    table = KnownHosts()
    for raw in text.splitlines():
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        marker = None
        if words[0].startswith("@"):
            marker = words[0][1:].lower()
            words = words[1:]
            if marker not in ("revoked", "cert-authority"):
                continue  # a marker OpenSSH does not know either: the line is ignored
        if len(words) < 3:
            continue
        try:
            key = paramiko.PKey.from_type_string(words[1], base64.b64decode(words[2]))
        except Exception:  # unknown key type or damaged key: OpenSSH skips the line too
            continue
        table.entries.append(Entry(marker, tuple(words[0].split(",")), key))
    return table


def _hashed_match(host: str, name: str) -> bool:
    try:
        _, _, salt, digest = host.split("|")
        mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(mac, base64.b64decode(digest))
    except (ValueError, binascii.Error):
        return False


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _pattern(glob: str) -> re.Pattern[str]:
    """OpenSSH's match_pattern: `*` any run of characters, `?` one, the rest literal
    (brackets too: `[host]:2222` is a name, not a character class); case-insensitive."""
    found = _PATTERNS.get(glob)
    if found is None:
        text = "".join(
            ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob.lower()
        )
        found = _PATTERNS[glob] = re.compile(text, re.DOTALL)
    return found


# files parsed once and shared by every connection while they are unchanged (paramiko's
# SSHClient.load_host_keys parses the whole file for each connection: 79 ms with 1,000
# entries, so 79 s of CPU for a fleet of 1,000 hosts; a lookup takes well under 1 ms)
LOCK = threading.Lock()
_CACHE: dict[Path, tuple[tuple[int, int, int], KnownHosts]] = {}


def signature(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def load(path: Path) -> KnownHosts:
    """The parsed file at `path`, parsed again only when it changed; empty if absent."""
    sig = signature(path)
    with LOCK:
        cached = _CACHE.get(path)
        if cached and cached[0] == sig:
            return cached[1]
        try:
            table = parse(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            table = KnownHosts()
        _CACHE[path] = (sig, table)
        return table


def append(path: Path, name: str, key: paramiko.PKey) -> None:
    """Save a newly accepted key to `path` (mode 0600), and to its parsed copy."""
    line = f"{name} {key.get_name()} {key.get_base64()}\n"
    with LOCK:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+b") as fh:
            end = fh.seek(0, os.SEEK_END)
            if end and (fh.seek(end - 1), fh.read(1))[1] != b"\n":
                line = "\n" + line  # a last line without its newline: keep it whole
            fh.write(line.encode())
        cached = _CACHE.get(path)
        if cached:  # our own append: keep the parsed copy instead of parsing again
            cached[1].add(name, key)
            _CACHE[path] = (signature(path), cached[1])
