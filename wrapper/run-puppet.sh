#!/bin/bash
# run-puppet.sh: apply the puppet code named by the override file, and record
# every attempt (fleetstate record v1) through puppet_state.sh. The driver that
# run-puppet-linux.sh and run-puppet-macos.sh run with their OS's paths; run
# directly, it picks them from `uname -s`.
#
# Reads PUPPET_REPO/PUPPET_BRANCH from the override file (defaults otherwise),
# fetches that branch into the working dir, checks the fetched commit out,
# runs `puppet apply --detailed-exitcodes`, retries with a delay. Exits with
# puppet's own exit code (1 when puppet never started). Every path and knob
# has an environment override: see wrapper/README.md.

# Shell options can come in through an exported SHELLOPTS: errexit would end the
# driver at puppet's first failure, before the record and the retry (and leave
# the watchdog behind), and xtrace's lines on a stderr whose reader went away
# would end it too. The driver runs with its own: nounset only.
set +e +E +T +a +C +f +k +x +v +o pipefail
set -u

if [ -z "${PUPPET_OS_NAME:-}" ]; then
    case $(uname -s 2>/dev/null) in Darwin) PUPPET_OS_NAME=macos ;; *) PUPPET_OS_NAME=linux ;; esac
fi
# CDPATH= and >/dev/null: a cd resolved through an exported CDPATH prints the path.
HERE=$(CDPATH="" cd -- "$(dirname -- "${BASH_SOURCE[0]}")" >/dev/null 2>&1 && pwd)
PUPPET_STATE_LIB=${PUPPET_STATE_LIB:-}
if [ -z "$PUPPET_STATE_LIB" ]; then
    for lib in "$HERE/puppet_state.sh" /usr/local/lib/puppet_state.sh; do
        if [ -r "$lib" ]; then PUPPET_STATE_LIB=$lib && break; fi
    done
fi

# Without the library puppet must still run: fall back to recording nothing.
# shellcheck source=puppet_state.sh source-path=SCRIPTDIR
if [ -n "$PUPPET_STATE_LIB" ] && . "$PUPPET_STATE_LIB"; then :; else
    echo "run-puppet: puppet_state.sh not found; runs will not be recorded" >&2
    puppet_state_begin() { :; }
    puppet_state_record() { :; }
    puppet_state_override_value() {
        PUPPET_STATE_VALUE=$(
            # shellcheck disable=SC1090
            . "$1" >/dev/null 2>&1
            eval "printf '%s' \"\${$2:-}\""
        )
    }
fi

case $PUPPET_OS_NAME in
    macos)
        OVERRIDE_FILE=${PUPPET_OVERRIDE_FILE:-/opt/puppet_environments/ronin_settings}
        VAULT_FILE=${PUPPET_VAULT_FILE:-/var/root/vault.yaml}
        WORKING_DIR=${PUPPET_WORKING_DIR:-/opt/puppet_environments/ronin_puppet}
        ;;
    *)
        OVERRIDE_FILE=${PUPPET_OVERRIDE_FILE:-/etc/puppet/ronin_settings}
        VAULT_FILE=${PUPPET_VAULT_FILE:-/root/vault.yaml}
        WORKING_DIR=${PUPPET_WORKING_DIR:-/etc/puppet/environments/ronin_puppet}
        ;;
esac
ROLE_FILE=${PUPPET_ROLE_FILE:-/etc/puppet_role}
DEFAULT_REPO=${PUPPET_DEFAULT_REPO:-https://github.com/mozilla-platform-ops/ronin_puppet.git}
DEFAULT_BRANCH=${PUPPET_DEFAULT_BRANCH:-master}
RUN_LOG=${PUPPET_RUN_LOG:-/var/log/puppet_run.log}
PUPPET_BIN=${PUPPET_BIN:-puppet}
MAX_ATTEMPTS=${PUPPET_MAX_ATTEMPTS:-5}
RETRY_DELAY_S=${PUPPET_RETRY_DELAY_S:-60}
TIMEOUT_S=${PUPPET_TIMEOUT_S:-3600}
GIT_TIMEOUT_S=${PUPPET_GIT_TIMEOUT_S:-300}
SINGLE_RUN=${PUPPET_SINGLE_RUN:-0}
PATH=$PATH:/opt/puppetlabs/bin:/usr/local/bin
export PUPPET_OVERRIDE_FILE=$OVERRIDE_FILE PUPPET_VAULT_FILE=$VAULT_FILE

# A line on stderr. A stderr whose reader went away (`run-puppet.sh 2>&1 | head`)
# makes the write fail quietly: SIGPIPE would end the driver, puppet's exit code
# and the retries with it.
log() {
    (
        trap '' PIPE
        printf 'run-puppet: %s\n' "$*" >&2
    )
}

# Run "$@" for at most $1 seconds (0: no limit); a watchdog TERMs, then KILLs,
# the command's whole process group. Portable: no timeout(1) on macOS. A
# subshell, so that its EXIT trap is its own: however it ends, the watchdog
# (whose pid would name another process group later) goes with it.
with_timeout() (
    limit=$1
    shift
    case $limit in '' | *[!0-9]*) limit=0 ;; esac
    limit=${limit#"${limit%%[!0]*}"}
    # 0 (or 00): no limit; more than 9 digits is more than 30 years.
    if [ -z "$limit" ] || [ "${#limit}" -gt 9 ]; then exec "$@"; fi
    set -m
    "$@" </dev/null &
    pid=$!
    set +m
    watchdog "$limit" "$pid" </dev/null >/dev/null 2>&1 &
    dog=$!
    trap 'stop_watchdog "$dog"' EXIT
    wait "$pid"
    rc=$?
    # Stopped once only: after the wait its pid may be another process's.
    trap - EXIT
    stop_watchdog "$dog"
    if [ "$rc" -gt 128 ]; then log "$1 ended by signal $((rc - 128)) (timeout ${limit}s)"; fi
    exit "$rc"
)

# End the watchdog $1 of with_timeout, and wait for it.
stop_watchdog() {
    kill -TERM "$1" 2>/dev/null
    wait "$1" 2>/dev/null
}

# The watchdog of with_timeout, in the background: after $1 seconds TERM the
# process group $2, after 5 more KILL it. Told to stop (TERM), it ends at once
# and takes its sleep along.
watchdog() {
    WD_STOP="" WD_SLEEPER=""
    trap 'WD_STOP=1; [ -z "$WD_SLEEPER" ] || kill "$WD_SLEEPER" 2>/dev/null' TERM
    watchdog_sleep "$1" || return 0
    kill -TERM -- "-$2" 2>/dev/null || kill -TERM "$2" 2>/dev/null
    watchdog_sleep 5 || return 0
    kill -KILL -- "-$2" 2>/dev/null || kill -KILL "$2" 2>/dev/null
}

# Sleep $1 seconds in the background, where the TERM trap can end it. Status 1
# when the watchdog was told to stop: the flag catches a TERM that came before
# $WD_SLEEPER was set, when the trap could not kill the sleep yet.
watchdog_sleep() {
    sleep "$1" &
    WD_SLEEPER=$!
    [ -n "$WD_STOP" ] || wait "$WD_SLEEPER"
    if [ -n "$WD_STOP" ]; then
        kill "$WD_SLEEPER" 2>/dev/null
        return 1
    fi
    return 0
}

# Copy puppet's output (tee's copy) to the driver's stdout. When stdout fails
# (its reader went away: `run-puppet.sh | head -1`), keep reading to the end,
# so that tee, and puppet behind it, never write to a closed pipe: puppet runs
# to its end and the run log gets all of it, whatever tee does on EPIPE.
relay_to_stdout() (
    trap '' PIPE
    cat 2>/dev/null
    cat >/dev/null 2>&1
)

# Fetch $1 (repo) at branch $2 into the working dir and check the commit out;
# CHECKED_OUT=1 once the checkout is that commit. origin is set to $1 only
# then: until the checkout moves, it names the repo of the commit there.
checkout_code() {
    local repo=$1 branch=$2
    if [ ! -d "$WORKING_DIR/.git" ]; then
        mkdir -p "$WORKING_DIR" && git init -q "$WORKING_DIR" || return 1
    fi
    GIT_TERMINAL_PROMPT=0 with_timeout "$GIT_TIMEOUT_S" \
        git -C "$WORKING_DIR" fetch -q -- "$repo" "+refs/heads/$branch:refs/remotes/origin/$branch" ||
        return 1
    git -C "$WORKING_DIR" checkout -q -f --detach "refs/remotes/origin/$branch" || return 1
    CHECKED_OUT=1
    if git -C "$WORKING_DIR" config --get remote.origin.url >/dev/null 2>&1; then
        git -C "$WORKING_DIR" remote set-url origin "$repo" || return 1
    else
        git -C "$WORKING_DIR" remote add origin "$repo" || return 1
    fi
}

# One attempt; its status is puppet's exit code, or 1 when puppet never ran.
run_attempt() {
    local attempt=$1 repo branch role="" rc
    CHECKED_OUT=""
    puppet_state_begin --attempt "$attempt" --override "$OVERRIDE_FILE" --vault "$VAULT_FILE"
    repo=$DEFAULT_REPO branch=$DEFAULT_BRANCH
    if [ -f "$OVERRIDE_FILE" ]; then
        puppet_state_override_value "$OVERRIDE_FILE" PUPPET_REPO
        repo=${PUPPET_STATE_VALUE:-$repo}
        puppet_state_override_value "$OVERRIDE_FILE" PUPPET_BRANCH
        branch=${PUPPET_STATE_VALUE:-$branch}
    fi
    # A regular file only: reading a FIFO would block until a writer came.
    if [ -f "$ROLE_FILE" ] && [ -r "$ROLE_FILE" ]; then read -r role <"$ROLE_FILE"; fi
    if [ -z "$role" ]; then
        log "no role in $ROLE_FILE"
    elif [ ! -f "$VAULT_FILE" ]; then
        log "vault file $VAULT_FILE missing"
    elif ! command -v "$PUPPET_BIN" >/dev/null 2>&1; then
        log "$PUPPET_BIN not found"
    elif ! checkout_code "$repo" "$branch"; then
        log "could not fetch $branch"
    elif ! mkdir -p "$WORKING_DIR/data/secrets" ||
        ! cp "$VAULT_FILE" "$WORKING_DIR/data/secrets/vault.yaml" ||
        ! chmod 0600 "$WORKING_DIR/data/secrets/vault.yaml"; then
        log "could not install the vault in $WORKING_DIR"
    else
        (cd "$WORKING_DIR" && export FACTER_puppet_role="$role" && with_timeout "$TIMEOUT_S" \
            "$PUPPET_BIN" apply --modulepath=./modules:./r10k_modules \
            --hiera_config=./hiera.yaml --logdest=console --color=false \
            --detailed-exitcodes ./manifests/) 2>&1 | tee -a "$RUN_LOG" | relay_to_stdout
        rc=${PIPESTATUS[0]}
        puppet_state_record --exit-code "$rc" --stage puppet --role "$role" \
            --working-dir "$WORKING_DIR" --branch "$branch" --attempt "$attempt"
        return "$rc"
    fi
    # Puppet never ran. The repo and branch are the ones asked for; the checkout's
    # commit is this attempt's only when the checkout got to it, else it is what
    # an earlier attempt left there (of another repo or branch, maybe): null.
    local wd=""
    [ -z "$CHECKED_OUT" ] || wd=$WORKING_DIR
    puppet_state_record --exit-code "" --stage prepare --role "$role" \
        --working-dir "$wd" --repo "$repo" --branch "$branch" --attempt "$attempt"
    return 1
}

main() {
    local attempt=1 rc
    while :; do
        run_attempt "$attempt"
        rc=$?
        case $rc in 0 | 2) break ;; esac
        case $SINGLE_RUN in 1 | true | yes) break ;; esac
        [ "$attempt" -lt "$MAX_ATTEMPTS" ] || break
        log "attempt $attempt failed with $rc; retrying in ${RETRY_DELAY_S}s"
        sleep "$RETRY_DELAY_S"
        attempt=$((attempt + 1))
    done
    log "finished ($PUPPET_OS_NAME) with exit code $rc after $attempt attempt(s)"
    return "$rc"
}

main "$@"
exit $?
