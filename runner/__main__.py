"""`python -m ehrseq_runner ...` is the `ehrseq` command (the container entrypoint uses it too)."""

from ehrseq_runner.cli import main

main()
