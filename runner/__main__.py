"""`python -m runner ...` is the `ehrseq` command (the container entrypoint uses it too)."""

from runner.cli import main

main()
