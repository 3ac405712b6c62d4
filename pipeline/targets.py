"""Turn command-line targets (host names and host-list files) into a host list.

Everything is validated here, before any connection is attempted, so a typo in
a list file is a clear error instead of one failed host among hundreds.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pipeline.errors import FleetstateError

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_FQDN_DIRECTIVE = re.compile(r"^#\s*fqdn:\s*([^\s#]*)\s*(#.*)?$", re.IGNORECASE)


class TargetError(FleetstateError, ValueError):
    """A target that cannot be used: unreadable list file or invalid host name."""


def is_valid_host(name: str) -> bool:
    """RFC 1123 host name (labels of letters, digits and inner hyphens)."""
    if not name or len(name) > 253 or name != name.strip():
        return False
    return all(_LABEL.match(label) for label in name.lower().split("."))


def validate_host(name: str, where: str = "") -> str:
    """Return the normalised (lower-case) host name or raise TargetError."""
    if not is_valid_host(name):
        suffix = f" ({where})" if where else ""
        raise TargetError(f"invalid host name {name!r}{suffix}")
    return name.lower()


# no top-level domain is named like these: `hosts.txt` is a list file, even when missing
_LIST_SUFFIXES = (".txt", ".list", ".lst", ".csv", ".conf", ".cfg")


def _looks_like_file(arg: str) -> bool:
    return bool(arg) and (
        os.sep in arg
        or arg.startswith(".")
        or arg.lower().endswith(_LIST_SUFFIXES)
        or Path(arg).is_file()  # not a directory: a mirror holds one per host
    )


def read_host_list(path: Path) -> list[str]:
    """Hosts of one list file: one a line, `#` comments, `# fqdn: .suffix` directive.

    The directive completes the short names (no dot) that follow it in the same
    file; `# fqdn:` with no suffix turns completion off again.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetError(f"cannot read host list {path}: {exc}") from exc
    hosts: list[str] = []
    suffix = ""
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        directive = _FQDN_DIRECTIVE.match(line)
        if directive:
            suffix = directive.group(1)
            if suffix and not suffix.startswith("."):
                suffix = "." + suffix
            continue
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if suffix and "." not in line:
            line += suffix
        hosts.append(validate_host(line, f"{path}:{lineno}"))
    return hosts


def parse_targets(args: list[str]) -> list[str]:
    """Host names and host-list files -> unique host names, in first-seen order.

    An argument is a list file when it names an existing path or contains a
    path separator; otherwise it is a host name.
    """
    hosts: list[str] = []
    for arg in args:
        if _looks_like_file(arg):
            hosts.extend(read_host_list(Path(arg)))
        else:
            hosts.append(validate_host(arg))
    return list(dict.fromkeys(hosts))
