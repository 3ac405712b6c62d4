"""The override file and repository URLs read on the operator's side exactly as the wrapper
reads them on the host: each case runs the wrapper's own bash functions and compares."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline.shellwords import override_value, strip_credentials

WRAPPER = Path(__file__).resolve().parent.parent / "wrapper" / "puppet_state.sh"

OVERRIDES = [
    'PUPPET_BRANCH="master"\n',
    'PUPPET_BRANCH="master"\nPUPPET_BRANCH="canary"\n',  # the last assignment wins
    'PUPPET_BRANCH="canary"  # trying canary\n',
    "PUPPET_BRANCH='a'\"b\"c\n",
    "export PUPPET_BRANCH=plain\r\n",
    "  export\tPUPPET_BRANCH=tabbed;\n",
    'PUPPET_BRANCH="$HOME/x"\n',  # would expand: skipped
    "PUPPET_BRANCH=ok\nPUPPET_BRANCH=$(id)\n",  # the skipped line keeps the one before
    "PUPPET_BRANCH=`id`\n",
    "PUPPET_BRANCH=~/x\n",
    "PUPPET_BRANCH=a~b\n",
    'PUPPET_BRANCH="unterminated\n',
    "PUPPET_BRANCH=a b\n",  # a command after the word: skipped
    'PUPPET_BRANCH="a\\"b\\\\c\\d"\n',
    "PUPPET_BRANCH=a\\ b\n",
    "PUPPET_BRANCH=\n",
    "PUPPET_BRANCH='$x'\n",
    'PUPPET_BRANCH="cost $5"\n',
    "XPUPPET_BRANCH=no\n",
    "PUPPET_BRANCH=a;b\n",
    "PUPPET_BRANCH=a; \n",
]


def wrapper_value(tmp_path: Path, text: str, key: str) -> str:
    f = tmp_path / "ronin_settings"
    f.write_text(text)
    script = (
        f'. "{WRAPPER}"; puppet_state_override_value "$1" "$2"; printf %s "$PUPPET_STATE_VALUE"'
    )
    done = subprocess.run(
        ["bash", "-c", script, "x", str(f), key], capture_output=True, text=True, check=True
    )
    return done.stdout


@pytest.mark.parametrize("text", OVERRIDES)
def test_override_value_is_the_wrappers(tmp_path: Path, text: str) -> None:
    expected = wrapper_value(tmp_path, text, "PUPPET_BRANCH") or None
    assert override_value(text, "PUPPET_BRANCH") == expected


URLS = [
    "https://deploy:ghp_token@github.com/ops/puppet.git",
    "https://ghp_token@github.com/ops/puppet.git",
    "HTTPS://u:p@host:8443/x?y=1#z",
    "ssh://git:secret@host/ops/puppet.git",
    "ssh://git@host/ops/puppet.git",
    "git@github.com:ops/puppet.git",
    "https://github.com/ops/puppet.git",
    "ftp://a:b@c/d@e",
    "https://a@b@c/d",
    "/srv/puppet.git",
]


@pytest.mark.parametrize("url", URLS)
def test_strip_credentials_is_the_wrappers(url: str) -> None:
    script = f'. "{WRAPPER}"; _ps_strip_credentials "$1"; printf %s "$_PS_URL"'
    done = subprocess.run(["bash", "-c", script, "x", url], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert strip_credentials(url) == done.stdout
    assert "token" not in (strip_credentials(url) or "") and "secret" not in done.stdout
