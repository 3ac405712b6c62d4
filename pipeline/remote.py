"""The one script each host runs per collection, and the parser of its report.

The script text is fixed; the only values sent with it are four integers taken
from the host's cursor, passed as positional arguments. Its report is a series
of length-prefixed sections (`@name LEN\\n` + LEN bytes + `\\n`), so history
bytes of any content cross unambiguously in the same stream as the small facts.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from pipeline.shellwords import override_value, strip_credentials

REPORT_MAGIC = b"FLEETSTATE-REPORT 1\n"
WINDOW = 1024  # bytes before the cursor offset whose cksum proves the file is still ours

# POSIX sh; GNU and BSD userlands. Sections whose size is announced before the
# bytes are read are padded with NUL to the announced size (the file may shrink
# under us) and the reader drops the NULs at the end. NULs inside the file (a
# stretch of them after a crash, say) are the file's own bytes: lines after them
# are pulled, and the loader rejects the line that holds them.
SCRIPT = r"""
# shellcheck disable=SC2046,SC2086,SC2094  # splitting numbers and "$SHA" on purpose (globbing
# is off); bsec reads FILE on fd 3 and never writes it
set -f
exec </dev/null
LC_ALL=C; export LC_ALL
O=$1; I=$2; C=$3; W=$4
# the last rotated file pulled to its end: inode, size, cksum of its last PW bytes
P=${5:-0}; PO=${6:-0}; PC=${7:-0}; PW=${8:-0}
H=/var/log/puppet_run_history.jsonl
R="$H.1"
printf 'FLEETSTATE-REPORT 1\n'
sec() { printf '@%s %d\n%s\n' "$1" "${#2}" "$2"; }
# bsec NAME FILE SKIP LEN INODE: exactly LEN bytes of FILE from offset SKIP, read from
# FILE opened once and only if the open file is INODE, the regular file checked before
# (not one a link swapped in since points to, nor the next file of a rotation); else
# LEN NULs and a section NAME_swapped, and the collector takes none of it.
bsec() {
  { f=$(stl /dev/fd/3); p=$(sti "$2")
    # no /dev/fd (a bare chroot): the path's own, as checked before, and no link
    [ -n "$f" ] || [ -h "$2" ] || f=$p
    # device and inode (a number alone may be another file system's file), one link
    if [ -n "$f" ] && [ "$f" = "$p" ] && [ "${f#* }" = "$5 1" ]; then ok=1; else ok=0; fi
    printf '@%s %d\n' "$1" "$4"
    if [ "$4" -gt 0 ]; then
      { [ "$ok" = 1 ] && tail -c +"$(($3 + 1))" <&3 2>/dev/null | head -c "$4"
        head -c "$4" /dev/zero; } | head -c "$4"
    fi
    printf '\n'
    [ "$ok" = 1 ] || sec "${1}_swapped" 1
    :; } 3<"$2" 2>/dev/null || { printf '@%s 0\n\n' "$1"; sec "${1}_swapped" 1; }
}
# A symbolic link where a file of ours should be is never followed: whoever may write
# its directory (group syslog on /var/log) could point it at a root-only file.
reg() { [ -f "$1" ] && [ ! -h "$1" ]; }
fsec() {
  if reg "$2" && [ -r "$2" ]; then
    set -- "$1" "$2" $(st "$2"); bsec "$1" "$2" 0 "${4:-0}" "${3:-0}"
  fi
}
# st FILE: inode and size of FILE itself (a link's own); sti FILE: its device, inode and
# number of hard links; stl FILE: the same of what it names
if stat -c %i / >/dev/null 2>&1; then st() { stat -c '%i %s' "$1" 2>/dev/null; }
  sti() { stat -c '%d %i %h' "$1" 2>/dev/null; }
  stl() { stat -L -c '%d %i %h' "$1" 2>/dev/null; }
else st() { stat -f '%i %z' "$1" 2>/dev/null; }
  sti() { stat -f '%d %i %l' "$1" 2>/dev/null; }
  stl() { stat -L -f '%d %i %l' "$1" 2>/dev/null; }; fi
if command -v sha256sum >/dev/null 2>&1; then SHA=sha256sum
elif command -v shasum >/dev/null 2>&1; then SHA='shasum -a 256'
else SHA='openssl dgst -sha256 -r'; fi
hash1() { set -- $($SHA <"$1" 2>/dev/null); echo "${1:-}"; }
# window_ok FILE OFFSET CRC LEN: the LEN bytes before OFFSET have cksum CRC
window_ok() {
  [ "$4" -eq 0 ] && return 0
  c=$3
  set -- $(tail -c +"$(($2 - $4 + 1))" "$1" 2>/dev/null | head -c "$4" | cksum)
  [ "${1:-x}" = "$c" ]
}
anchor_ok() { window_ok "$1" "$O" "$C" "$W"; }
OS=$(uname -s 2>/dev/null)
if [ "$OS" = Darwin ]; then
  OVR=/opt/puppet_environments/ronin_settings; V=/var/root/vault.yaml
else
  OVR=/etc/puppet/ronin_settings; V=/root/vault.yaml
fi
sec os "$OS"
sec uid "$(id -u)"
up=
if [ "$OS" = Darwin ]; then
  bt=$(sysctl -n kern.boottime 2>/dev/null | sed -n 's/.*{ *sec = \([0-9][0-9]*\).*/\1/p')
  [ -n "$bt" ] && up=$(($(date +%s) - bt))
elif [ -r /proc/uptime ]; then read -r up _ </proc/uptime; up=${up%%.*}
fi
sec uptime "$up"
reg /etc/puppet_role && [ -r /etc/puppet_role ] && sec role "$(head -n 1 /etc/puppet_role)"
sec override_path "$OVR"
if [ -f "$OVR" ]; then
  sec override_sha "$(hash1 "$OVR")"
  kv=$(grep -E '^[[:space:]]*(export[[:space:]]+)?PUPPET_(REPO|BRANCH)=' "$OVR" 2>/dev/null)
  sec override_kv "$kv"
fi
sec vault_path "$V"
vs=; vh=
if [ "$(id -u)" = 0 ]; then
  if [ -f "$V" ]; then vh=$(hash1 "$V"); if [ -n "$vh" ]; then vs=present; else vs=unreadable; fi
  else vs=absent; fi
elif [ -f "$V" ] && [ -r "$V" ]; then
  vh=$(hash1 "$V"); if [ -n "$vh" ]; then vs=present; else vs=unreadable; fi
elif [ -e "$V" ] && [ ! -f "$V" ]; then vs=unreadable  # a FIFO, a directory: not hashed
elif sudo -n true >/dev/null 2>&1; then
  if sudo -n test -f "$V" >/dev/null 2>&1; then
    set -- $(sudo -n $SHA "$V" 2>/dev/null); vh=${1:-}
    if [ -n "$vh" ]; then vs=present; else vs=unreadable; fi
  else vs=absent; fi
else vs=no_sudo; fi
sec vault_status "$vs"
[ -n "$vh" ] && sec vault_sha "$vh"
SF=
for p in /etc/puppet/last_run_metadata.json /opt/puppet_environments/last_run_metadata.json; do
  if reg "$p"; then SF=$p; break; fi
done
if [ -n "$SF" ]; then sec state_path "$SF"; fsec state "$SF"
elif [ ! -e "$H" ] && [ ! -e "$R" ]; then
  for p in /opt/puppetlabs/puppet/public/last_run_summary.yaml \
           /opt/puppetlabs/puppet/cache/state/last_run_summary.yaml \
           /var/lib/puppet/state/last_run_summary.yaml; do
    if reg "$p"; then sec legacy_path "$p"; fsec legacy "$p"; break; fi
  done
fi
ur=; ln=
for f in "$H" "$R"; do
  # a second hard link may be another user's file (where the system allows it: macOS)
  if [ -h "$f" ]; then ln="$ln $f"; elif [ -f "$f" ] && set -- $(sti "$f") && [ "${3:-1}" != 1 ]
  then ln="$ln $f"; elif [ -e "$f" ] && [ ! -r "$f" ]; then ur="$ur $f"; fi
done
[ -n "$ur" ] && sec unreadable "${ur# }"
[ -n "$ln" ] && sec linked "${ln# }"
hino=0; hsize=0
if reg "$H"; then set -- $(st "$H"); hino=${1:-0}; hsize=${2:-0}; fi
if [ "$I" -ne 0 ] && [ "$hino" = "$I" ] && [ "$hsize" -ge "$O" ] && anchor_ok "$H"; then
  sec mode append; start=$O
else
  start=0
  if reg "$R"; then
    set -- $(st "$R"); rino=${1:-0}; rsize=${2:-0}
    if [ "$I" -ne 0 ] && [ "$rsize" -ge "$O" ] && anchor_ok "$R"; then
      sec mode rotated; rskip=$O; lead=$W
    elif [ "$P" -ne 0 ] && [ "$rino" = "$P" ] && [ "$rsize" -ge "$PO" ] &&
         window_ok "$R" "$PO" "$PC" "$PW"; then
      sec mode restart; rskip=$PO; lead=$PW  # .1 pulled to its end before: what follows
    else
      sec mode restart; rskip=0; lead=0
    fi
    # read from LEAD bytes before the skip: the collector checks they are the window it
    # knows, so a .1 replaced after the check above is never read on as if it were ours
    sec rot_ino "$rino"; sec rot_skip "$rskip"; sec rot_lead "$lead"
    bsec rot "$R" "$((rskip - lead))" "$((rsize - rskip + lead))" "$rino"
  elif [ "$I" -eq 0 ]; then sec mode first
  else sec mode restart; fi
fi
sec hist_ino "$hino"; sec hist_start "$start"
if [ "$hino" != 0 ]; then
  bsec hist "$H" "$start" "$((hsize - start))" "$hino"
  # rotated since it was stat'ed: the bytes may be another file's (the collector drops them)
  set -- $(st "$H"); sec hist_ino_after "${1:-0}"
fi
sec end ""
"""

# What goes over the wire: the script without its comment lines, which the shell never
# reads (about 600 of the 4,800 bytes every connection sends).
WIRE_SCRIPT = "\n".join(ln for ln in SCRIPT.splitlines() if not ln.lstrip().startswith("#"))

_INT = re.compile(r"^[0-9]+$")


class ReportError(ValueError):
    """The remote output is not a well-formed report."""


def build_command(
    offset: int, inode: int, crc: int, window: int, done: tuple[int, int, int, int] = (0, 0, 0, 0)
) -> str:
    """The exec line: fixed script, quoted, plus eight validated integers: the cursor
    (offset, inode, cksum and length of its window) and the last rotated file pulled to
    its end (inode, size, cksum and length of its last bytes)."""
    values = (offset, inode, crc, window, *done)
    for value in values:
        if type(value) is not int or value < 0:
            raise ValueError(f"remote arguments must be non-negative integers, got {value!r}")
    args = " ".join(str(v) for v in values)
    return f"/bin/sh -c {shlex.quote(WIRE_SCRIPT)} fleetstate {args}"


def parse_sections(out: bytes) -> dict[str, bytes]:
    """Split a report into its sections; raise ReportError on any framing error."""
    if not out.startswith(REPORT_MAGIC):
        raise ReportError(f"not a fleetstate report: {out[:80]!r}")
    pos, sections = len(REPORT_MAGIC), {}
    while pos < len(out):
        nl = out.find(b"\n", pos)
        header = out[pos:nl].decode("ascii", "replace") if nl >= 0 else ""
        m = re.fullmatch(r"@([a-z_]+) ([0-9]+)", header)
        if not m:
            raise ReportError(f"bad section header at byte {pos}: {header[:60]!r}")
        start, size = nl + 1, int(m.group(2))
        if out[start + size : start + size + 1] != b"\n":
            raise ReportError(f"section {m.group(1)!r} is truncated")
        sections[m.group(1)] = out[start : start + size]
        pos = start + size + 1
    if "end" not in sections:
        raise ReportError("report ended early (no end section)")
    return sections


def posix_cksum(data: bytes) -> int:
    """The CRC printed by POSIX `cksum` (GNU, BSD and busybox agree)."""
    crc = 0
    for byte in data + _length_bytes(len(data)):
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[((crc >> 24) ^ byte) & 0xFF]
    return ~crc & 0xFFFFFFFF


def _length_bytes(n: int) -> bytes:
    out = bytearray()
    while n:
        out.append(n & 0xFF)
        n >>= 8
    return bytes(out)


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i << 24
        for _ in range(8):
            c = ((c << 1) ^ 0x04C11DB7) if c & 0x80000000 else (c << 1)
        table.append(c & 0xFFFFFFFF)
    return table


_CRC_TABLE = _crc_table()


@dataclass
class Pull:
    """What one report means for the mirror: bytes to append, the next cursor, the facts."""

    history: bytes
    inode: int
    offset: int
    window: bytes
    mode: str
    facts: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # reachable, but the history could not be pulled
    # the last rotated file pulled to its end (inode, size, its last bytes): a restart
    # while it is still .1 does not pull it again
    done: tuple[int, int, bytes] = (0, 0, b"")

    @property
    def moves_cursor(self) -> bool:
        """False when the cursor must stay (history unreadable, or rotated mid-read)."""
        return self.error is None and self.inode >= 0


def whole_lines(data: bytes) -> bytes:
    """The prefix of `data` made of complete lines (NUL padding is after the last one)."""
    return data[: data.rfind(b"\n") + 1]


def interpret(
    sections: dict[str, bytes], window: bytes, done: tuple[int, int, bytes] = (0, 0, b"")
) -> Pull:
    """Turn a report into the history bytes to append and the next cursor.

    `window` is the cursor's bytes before its offset: the next window continues it
    when the same file is read on; `done` is the rotated file last pulled to its end.
    """
    mode = _text(sections, "mode") or "first"
    linked = _text(sections, "linked")
    if linked:  # never followed (see SCRIPT); the cursor stays until a file is there again
        error = f"history is a link (symbolic, or a second hard link), not followed: {linked}"
        return Pull(b"", -1, -1, window, "linked", _facts(sections), error, done)
    unreadable = _text(sections, "unreadable")
    if unreadable:  # keep the cursor: pull once the permissions are fixed
        user = "uid " + (_text(sections, "uid") or "?")
        error = f"history not readable by the login user ({user}): {unreadable}"
        return Pull(b"", -1, -1, window, "unreadable", _facts(sections), error, done)
    history, inode, offset, new_window = b"", 0, 0, b""
    if "rot_swapped" in sections:
        # opened, .1 was not the file checked (rotated again meanwhile, or a link swapped
        # in): nothing of this read is taken; the cursor stays for the next collection
        return Pull(b"", -1, -1, window, "rotating", _facts(sections), None, done)
    if "rot" in sections:
        data, skip = sections["rot"], _int(sections, "rot_skip")
        before = window if mode == "rotated" else done[2] if skip else b""
        lead = _int(sections, "rot_lead")
        if lead:
            if lead != len(before) or data[:lead] != before:
                # .1 was replaced (rotated again) after the script matched it: nothing of
                # this read is ours; the cursor stays for the next collection to judge
                return Pull(b"", -1, -1, window, "rotating", _facts(sections), None, done)
            data = data[lead:]
        raw = data.rstrip(b"\0")  # the padding, or a crash's NULs at the end
        inode, offset = _int(sections, "rot_ino"), skip + len(raw)
        new_window = (before + raw)[-WINDOW:]
        done = (inode, offset, new_window)
        # A finished file's torn last line is kept, terminated, so the loader rejects it.
        history += raw + (b"\n" if raw and not raw.endswith(b"\n") else b"")
    hist_ino = _int(sections, "hist_ino")
    moved = "hist_swapped" in sections or _int(sections, "hist_ino_after") not in (0, hist_ino)
    if hist_ino and moved:
        # The history was rotated while being read (or, opened, was not the file checked):
        # the bytes may be the new file's, read from the old one's offset, or a file a
        # link swapped in names. Dropped; the next collection finds the file rotated
        # and reads it from the cursor (what was taken of .1 before it counts).
        if "rot" not in sections:
            return Pull(b"", -1, -1, window, "rotating", _facts(sections), None, done)
        return Pull(history, inode, offset, new_window, "rotating", _facts(sections), None, done)
    if hist_ino:
        taken = whole_lines(sections.get("hist", b""))
        inode, offset = hist_ino, _int(sections, "hist_start") + len(taken)
        new_window = ((window if mode == "append" else b"") + taken)[-WINDOW:]
        history += taken
    return Pull(history, inode, offset, new_window, mode, _facts(sections), None, done)


def _text(sections: dict[str, bytes], name: str) -> str | None:
    raw = sections.get(name)
    if raw is None:
        return None
    value = raw.decode("utf-8", "replace").strip()
    return value or None


def _int(sections: dict[str, bytes], name: str) -> int:
    value = _text(sections, name) or "0"
    if not _INT.match(value):
        raise ReportError(f"section {name!r} is not an integer: {value!r}")
    return int(value)


def _facts(sections: dict[str, bytes]) -> dict[str, Any]:
    kv = _text(sections, "override_kv") or ""
    uptime = _text(sections, "uptime")
    # a file swapped (for a link, say) between its check and its read is not taken
    state = None if "state_swapped" in sections else sections.get("state")
    legacy = None if "legacy_swapped" in sections else sections.get("legacy")
    state_is_text = _is_utf8(state)
    return {
        "os": _text(sections, "os"),
        "role": _text(sections, "role"),
        "override_present": "override_sha" in sections,
        "override_sha": _text(sections, "override_sha"),
        "override_path": _text(sections, "override_path"),
        # as the wrapper reads the file (the last assignment wins), the repo without a token
        "override_repo": strip_credentials(override_value(kv, "PUPPET_REPO")),
        "override_branch": override_value(kv, "PUPPET_BRANCH"),
        "vault_status": _text(sections, "vault_status"),
        "vault_sha": _text(sections, "vault_sha"),
        "vault_path": _text(sections, "vault_path"),
        "uptime_s": int(uptime) if uptime and _INT.match(uptime) else None,
        "state_file": _decode(state) if state_is_text else None,
        # not UTF-8: its exact bytes, so the loader rejects them as they are on the host
        "state_file_b64": None if state_is_text else _base64(state),
        "state_file_path": _text(sections, "state_path"),
        "legacy_summary": _decode(legacy),
        "legacy_summary_path": _text(sections, "legacy_path"),
    }


def _decode(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return raw.rstrip(b"\0").decode("utf-8", "replace")


def _is_utf8(raw: bytes | None) -> bool:
    if raw is None:
        return True
    try:
        raw.rstrip(b"\0").decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _base64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw.rstrip(b"\0")).decode("ascii")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
