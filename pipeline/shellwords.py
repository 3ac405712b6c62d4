"""The override file read as the wrapper reads it (wrapper/puppet_state.sh), and repository
URLs with their credentials dropped: the same rules on the operator's side, so what the
collector observes is what the wrapper applies, and no token is stored.

Neither side of the pipeline (SSH, warehouse) is imported here: both use it.
"""

from __future__ import annotations

import re
import string

_ASSIGNMENT = re.compile(r"^[ \t]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
# what after a `$` makes sh expand something: $NAME, ${..}, $(..), $1, $$, $@, ...
_EXPANDS_AFTER_DOLLAR = set(string.ascii_letters + string.digits + "_{(@*#?$!-")


def override_value(text: str, key: str) -> str | None:
    """The value sh would give `key` when the override file is sourced: the last plain
    assignment wins; a line whose value sh would compute by running something ($x,
    $(...), `...`, ~) is skipped, as the wrapper skips it. None when unset or empty."""
    value = None
    for line in text.splitlines():
        m = _ASSIGNMENT.match(line.rstrip("\r"))
        if m is None or m.group(1) != key or len(line) > 4096:
            continue
        word = shell_word(m.group(2))
        if word is not None:
            value = word
    return value or None


def shell_word(s: str) -> str | None:
    """The word at the start of `s` as sh reads it in an assignment (quotes, backslashes),
    up to a blank or `;`, followed only by blanks and an optional `# comment`; None for
    what sh would expand or run, or an unterminated quote (wrapper: _ps_shell_word)."""
    word: list[str] = []
    quote = ""
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        i += 1
        if quote == "'":
            if c == "'":
                quote = ""
            else:
                word.append(c)
        elif quote == '"':
            if c == '"':
                quote = ""
            elif c == "`":
                return None
            elif c == "$":
                if i < n and s[i] in _EXPANDS_AFTER_DOLLAR:
                    return None
                word.append(c)
            elif c == "\\":
                if i >= n:
                    return None
                if s[i] in '"\\$`':
                    word.append(s[i])
                    i += 1
                else:
                    word.append("\\")
            else:
                word.append(c)
        elif c in " \t;":
            break
        elif c in "'\"":
            quote = c
        elif c == "\\":
            if i >= n:
                return None
            word.append(s[i])
            i += 1
        elif c == "$":
            if i < n and (s[i] in _EXPANDS_AFTER_DOLLAR or s[i] in "'\""):
                return None
            word.append(c)
        elif c == "~":
            if i == 1 or s[i - 2] == ":":  # a tilde prefix is expanded
                return None
            word.append(c)
        elif c in "`|&<>()":
            return None
        else:
            word.append(c)
    if quote:
        return None
    rest = s[i:].lstrip(" \t")  # after the blank or `;` that ended the word
    if rest and not rest.startswith("#"):
        return None
    return "".join(word)


def strip_credentials(url: str | None) -> str | None:
    """A repository URL without its credentials: http(s)/ftp(s) lose their whole userinfo
    (tokens are often passed as the user name), other schemes (ssh://git@host) keep the
    user but lose a password (wrapper: _ps_strip_credentials)."""
    if url is None or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    m = re.match(r"[^/?#]*", rest)
    auth = m.group(0) if m else ""
    path = rest[len(auth) :]
    if "@" not in auth:
        return url
    userinfo, host = auth.rsplit("@", 1)
    if scheme.lower() in ("http", "https", "ftp", "ftps"):
        auth = host
    else:
        auth = f"{userinfo.split(':', 1)[0]}@{host}"
    return f"{scheme}://{auth}{path}"
