#!/bin/bash
# run-puppet-macos.sh: run-puppet.sh (beside this file) with the macOS paths:
# apply the puppet code named by the override file and record every attempt.
# Every path and knob has an environment override: see wrapper/README.md.
# errexit from an exported SHELLOPTS must not end it early, nor xtrace's lines on a
# stderr whose reader went away (run-puppet.sh resets the rest).
set +e +x +v
PUPPET_OS_NAME=macos
# CDPATH= and >/dev/null: a cd resolved through an exported CDPATH prints the path.
DRIVER="$(CDPATH="" cd -- "$(dirname -- "$0")" >/dev/null 2>&1 && pwd)/run-puppet.sh"
if [ ! -r "$DRIVER" ]; then
    echo "run-puppet-macos: $DRIVER is missing: install run-puppet.sh beside this script" >&2
    exit 1
fi
# shellcheck source=run-puppet.sh source-path=SCRIPTDIR
. "$DRIVER"
