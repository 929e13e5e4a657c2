"""`python -m processor.cli`: the batchproc command."""

from .app import main

main()
