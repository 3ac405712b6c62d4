"""`python -m pipeline` is `fleetstate`."""

from pipeline.cli import main

main()
