"""The remote script (pipeline/remote.py SCRIPT) against a link swapped in between its
check of a file and its open: the open file must be the checked one, device and inode.

Found by a portability review of the script (each test failed before the fix). Real
parts only: the real WIRE_SCRIPT run by the machine's real /bin/sh in a private mount
namespace whose /var/log, /root and /opt are fresh tmpfs mounts, and the real
parse_sections/interpret reading its report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.remote import WIRE_SCRIPT, interpret, parse_sections


def _namespace_skip() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount namespaces, tmpfs mounts)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True
    )
    if probe.returncode != 0:
        return f"unshare -m does not work here: {probe.stderr.decode().strip()}"
    return None


NS_SKIP = _namespace_skip()
needs_namespace = pytest.mark.skipif(NS_SKIP is not None, reason=f"{NS_SKIP}")

SECRET = b"pw: hunter2-must-never-leave-the-host\n"

# `stat` as the host has it, except that right after it has printed the inode and size of
# $SWAP once (the script's `st`, format '%i %s', after `reg` found a regular file there),
# $SWAP becomes a symbolic link to $TARGET: the race the open-once check exists for, won
# every time.
STAT_SWAPPING_IN_A_LINK = r"""#!/bin/sh
for last in "$@"; do :; done
/usr/bin/stat "$@"; rc=$?
case " $* " in *" %i %s "*) st=1 ;; *) st= ;; esac
if [ "$last" = "$SWAP" ] && [ -n "$st" ] && [ -f "$ARM" ]; then
  rm -f "$ARM" "$SWAP"
  ln -s "$TARGET" "$SWAP"
fi
exit $rc
"""

# Inside the namespace: /var/log, /root and /opt are fresh tmpfs mounts, so their files are
# numbered from the same small inode numbers (per-mount inode numbers, Linux 5.9+). The
# file checked ($SWAP) is written first; then the root-only $TARGET is given the same inode
# number on its own filesystem. Exit 77: the kernel does not number tmpfs inodes per mount.
NAMESPACE = r"""
set -e
mount -t tmpfs fleetstate-log /var/log
mount -t tmpfs fleetstate-root /root
mount -t tmpfs fleetstate-opt /opt
if [ -d /etc/puppet ]; then mount -t tmpfs fleetstate-etc-puppet /etc/puppet; fi
mkdir -p "$(dirname "$SWAP")"
printf '{"schema_version":1}\n' >"$SWAP"
want=$(stat -c %i "$SWAP")
i=0
while [ "$i" -lt 64 ]; do
  : >"/root/cand$i"
  if [ "$(stat -c %i "/root/cand$i")" = "$want" ]; then mv "/root/cand$i" "$TARGET"; break; fi
  i=$((i + 1))
done
[ -f "$TARGET" ] || exit 77
printf '%s' "$SECRET" >"$TARGET"
chmod 600 "$TARGET"
: >"$ARM"
PATH="$SHIM:/usr/local/bin:/usr/bin:/bin"; export PATH
exec /bin/sh -c "$SCRIPT" fleetstate 0 0 0 0
"""


@needs_namespace
@pytest.mark.parametrize(
    ("swap", "section"),
    [
        ("/var/log/puppet_run_history.jsonl.1", "rot"),
        ("/opt/puppet_environments/last_run_metadata.json", "state"),
        ("/var/log/puppet_run_history.jsonl", "hist"),
    ],
)
def test_a_link_swapped_in_to_a_same_numbered_inode_on_another_filesystem_is_not_read(
    tmp_path: Path, swap: str, section: str
) -> None:
    """bsec takes the open file for the one it checked when the two inode NUMBERS match
    (`stl /dev/fd/3` against `st`, remote.py:46-49); the device is never compared. A link
    swapped in between the check and the open, to a root-only file that has the same inode
    number on another filesystem (tmpfs numbers every mount from 2; /run, /tmp, /dev/shm
    are tmpfs on most hosts; any file under /var/log can be made to carry a chosen number),
    passes the check: its bytes are read and sent (`@rot`/`@state`/`@hist` carry the
    secret) with no `_swapped` section. The .1 and state bytes are then taken by the
    collector (history for the mirror, state_file for the observation); the history's are
    dropped only because `hist_ino_after` (the link's own inode) differs. Expected: the
    open file is compared by device and inode, the read is refused, the section is NULs
    and NAME_swapped, and nothing of the target leaves the host."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "stat").write_text(STAT_SWAPPING_IN_A_LINK)
    (shim / "stat").chmod(0o755)
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "SWAP": swap,
        "TARGET": "/root/vault.yaml",
        "SECRET": SECRET.decode(),
        "ARM": str(tmp_path / "armed"),
        "SHIM": str(shim),
        "SCRIPT": WIRE_SCRIPT,
    }
    p = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "/bin/sh", "-c", NAMESPACE],
        env=env,
        capture_output=True,
        timeout=120,
    )
    if p.returncode == 77:
        pytest.skip("this kernel does not number tmpfs inodes per mount (Linux < 5.9)")
    assert not (tmp_path / "armed").exists(), "the swap never happened: " + p.stderr.decode()
    sections = parse_sections(p.stdout)
    pull = interpret(sections, b"")
    leaked = [name for name, raw in sections.items() if b"hunter2" in raw]
    assert leaked == [], (
        f"the link's target (same inode number, another filesystem) was read and sent in "
        f"{leaked}; swapped sections: {[k for k in sections if k.endswith('_swapped')]}"
    )
    assert f"{section}_swapped" in sections
    assert b"hunter2" not in pull.history
    assert "hunter2" not in str(pull.facts)
