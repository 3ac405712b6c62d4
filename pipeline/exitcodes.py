"""Process exit codes: the one list scripts and operators can rely on."""

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    ERROR = 1  # a clear one-line message on stderr
    USAGE = 2
    GATE = 3  # a --min threshold was not met
    # ingest: some hosts could not be collected, or some mirror files read; the rest loaded
    PARTIAL = 4
    INTERRUPTED = 130  # Ctrl-C (SIGINT), as shells report it: `fleetstate: interrupted`
