# shellcheck shell=bash
# puppet_state.sh: record one masterless puppet attempt (fleetstate record, schema v1).
#
# Sourced by the run-puppet scripts. Each call writes the state file (the last
# run, replaced atomically) and appends one line to the run history (under a
# mkdir lock, rotated past a size cap). Written for bash 3.2 (macOS /bin/bash)
# and current Linux bash. It never fails and never blocks the puppet run: every
# problem is logged to stderr and the public functions return 0.
#
# Public functions (see wrapper/README.md):
#   puppet_state_begin  [--attempt N] [--override PATH] [--vault PATH]
#   puppet_state_record --exit-code N [--stage puppet|prepare] [--role R]
#                       [--working-dir D] [--branch B] [--repo URL] [--attempt N]
#                       [--duration S] [--override PATH] [--vault PATH]
#   write_puppet_state  WORKING_DIR ROLE EXIT_CODE DURATION_S OVERRIDE_PATH VAULT_PATH [STATE_FILE]
#   puppet_state_override_value FILE KEY   (sets PUPPET_STATE_VALUE)

PUPPET_STATE_WRAPPER_VERSION="1.0.0"

# Set by puppet_state_begin, consumed (and cleared) by the next record.
PUPPET_STATE_RUN_ID=""
PUPPET_STATE_STARTED_AT=""
PUPPET_STATE_START_EPOCH=""
PUPPET_STATE_ATTEMPT=""
_PS_BEGIN_OVERRIDE=""
_PS_BEGIN_OVERRIDE_SHA=""
_PS_BEGIN_VAULT=""
_PS_BEGIN_VAULT_SHA=""
_PS_BEGIN_DONE=""

# A warning on stderr. Should stderr be a pipe whose reader went away
# (`run-puppet.sh 2>&1 | head`), the write fails quietly: SIGPIPE would end the
# caller, the driver and its puppet run with it.
_ps_log() {
    (
        trap '' PIPE
        printf 'puppet_state: %s\n' "$*" >&2
    )
}

# The latest second the collector accepts (9999-12-31T23:59:59Z); the earliest is 0.
_PS_LAST_EPOCH=253402300799

# Status 0 when $1 is an epoch the record can hold: digits, 1970 to 9999.
_ps_epoch_ok() {
    case $1 in '' | *[!0-9]*) return 1 ;; esac
    [ "${#1}" -le 12 ] && [ "$((10#$1))" -le "$_PS_LAST_EPOCH" ]
}

# Epoch seconds -> ISO 8601 UTC in _PS_ISO, in pure arithmetic because the
# portable date(1) has no way to format a given epoch (GNU -d vs BSD -r).
# Status 1 (and _PS_ISO empty) for an epoch before 1970 or after 9999: the
# collector rejects such a time, and a negative one has no %04d form.
_ps_iso_utc() {
    local t=$1 z era doe yoe y doy mp d m s
    _PS_ISO=""
    _ps_epoch_ok "$t" || return 1
    t=$((10#$t))
    z=$((t / 86400 + 719468))
    s=$((t % 86400))
    era=$((z / 146097))
    doe=$((z - era * 146097))
    yoe=$(((doe - doe / 1460 + doe / 36524 - doe / 146096) / 365))
    y=$((yoe + era * 400))
    doy=$((doe - (365 * yoe + yoe / 4 - yoe / 100)))
    mp=$(((5 * doy + 2) / 153))
    d=$((doy - (153 * mp + 2) / 5 + 1))
    m=$((mp < 10 ? mp + 3 : mp - 9))
    y=$((m <= 2 ? y + 1 : y))
    printf -v _PS_ISO '%04d-%02d-%02dT%02d:%02d:%02dZ' \
        "$y" "$m" "$d" "$((s / 3600))" "$((s % 3600 / 60))" "$((s % 60))"
}

# Current epoch in _PS_NOW: date(1), else bash's own clock. Empty when neither
# gives a time the record can hold (bash 3.2 without a working date, or a clock
# set before 1970).
_ps_now() {
    _PS_NOW=$(date -u +%s 2>/dev/null)
    _ps_epoch_ok "$_PS_NOW" || _ps_bash_clock
    if _ps_epoch_ok "$_PS_NOW"; then _PS_NOW=$((10#$_PS_NOW)); else _PS_NOW=""; fi
}

# Epoch seconds from bash itself in _PS_NOW, for a host whose date(1) fails:
# $EPOCHSECONDS (bash 5) or printf's %(%s)T (bash 4.2); bash 3.2 has neither.
_ps_bash_clock() {
    _PS_NOW=""
    if [ "${BASH_VERSINFO[0]}" -ge 5 ]; then
        _PS_NOW=${EPOCHSECONDS:-} # guarded: BASH_VERSINFO
    elif [ "${BASH_VERSINFO[0]}" -eq 4 ] && [ "${BASH_VERSINFO[1]}" -ge 2 ]; then
        printf -v _PS_NOW '%(%s)T' -1 2>/dev/null # guarded: BASH_VERSINFO
    fi
    return 0
}

# A numeric setting $1 as a decimal integer in _PS_INT, else the default $2.
# Leading zeros are dropped: $((08)) is a bad octal number to bash, an error that
# would end the record before its history line.
_ps_setting_int() {
    local v=$1
    case $v in '' | *[!0-9]*) _PS_INT=$2 && return 0 ;; esac
    v=${v#"${v%%[!0]*}"}
    if [ -z "$v" ]; then
        _PS_INT=0
    elif [ "${#v}" -gt 15 ]; then
        _PS_INT=$2
    else
        _PS_INT=$v
    fi
}

_ps_new_run_id() {
    local id="" src=${PUPPET_STATE_UUID_SOURCE:-/proc/sys/kernel/random/uuid}
    if [ -r "$src" ]; then
        read -r id <"$src" 2>/dev/null
    elif command -v uuidgen >/dev/null 2>&1; then
        id=$(uuidgen 2>/dev/null | tr 'ABCDEF' 'abcdef')
    fi
    case $id in
    ????????-????-????-????-????????????) ;;
    *)
        # No /proc, no uuidgen: 16 random bytes from od, else $RANDOM and the pid.
        id=$(od -An -N16 -tx1 /dev/urandom 2>/dev/null | tr -d ' \n')
        case $id in
        *[!0-9a-f]* | '') ;;
        *)
            if [ "${#id}" -eq 32 ]; then
                PUPPET_STATE_RUN_ID=${id:0:8}-${id:8:4}-4${id:13:3}-a${id:17:3}-${id:20:12}
                return 0
            fi
            ;;
        esac
        printf -v id '%04x%04x-%04x-4%03x-%x%03x-%04x%04x%04x' \
            "$RANDOM" "$RANDOM" "$RANDOM" "$((RANDOM % 4096))" "$((8 + RANDOM % 4))" \
            "$((RANDOM % 4096))" "$RANDOM" "$(($$ % 65536))" "$RANDOM"
        ;;
    esac
    PUPPET_STATE_RUN_ID=$id
}

# sha256 of a file in _PS_SHA; empty when the file is absent or no tool works.
# The file goes to the tool on stdin: its content is never held in a variable.
_ps_sha256() {
    local f=$1 out=""
    _PS_SHA=""
    [ -n "$f" ] && [ -e "$f" ] || return 0
    # Opening a FIFO would block until a writer came, a device might never end.
    if [ ! -f "$f" ]; then
        _ps_log "$f is not a regular file; its sha256 is null"
        return 0
    fi
    if [ ! -r "$f" ]; then
        _ps_log "cannot read $f; its sha256 is null"
        return 0
    fi
    if command -v sha256sum >/dev/null 2>&1; then
        out=$(sha256sum <"$f" 2>/dev/null)
        out=${out%% *}
    elif command -v shasum >/dev/null 2>&1; then
        out=$(shasum -a 256 <"$f" 2>/dev/null)
        out=${out%% *}
    elif command -v openssl >/dev/null 2>&1; then
        out=$(openssl dgst -sha256 <"$f" 2>/dev/null)
        out=${out##* }
    else
        _ps_log "no sha256sum, shasum or openssl; sha256 of $f is null"
        return 0
    fi
    case $out in
    *[!0-9a-f]* | '') _ps_log "could not hash $f; its sha256 is null" ;;
    *) [ "${#out}" -eq 64 ] && _PS_SHA=$out ;;
    esac
    return 0
}

# Value of KEY in a shell KEY="value" file, without executing it, in
# PUPPET_STATE_VALUE (the last assignment wins, as when the file is sourced).
puppet_state_override_value() {
    local IFS=$' \t\n'
    _ps_override_value "${1:-}" "${2:-}" || true
    return 0
}

# A line `[export ]KEY=WORD [# comment]` gives the value sh would assign (see
# _ps_shell_word); a KEY= line whose value sh would compute by running
# something ($x, $(...), `...`, ~) or that is not a plain assignment is
# skipped with a warning: the file is never evaluated. A trailing CR (a file
# saved with CRLF line ends) is dropped. Read byte by byte under LC_ALL=C, as sh
# splits words: in a UTF-8 locale bash's [[:blank:]] also matches U+3000.
_ps_override_value() {
    local file=$1 key=$2 line n=0 LC_ALL=C
    PUPPET_STATE_VALUE=""
    [ -f "$file" ] && [ -r "$file" ] || return 0
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        line=${line%$'\r'}
        line=${line#"${line%%[![:blank:]]*}"}
        case $line in
        export[[:blank:]]*)
            line=${line#export}
            line=${line#"${line%%[![:blank:]]*}"}
            ;;
        esac
        case $line in "$key="*) ;; *) continue ;; esac
        # the word is read a character at a time, which costs bash time quadratic in
        # the line's length: a repository URL or branch name is far shorter than this
        if [ "${#line}" -gt 4096 ]; then
            _ps_log "$file line $n: $key line longer than 4096 bytes; line ignored"
            continue
        fi
        if _ps_shell_word "${line#"$key="}"; then
            PUPPET_STATE_VALUE=$_PS_WORD
        else
            _ps_log "$file line $n: $key is not a plain assignment sh could read without running it; line ignored"
        fi
    done <"$file"
    return 0
}

# The word at the start of $1 as sh reads it in an assignment, in _PS_WORD:
# "double-quoted" parts (backslash escapes only \" \\ \$ \`), 'single-quoted'
# parts (literal) and unquoted characters (\x is x), up to a blank or `;`;
# then only blanks and an optional # comment may follow. Returns 1 (and
# _PS_WORD is not to be used) for what sh would expand or run: $NAME, ${...},
# $(...), `...`, a leading ~, an unterminated quote, a line continuation,
# |&<>() or anything after the word other than a comment.
_ps_shell_word() {
    local s=$1 w="" c q="" i=0 n rest
    n=${#s}
    _PS_WORD=""
    while [ "$i" -lt "$n" ]; do
        c=${s:i:1}
        i=$((i + 1))
        if [ "$q" = "'" ]; then
            if [ "$c" = "'" ]; then q=""; else w+=$c; fi
            continue
        fi
        if [ "$q" = '"' ]; then
            case $c in
            '"') q="" ;;
            '`') return 1 ;;
            '$')
                # $NAME, ${..}, $(..), $1, $$...: an expansion; any other $ is literal.
                case ${s:i:1} in [A-Za-z0-9_\{\(@*#?\$!-]) return 1 ;; esac
                w+=$c
                ;;
            \\)
                c=${s:i:1}
                case $c in
                '') return 1 ;;
                '"' | \\ | '$' | '`') w+=$c && i=$((i + 1)) ;;
                *) w+=\\ ;;
                esac
                ;;
            *) w+=$c ;;
            esac
            continue
        fi
        case $c in
        [[:blank:]] | ';') break ;;
        "'" | '"') q=$c ;;
        \\)
            [ "$i" -lt "$n" ] || return 1
            w+=${s:i:1}
            i=$((i + 1))
            ;;
        '$')
            case ${s:i:1} in [A-Za-z0-9_\{\(@*#?\$!\'\"-]) return 1 ;; esac
            w+=$c
            ;;
        '~')
            # A tilde prefix (at the start, or after a : in an assignment) is expanded.
            if [ "$i" -eq 1 ] || [ "${s:i-2:1}" = ":" ]; then return 1; fi
            w+=$c
            ;;
        '`' | '|' | '&' | '<' | '>' | '(' | ')') return 1 ;;
        *) w+=$c ;;
        esac
    done
    [ -z "$q" ] || return 1
    rest=${s:i}
    rest=${rest#"${rest%%[![:blank:]]*}"}
    case $rest in '' | '#'*) ;; *) return 1 ;; esac
    _PS_WORD=$w
    return 0
}

# Drop a credential from a repo URL before it reaches a world-readable file:
# http(s)/ftp(s) lose their whole userinfo (tokens are often passed as the
# user name), other schemes (ssh://git@host) keep the user but lose a password.
_ps_strip_credentials() {
    local u=$1 scheme rest auth path userinfo
    _PS_URL=$u
    case $u in *://*) ;; *) return 0 ;; esac
    scheme=${u%%://*}
    rest=${u#*://}
    auth=${rest%%[/?#]*}
    path=${rest#"$auth"}
    case $auth in *@*) ;; *) return 0 ;; esac
    userinfo=${auth%@*}
    auth=${auth##*@}
    case $scheme in
    [Hh][Tt][Tt][Pp] | [Hh][Tt][Tt][Pp][Ss] | [Ff][Tt][Pp] | [Ff][Tt][Pp][Ss]) ;;
    *) case $userinfo in *:*) auth=${userinfo%%:*}@$auth ;; *) auth=$userinfo@$auth ;; esac ;;
    esac
    _PS_URL=$scheme://$auth$path
}

# Replace every byte that is not part of a valid UTF-8 sequence by U+FFFD, so
# that strict parsers (Python's json) accept the record. Runs under LC_ALL=C.
# In bash, ${s:i:1} and out+=... cost the length of s and out: a byte loop over
# the whole string is quadratic. So the string goes by blocks of 512 bytes,
# plus the up to 3 continuation bytes that complete a sequence cut at the end
# of a block; ASCII blocks are copied, the others go through the byte loop.
_ps_utf8_fix() {
    local s=$1 out="" i=0 n k cont=$'\x80'-$'\xbf'
    n=${#s}
    while [ "$i" -lt "$n" ]; do
        case ${s:i+512:3} in
        [$cont][$cont][$cont]*) k=515 ;;
        [$cont][$cont]*) k=514 ;;
        [$cont]*) k=513 ;;
        *) k=512 ;;
        esac
        _PS_U=${s:i:k}
        i=$((i + k))
        case $_PS_U in *[$'\x80'-$'\xff']*) _ps_utf8_fix_block "$_PS_U" ;; esac
        out+=$_PS_U
    done
    _PS_U=$out
}

# The byte loop of _ps_utf8_fix over one block, result in _PS_U.
_ps_utf8_fix_block() {
    local s=$1 out="" i=0 n c c2 need lo hi k ok
    n=${#s}
    local fffd=$'\xef\xbf\xbd' cont=$'\x80'-$'\xbf'
    while [ "$i" -lt "$n" ]; do
        c=${s:i:1}
        need=0 lo=$'\x80' hi=$'\xbf'
        case $c in
        [$'\x01'-$'\x7f']) out+=$c && i=$((i + 1)) && continue ;;
        [$'\xc2'-$'\xdf']) need=1 ;;
        $'\xe0') need=2 lo=$'\xa0' ;;
        [$'\xe1'-$'\xec'] | $'\xee' | $'\xef') need=2 ;;
        $'\xed') need=2 hi=$'\x9f' ;;
        $'\xf0') need=3 lo=$'\x90' ;;
        [$'\xf1'-$'\xf3']) need=3 ;;
        $'\xf4') need=3 hi=$'\x8f' ;;
        esac
        ok=0
        if [ "$need" -gt 0 ]; then
            ok=1
            c2=${s:i+1:1}
            case $c2 in ["$lo"-"$hi"]) ;; *) ok=0 ;; esac
            k=2
            while [ "$ok" -eq 1 ] && [ "$k" -le "$need" ]; do
                c2=${s:i+k:1}
                case $c2 in [$cont]) ;; *) ok=0 ;; esac
                k=$((k + 1))
            done
        fi
        if [ "$ok" -eq 1 ]; then
            out+=${s:i:need+1}
            i=$((i + need + 1))
        else
            out+=$fffd
            i=$((i + 1))
        fi
    done
    _PS_U=$out
}

# JSON string literal of $1 in _PS_J. Replacements, not a per-character
# loop, keep it fast; the byte loop runs only for strings with non-ASCII bytes.
_ps_json_string() {
    local s=$1 i hex c
    case $s in *[$'\x80'-$'\xff']*) _ps_utf8_fix "$s" && s=$_PS_U ;; esac
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    case $s in
    *[$'\x01'-$'\x1f']*)
        s=${s//$'\n'/\\n}
        s=${s//$'\t'/\\t}
        s=${s//$'\r'/\\r}
        s=${s//$'\b'/\\b}
        s=${s//$'\f'/\\f}
        case $s in
        *[$'\x01'-$'\x1f']*)
            i=1
            while [ "$i" -lt 32 ]; do
                printf -v hex '%02x' "$i"
                printf -v c '%b' "\\x$hex"
                s=${s//"$c"/\\u00$hex}
                i=$((i + 1))
            done
            ;;
        esac
        ;;
    esac
    _PS_J="\"$s\""
}

# JSON string of $1, or null when $1 is empty.
_ps_json_string_or_null() {
    if [ -z "$1" ]; then _PS_J=null; else _ps_json_string "$1"; fi
}

# JSON integer of $1 in _PS_J when it is plain digits within $2..$3 (the
# collector's range for the field: out of it, it rejects the whole record),
# else null.
_ps_json_int() {
    local v=$1 lo=$2 hi=$3
    _PS_J=null
    case $v in '' | *[!0-9]*) return 0 ;; esac
    v=${v#"${v%%[!0]*}"}
    [ -n "$v" ] || v=0
    [ "${#v}" -le 15 ] || return 0
    if [ "$v" -ge "$lo" ] && [ "$v" -le "$hi" ]; then _PS_J=$v; fi
    return 0
}

# Git facts of the checkout: _PS_GIT_REPO, _PS_GIT_SHA, _PS_GIT_SYMREF
# (branch name or empty when detached) and _PS_GIT_DIRTY (true/false/empty).
# All empty unless wd is the top level of its repository: a plain directory
# inside another repository (etckeeper's /etc) would give that one's facts.
_ps_git_info() {
    local wd=$1 out line excl top here
    _PS_GIT_REPO="" _PS_GIT_SHA="" _PS_GIT_SYMREF="" _PS_GIT_DIRTY=""
    [ -n "$wd" ] || return 0
    if ! command -v git >/dev/null 2>&1; then
        _ps_log "git not found; git fields are null"
        return 0
    fi
    if [ ! -d "$wd" ]; then
        _ps_log "working dir $wd does not exist; git fields are null"
        return 0
    fi
    local -a g
    export GIT_OPTIONAL_LOCKS=0 GIT_TERMINAL_PROMPT=0
    # git's own safe.directory check stays on: a checkout another user owns could run
    # that user's programs as root (core.fsmonitor, on `status`).
    g=(git -C "$wd")
    # The top level comes first and is printed even when HEAD has no commit yet.
    out=$("${g[@]}" rev-parse --show-toplevel HEAD --symbolic-full-name HEAD 2>/dev/null)
    top=${out%%$'\n'*}
    # git names the top level by its physical path; so does pwd -P (a fork, spared
    # when wd is given as that path already).
    here=$wd
    [ "$top" = "$here" ] || here=$(CDPATH="" cd -P -- "$wd" 2>/dev/null && pwd -P)
    if [ -z "$top" ] || [ "$top" != "$here" ]; then
        # git's own words, untranslated; "unsafe repository" is git 2.35.2's wording
        case $(LC_ALL=C LANGUAGE="" "${g[@]}" rev-parse --git-dir 2>&1) in
        *"dubious ownership"* | *"unsafe repository"*)
            _ps_log "git refuses $wd (owned by another user; see git's safe.directory); git fields are null" ;;
        *) _ps_log "working dir $wd is not the top level of a git checkout; git fields are null" ;;
        esac
        return 0
    fi
    out=${out#*$'\n'}
    line=${out%%$'\n'*}
    # A commit is 40 hex; a sha256 repository's 64 would make the collector reject the record.
    case $line in *[!0-9a-f]* | '') line="" ;; esac
    if [ "${#line}" -eq 40 ]; then _PS_GIT_SHA=$line; fi
    case $out in
    *$'\n'refs/heads/*) _PS_GIT_SYMREF=${out#*$'\n'refs/heads/} ;;
    esac
    # A URL may end in newlines; the trailing x keeps command substitution from eating them.
    out=$("${g[@]}" config --get remote.origin.url 2>/dev/null && printf x)
    case $out in
    *x)
        out=${out%x}
        _PS_GIT_REPO=${out%$'\n'}
        ;;
    esac
    # Files the wrapper itself generates do not make the checkout dirty.
    local -a pathspec
    pathspec=(.)
    for excl in ${PUPPET_STATE_DIRTY_EXCLUDE-data/secrets/vault.yaml r10k_modules .r10k}; do
        pathspec+=(":(exclude)$excl")
    done
    if out=$("${g[@]}" status --porcelain --untracked-files=normal -- "${pathspec[@]}" 2>/dev/null); then
        if [ -n "$out" ]; then _PS_GIT_DIRTY=true; else _PS_GIT_DIRTY=false; fi
    fi
    return 0
}

# Lock dir $1 held on return 0; 1 when it cannot be had within the timeout.
# mkdir is atomic on every local filesystem and needs no flock(1) (absent on macOS).
# The owner file names the process holding the lock, _PS_PID (see _ps_my_pid),
# and when it took it: a waiter breaks the lock when that process is gone or the
# lock is older than the stale limit. A lock whose owner is unknown (the owner
# file missing, empty or garbled: its writer died between mkdir and writing it,
# or the disk was full) is broken when the lock directory itself is old.
_ps_lock() {
    local dir=$1 tries=0 max opid oepoch owner now parent timeout stale unknown_after
    _ps_setting_int "${PUPPET_STATE_LOCK_TIMEOUT_S:-}" 5
    timeout=$_PS_INT
    _ps_setting_int "${PUPPET_STATE_LOCK_STALE_S:-}" 60
    stale=$_PS_INT
    # An unknown owner may also be a live writer between its mkdir and its owner
    # file: only a lock far older than any record takes is broken on age alone.
    unknown_after=$((timeout * 4))
    [ "$unknown_after" -ge "$stale" ] || unknown_after=$stale
    [ "$unknown_after" -ge 60 ] || unknown_after=60
    max=$((timeout * 20 + 1))
    case $dir in */*) parent=${dir%/*} ;; *) parent=. ;; esac
    [ -n "$parent" ] || parent=/
    while :; do
        if mkdir "$dir" 2>/dev/null; then
            { printf '%s %s\n' "${_PS_PID:-$$}" "${_PS_NOW:-0}" >"$dir/owner"; } 2>/dev/null
            return 0
        fi
        tries=$((tries + 1))
        [ "$tries" -lt "$max" ] || return 1
        if [ ! -d "$dir" ]; then
            # Released between our mkdir and this test, or not creatable at all.
            [ -d "$parent" ] && [ -w "$parent" ] || return 1
            continue
        fi
        opid="" oepoch="" owner=""
        if [ -r "$dir/owner" ]; then
            IFS= read -r owner <"$dir/owner" 2>/dev/null
            opid=${owner%%[[:blank:]]*}
            oepoch=${owner#"$opid"}
            oepoch=${oepoch#"${oepoch%%[![:blank:]]*}"}
            oepoch=${oepoch%%[[:blank:]]*}
        fi
        case $opid in '' | *[!0-9]*) opid="" ;; esac
        _ps_setting_int "$oepoch" ""
        oepoch=$_PS_INT
        now=${_PS_NOW:-0}
        # A missing owner file is an unknown owner, judged on the lock's age below
        # (a lock being given back or just taken has none for a moment).
        if { [ -n "$opid" ] && ! kill -0 "$opid" 2>/dev/null && ! ps -p "$opid" >/dev/null 2>&1; } ||
            { [ -n "$oepoch" ] && [ "$oepoch" -gt 0 ] && [ "$((now - oepoch))" -gt "$stale" ]; }; then
            _ps_break_lock "$dir" "$owner" "" "${opid:-unknown}"
            continue
        fi
        # Unknown owner: the lock's age, looked at once a second (it costs a touch).
        if [ -z "$opid" ] && [ "$((tries % 20))" -eq 1 ] && _ps_older_than "$dir" "$unknown_after"; then
            _ps_break_lock "$dir" "$owner" "$unknown_after" "unknown, lock older than ${unknown_after} s"
            continue
        fi
        sleep 0.05 2>/dev/null || sleep 1
    done
}

# Break lock $1, judged stale with owner line $2 (holder $4). The holder judged
# gone may have released the lock since, and another writer taken it: the lock
# is moved aside, and given back unless it is still the one judged: the same
# owner line and, when it was judged on its age alone, still older than $3 s
# (a lock taken afresh whose owner file is not written yet is empty too).
_ps_break_lock() {
    local dir=$1 owner=$2 age=$3 holder=$4 trash taken="" same=1
    trash="$dir.stale.${_PS_PID:-$$}.$RANDOM"
    mv "$dir" "$trash" 2>/dev/null || return 0
    [ -r "$trash/owner" ] && IFS= read -r taken <"$trash/owner" 2>/dev/null
    [ "$taken" = "$owner" ] || same=0
    if [ -n "$age" ] && ! _ps_older_than "$trash" "$age"; then same=0; fi
    if [ "$same" -eq 1 ]; then
        _ps_log "breaking stale history lock $dir (holder $holder)"
        rm -rf "$trash"
    elif [ ! -e "$dir" ] && mv "$trash" "$dir" 2>/dev/null; then
        :
    else
        rm -rf "$trash"
    fi
    return 0
}

# Status 0 when $1 was last modified more than $2 seconds before _PS_NOW. No
# portable stat(1) gives an mtime (GNU -c vs BSD -f): a reference file dated
# then (touch -t, POSIX) is compared with it by the shell's own -ot. -ot is
# also true when $1 does not exist (a lock released meanwhile): it must exist
# before and after.
_ps_older_than() {
    local f=$1 stamp ref rc
    [ -n "$_PS_NOW" ] || return 1
    _ps_iso_utc "$((_PS_NOW - $2))" || return 1
    stamp=${_PS_ISO//[-T:Z]/}
    stamp=${stamp:0:12}.${stamp:12:2}
    ref="$f.age.${_PS_PID:-$$}.$RANDOM"
    if ! TZ=UTC0 touch -t "$stamp" "$ref" 2>/dev/null; then
        rm -f "$ref" 2>/dev/null
        return 1
    fi
    [ -e "$f" ] && [ "$f" -ot "$ref" ] && [ -e "$f" ]
    rc=$?
    rm -f "$ref" 2>/dev/null
    return "$rc"
}

_ps_unlock() {
    rm -f "$1/owner" 2>/dev/null
    rmdir "$1" 2>/dev/null
    return 0
}

# Write the state file atomically: a unique temp file beside it, then rename.
_ps_write_state() {
    local file=$1 rec=$2 dir base tmp n=0
    case $file in */*) dir=${file%/*} ;; *) dir=. ;; esac
    [ -n "$dir" ] || dir=/
    base=${file##*/}
    # 0755 whatever the umask: the collector may read the file as another user.
    if [ ! -d "$dir" ] && ! (umask 022 && mkdir -p -- "$dir") 2>/dev/null; then
        _ps_log "cannot create state directory $dir; state file not written"
        return 0
    fi
    set -C
    while :; do
        tmp="$dir/.$base.${PUPPET_STATE_RUN_ID:-x}.$$.$RANDOM$RANDOM"
        if { : >"$tmp"; } 2>/dev/null; then break; fi
        n=$((n + 1))
        if [ "$n" -ge 5 ] || [ ! -w "$dir" ]; then
            set +C
            _ps_log "cannot create a temp file in $dir; state file not written"
            return 0
        fi
    done
    set +C
    if ! printf '%s\n' "$rec" >"$tmp" 2>/dev/null; then
        _ps_log "cannot write $tmp (disk full?); state file not written"
        rm -f "$tmp"
        return 0
    fi
    chmod 0644 "$tmp" 2>/dev/null
    # mv would move the temp file into a directory instead of replacing it.
    if [ -d "$file" ] || ! mv -f "$tmp" "$file" 2>/dev/null; then
        _ps_log "cannot rename $tmp to $file; state file not written"
        rm -f "$tmp"
    fi
    return 0
}

# The pid of the process running this, in _PS_PID. In a subshell $$ is the
# parent shell's pid, and bash 3.2 has no BASHPID: the parent of a shell
# exec'd from a command substitution of this process is this process.
_ps_my_pid() {
    # shellcheck disable=SC2016 # $PPID is sh's, not ours
    _PS_PID=$(exec sh -c 'echo "$PPID"' 2>/dev/null)
    case $_PS_PID in '' | *[!0-9]*) _PS_PID=$$ ;; esac
}

# Append line $2 (newline included) to $1 in one write(2) on an O_APPEND
# descriptor, so that concurrent appends never interleave, whatever the line's
# length (printf writes through a 4 KiB buffer, a long line in pieces). The
# line goes to a temp file beside $1, then dd, whose block size exceeds the
# line, copies it in one read and one write (POSIX dd writes each input block
# as one output block). Without a temp file or dd: printf. Status 1 on failure.
# $3 is the size of $1 before, known only to the lock holder (else empty).
_ps_append_line() {
    local file=$1 line=$2 before=$3 dir base tmp="" n=0 rc=0
    case $file in */*) dir=${file%/*} ;; *) dir=. ;; esac
    [ -n "$dir" ] || dir=/
    base=${file##*/}
    if command -v dd >/dev/null 2>&1; then
        set -C
        while [ "$n" -lt 5 ] && [ -w "$dir" ]; do
            tmp="$dir/.$base.append.${_PS_PID:-$$}.$RANDOM$RANDOM"
            if { : >"$tmp"; } 2>/dev/null; then break; fi
            tmp=""
            n=$((n + 1))
        done
        set +C
    fi
    if [ -z "$tmp" ]; then
        printf '%s' "$line" >>"$file" 2>/dev/null
        return
    fi
    # ${#line} counts bytes under LC_ALL=C; 4 bytes a character cover any locale.
    if printf '%s' "$line" >"$tmp" 2>/dev/null; then
        local out
        if ! out=$(dd bs="$((${#line} * 4 + 512))" if="$tmp" 2>&1 >>"$file"); then
            rc=1
            case $out in
            *"0+0 records out"*)
                # No whole block written: the temp copy took the room the line
                # needed, and without it the line may still fit. Part of the line
                # may be written ("N bytes" after the counts): the lock holder cuts
                # it off first, any writer may retry after none.
                rm -f "$tmp" 2>/dev/null
                if [ -n "$before" ]; then
                    _ps_cut_back "$file" "$before" "$line"
                    printf '%s' "$line" >>"$file" 2>/dev/null && rc=0
                else
                    case $out in
                    *$'\n'"0 bytes"*) printf '%s' "$line" >>"$file" 2>/dev/null && rc=0 ;;
                    esac
                fi
                ;;
            esac
        fi
    else
        # No room for the temp file: the same data cannot be appended either.
        printf '%s' "$line" >>"$file" 2>/dev/null || rc=1
    fi
    rm -f "$tmp" 2>/dev/null
    return "$rc"
}

# Move the history $1 to $1.1 (replacing it) when it is still longer than
# $2 bytes. Under the lock one writer rotates at a time; should a broken lock
# ever let two rotate at once, the second must not replace the .1 the first
# just made with the new, short history. So the file is first renamed to a
# name of this process's own, measured there, and put back when another
# writer already rotated it: no line is lost. A .1 that is not a regular file
# (or is a link) is left alone (mv would move the history into a directory): no rotation.
_ps_rotate() {
    local hist=$1 limit=$2 tmp
    if [ -h "$hist.1" ] || { [ -e "$hist.1" ] && [ ! -f "$hist.1" ]; }; then
        _ps_log "cannot rotate $hist: $hist.1 is not a regular file"
        return 0
    fi
    tmp=$hist.rotate.${_PS_PID:-$$}
    if ! mv -f "$hist" "$tmp" 2>/dev/null; then
        [ ! -e "$hist" ] || _ps_log "cannot rotate $hist"
        return 0
    fi
    _ps_file_size "$tmp"
    if [ -n "$_PS_SIZE" ] && [ "$_PS_SIZE" -gt "$limit" ]; then
        mv -f "$tmp" "$hist.1" 2>/dev/null && return 0
        _ps_log "cannot rotate $hist"
    fi
    # ln: back under its name unless a new history exists (then add its lines to it).
    if ln "$tmp" "$hist" 2>/dev/null || cat "$tmp" >>"$hist" 2>/dev/null; then
        rm -f "$tmp"
    else
        _ps_log "cannot move $tmp back to $hist; its lines are kept there"
    fi
    return 0
}

# Size of file $1 in bytes in _PS_SIZE: 0 when it does not exist, empty when
# it cannot be read.
_ps_file_size() {
    _PS_SIZE=0
    [ -e "$1" ] || return 0
    _PS_SIZE=$(wc -c <"$1" 2>/dev/null)
    _ps_setting_int "${_PS_SIZE//[!0-9]/}" ""
    _PS_SIZE=$_PS_INT
}

# Cut file $1 back to $2 bytes, its size before the append of line $3 failed: a
# line the disk had room for in part only would stay in the history as invalid
# JSON. dd truncates its output at seek= (POSIX, GNU and BSD alike; there is no
# portable truncate(1)). Only under the lock, and only when what follows is a
# part of our line alone: a writer that gave up waiting for the lock appends
# without it, and its line must stay.
_ps_cut_back() {
    local f=$1 size=$2 line=$3 k
    [ -n "$size" ] && [ -f "$f" ] || return 0
    _ps_file_size "$f"
    [ -n "$_PS_SIZE" ] && [ "$_PS_SIZE" -gt "$size" ] || return 0
    k=$((_PS_SIZE - size))
    [ "$k" -lt "${#line}" ] || return 0
    [ "$(tail -c "+$((size + 1))" "$f" 2>/dev/null)" = "${line:0:k}" ] || return 0
    dd if=/dev/null of="$f" bs=1 seek="$size" 2>/dev/null ||
        _ps_log "cannot cut the part of a line that was written off $f"
    return 0
}

# Status 0 when file $1 ends in a torn line (no final newline). A line that
# another writer is appending right now without the lock also lacks its
# newline for a moment (a long write extends the file page by page): the
# end counts as torn only when it stays the same for 0.1 s.
_ps_torn_end() {
    local f=$1 size last prev=x n=0
    while [ "$n" -lt 10 ]; do
        last=$(tail -c 1 "$f" 2>/dev/null)
        [ -n "$last" ] || return 1
        size=$(wc -c <"$f" 2>/dev/null)
        size=${size//[!0-9]/}
        [ "$size" != "$prev" ] || return 0
        prev=$size
        sleep 0.1 2>/dev/null || sleep 1
        n=$((n + 1))
    done
    return 1
}

# Append the record to the history under the lock, rotating past the cap.
# Only a regular file (or none yet) is appended to: opening a FIFO blocks until
# a reader comes. An append that failed part way (disk full) is cut off again.
_ps_append_history() {
    local hist=$1 rec=$2 dir lock cap size="" new="" locked=1 created=0
    case $hist in */*) dir=${hist%/*} ;; *) dir=. ;; esac
    [ -n "$dir" ] || dir=/
    if [ ! -d "$dir" ]; then
        _ps_log "history directory $dir does not exist; history not written"
        return 0
    fi
    # A symbolic link is not followed: whoever may write its directory could point
    # it at any file root writes (a sudoers drop-in, the vault).
    if [ -h "$hist" ] || { [ -e "$hist" ] && [ ! -f "$hist" ]; }; then
        _ps_log "history $hist is not a regular file; history not written"
        return 0
    fi
    lock=${PUPPET_RUN_HISTORY_LOCK:-$hist.lock}
    _ps_setting_int "${PUPPET_RUN_HISTORY_MAX_BYTES:-}" 8388608
    cap=$_PS_INT
    _ps_my_pid
    if ! _ps_lock "$lock"; then
        locked=0
        _ps_log "history lock $lock not acquired; appending without it"
    fi
    if [ "$locked" -eq 1 ]; then
        # Measured with the lock held: no other writer rotates or appends meanwhile.
        _ps_file_size "$hist"
        size=$_PS_SIZE
        if [ -n "$size" ] && [ "$size" -gt 0 ] && [ "$((size + ${#rec} + 1))" -gt "$cap" ]; then
            _ps_rotate "$hist" "$((cap - ${#rec} - 1))"
            _ps_file_size "$hist"
            size=$_PS_SIZE
        fi
    fi
    # A line torn by an earlier crash must not swallow this one.
    if [ -s "$hist" ] && _ps_torn_end "$hist"; then new=$'\n'; fi
    [ -e "$hist" ] || created=1
    if ! _ps_append_line "$hist" "$new$rec"$'\n' "$size"; then
        _ps_log "cannot append to $hist (read-only or disk full?)"
        [ "$locked" -eq 0 ] || _ps_cut_back "$hist" "$size" "$new$rec"$'\n'
    elif [ "$created" -eq 1 ]; then
        chmod 0644 "$hist" 2>/dev/null
    fi
    [ "$locked" -eq 0 ] || _ps_unlock "$lock"
    return 0
}

# Public functions that set the caller's variables cannot run in a subshell;
# calling their bodies in an || list keeps a caller's set -e from firing inside.
# IFS is the caller's too: digits in it would split $# and $((...)).
puppet_state_begin() {
    local IFS=$' \t\n'
    _ps_begin "$@" || true
    return 0
}

_ps_begin() {
    local attempt=1 override="" vault=""
    while [ "$#" -gt 0 ]; do
        case $1 in
        --attempt) attempt=${2:-} && shift ;;
        --override) override=${2:-} && shift ;;
        --vault) vault=${2:-} && shift ;;
        *) _ps_log "puppet_state_begin: unknown argument $1" ;;
        esac
        shift
    done
    _ps_now
    PUPPET_STATE_START_EPOCH=$_PS_NOW
    PUPPET_STATE_STARTED_AT=""
    if _ps_iso_utc "$_PS_NOW"; then PUPPET_STATE_STARTED_AT=$_PS_ISO; fi
    _ps_new_run_id
    PUPPET_STATE_ATTEMPT=$attempt
    _PS_BEGIN_OVERRIDE=$override _PS_BEGIN_OVERRIDE_SHA=""
    _PS_BEGIN_VAULT=$vault _PS_BEGIN_VAULT_SHA=""
    if [ -n "$override" ]; then _ps_sha256 "$override" && _PS_BEGIN_OVERRIDE_SHA=$_PS_SHA; fi
    if [ -n "$vault" ]; then _ps_sha256 "$vault" && _PS_BEGIN_VAULT_SHA=$_PS_SHA; fi
    _PS_BEGIN_DONE=1
    return 0
}

_ps_reset_begin() {
    PUPPET_STATE_RUN_ID="" PUPPET_STATE_STARTED_AT="" PUPPET_STATE_START_EPOCH=""
    PUPPET_STATE_ATTEMPT="" _PS_BEGIN_DONE=""
    _PS_BEGIN_OVERRIDE="" _PS_BEGIN_OVERRIDE_SHA="" _PS_BEGIN_VAULT="" _PS_BEGIN_VAULT_SHA=""
}

# The record's times as JSON: _PS_TS (now) and _PS_STARTED (PUPPET_STATE_STARTED_AT
# of puppet_state_begin, else now minus --duration), each null when unknown; a
# --duration not given becomes the seconds since puppet_state_begin (negative,
# after the clock was set back, it is left out: null in the record).
_ps_record_times() {
    local start=$PUPPET_STATE_START_EPOCH d='[0-9]'
    _ps_now
    _PS_TS=null _PS_STARTED=null
    if _ps_iso_utc "$_PS_NOW"; then _PS_TS="\"$_PS_ISO\""; fi
    if [ -z "$duration" ] && [ -n "$_PS_NOW" ] && _ps_epoch_ok "$start"; then
        duration=$((_PS_NOW - 10#$start))
    fi
    # The caller can set PUPPET_STATE_STARTED_AT too: only a time goes into the JSON.
    # shellcheck disable=SC2254 # $d is a pattern
    case $PUPPET_STATE_STARTED_AT in
    $d$d$d$d-$d$d-$d${d}T$d$d:$d$d:$d${d}Z)
        _PS_STARTED="\"$PUPPET_STATE_STARTED_AT\""
        return 0
        ;;
    esac
    if [ -n "$_PS_NOW" ] && _ps_epoch_ok "$duration" && _ps_iso_utc "$((_PS_NOW - 10#$duration))"; then
        _PS_STARTED="\"$_PS_ISO\""
    fi
    return 0
}

# Build and write one record. Runs in a subshell (see puppet_state_record).
_ps_record() {
    local exit_code="" stage=puppet role="" wd="" branch="" attempt="" duration=""
    local override="" vault="" repo=""
    local state=${PUPPET_STATE_FILE:-/etc/puppet/last_run_metadata.json}
    local hist=${PUPPET_RUN_HISTORY:-/var/log/puppet_run_history.jsonl}
    local os ts started success host rec j_override_sha j_vault_sha
    while [ "$#" -gt 0 ]; do
        case $1 in
        --exit-code) exit_code=${2:-} ;;
        --stage) stage=${2:-} ;;
        --role) role=${2:-} ;;
        --working-dir) wd=${2:-} ;;
        --branch) branch=${2:-} ;;
        --repo) repo=${2:-} ;;
        --attempt) attempt=${2:-} ;;
        --duration) duration=${2:-} ;;
        --override) override=${2:-} ;;
        --vault) vault=${2:-} ;;
        --state-file) state=${2:-} ;;
        *) _ps_log "puppet_state_record: unknown argument $1" && shift && continue ;;
        esac
        shift 2 || break
    done
    os=$(uname -s 2>/dev/null)
    # not given: the files named at puppet_state_begin (whose hashes it took), else
    # PUPPET_OVERRIDE_FILE / PUPPET_VAULT_FILE, else the OS defaults
    [ -n "$override" ] || [ -z "$_PS_BEGIN_DONE" ] || override=$_PS_BEGIN_OVERRIDE
    [ -n "$vault" ] || [ -z "$_PS_BEGIN_DONE" ] || vault=$_PS_BEGIN_VAULT
    [ -n "$override" ] || override=${PUPPET_OVERRIDE_FILE:-}
    [ -n "$vault" ] || vault=${PUPPET_VAULT_FILE:-}
    if [ -z "$override" ]; then
        case $os in Darwin) override=/opt/puppet_environments/ronin_settings ;; *) override=/etc/puppet/ronin_settings ;; esac
    fi
    if [ -z "$vault" ]; then
        case $os in Darwin) vault=/var/root/vault.yaml ;; *) vault=/root/vault.yaml ;; esac
    fi

    _ps_record_times
    ts=$_PS_TS started=$_PS_STARTED
    [ -n "$PUPPET_STATE_RUN_ID" ] || _ps_new_run_id
    [ -n "$attempt" ] || attempt=${PUPPET_STATE_ATTEMPT:-1}

    _ps_json_int "$exit_code" 0 255
    exit_code=$_PS_J
    case $exit_code in 0 | 2) success=true ;; *) success=false ;; esac

    if [ -n "$_PS_BEGIN_DONE" ] && [ "$override" = "$_PS_BEGIN_OVERRIDE" ]; then
        _PS_SHA=$_PS_BEGIN_OVERRIDE_SHA
    else
        _ps_sha256 "$override"
    fi
    _ps_json_string_or_null "$_PS_SHA"
    j_override_sha=$_PS_J
    if [ -n "$_PS_BEGIN_DONE" ] && [ "$vault" = "$_PS_BEGIN_VAULT" ]; then
        _PS_SHA=$_PS_BEGIN_VAULT_SHA
    else
        _ps_sha256 "$vault"
    fi
    _ps_json_string_or_null "$_PS_SHA"
    j_vault_sha=$_PS_J

    _ps_git_info "$wd"
    if [ -n "$repo" ]; then
        # The repo the attempt asked for. A checkout whose origin is another one
        # holds a commit of that other repo (the fetch that would have switched it
        # failed): none of its facts are this attempt's.
        if [ "$repo" != "$_PS_GIT_REPO" ]; then _PS_GIT_SHA="" _PS_GIT_SYMREF="" _PS_GIT_DIRTY=""; fi
        _PS_GIT_REPO=$repo
    fi
    if [ -z "$branch" ]; then branch=$_PS_GIT_SYMREF; fi
    if [ -z "$branch" ]; then
        puppet_state_override_value "$override" PUPPET_BRANCH
        branch=$PUPPET_STATE_VALUE
    fi
    _ps_strip_credentials "$_PS_GIT_REPO"

    host=${PUPPET_STATE_HOST:-}
    # hostname -f asks the resolver, which can hang for long when DNS is down: 2 s at
    # most where timeout(1) exists (Linux; macOS's hostname -f asks no resolver).
    if [ -n "$host" ]; then
        :
    elif command -v timeout >/dev/null 2>&1; then
        host=$(timeout 2 hostname -f 2>/dev/null)
    else
        host=$(hostname -f 2>/dev/null)
    fi
    [ -n "$host" ] || host=$(hostname 2>/dev/null)

    rec="{\"schema_version\":1,\"ts\":$ts,\"success\":$success,\"exit_code\":$exit_code"
    _ps_json_string_or_null "$_PS_URL" && rec+=",\"git_repo\":$_PS_J"
    _ps_json_string_or_null "$branch" && rec+=",\"git_branch\":$_PS_J"
    _ps_json_string_or_null "$_PS_GIT_SHA" && rec+=",\"git_sha\":$_PS_J"
    rec+=",\"override_sha\":$j_override_sha,\"vault_sha\":$j_vault_sha"
    _ps_json_string_or_null "$override" && rec+=",\"override_path\":$_PS_J"
    _ps_json_string_or_null "$role" && rec+=",\"role\":$_PS_J"
    _ps_json_int "$duration" 0 2147483647 && rec+=",\"duration_s\":$_PS_J"
    rec+=",\"git_dirty\":${_PS_GIT_DIRTY:-null}"
    _ps_json_string_or_null "$vault" && rec+=",\"vault_path\":$_PS_J"
    _ps_json_string_or_null "$host" && rec+=",\"host\":$_PS_J"
    _ps_json_string_or_null "$PUPPET_STATE_RUN_ID" && rec+=",\"run_id\":$_PS_J"
    rec+=",\"started_at\":$started"
    _ps_json_int "$attempt" 1 2147483647 && rec+=",\"attempt\":$_PS_J"
    _ps_json_string_or_null "$stage" && rec+=",\"stage\":$_PS_J"
    _ps_json_string_or_null "$os" && rec+=",\"os\":$_PS_J"
    rec+=",\"wrapper_version\":\"$PUPPET_STATE_WRAPPER_VERSION\"}"

    _ps_write_state "$state" "$rec"
    _ps_append_history "$hist" "$rec"
    return 0
}

# Record one attempt. In a subshell so that the caller's set -e/-u, traps,
# IFS and variables can neither break the record nor be changed by it.
puppet_state_record() {
    # A closed stderr (`2>&-`) would fail the subshell's redirection, and with it
    # the record: the warnings then go nowhere instead.
    if : >&2; then
        _ps_record_alone "$@" </dev/null >&2
    else
        _ps_record_alone "$@" </dev/null >/dev/null 2>&1
    fi
    _ps_reset_begin
    return 0
}

# _ps_record "$@" in a subshell of its own options; never fails.
_ps_record_alone() {
    (
        set +e +u -f
        IFS=$' \t\n'
        LC_ALL=C
        # A log line to a stderr whose reader went away must not end the record.
        trap '' PIPE
        # bash 5.2 under BASH_COMPAT<=42 would eat a backslash of each \\ replacement.
        shopt -u patsub_replacement 2>/dev/null
        _ps_record "$@"
    ) || true
}

# Seed-compatible entry point (hosts already call it this way).
write_puppet_state() {
    local IFS=$' \t\n'
    local -a extra
    extra=()
    if [ -n "${7:-}" ]; then extra=(--state-file "$7"); fi
    puppet_state_record --working-dir "${1:-}" --role "${2:-}" --exit-code "${3:-}" \
        --duration "${4:-}" --override "${5:-}" --vault "${6:-}" --stage puppet ${extra[@]+"${extra[@]}"}
    return 0
}
