"""The pod job runner behind the `ehrseq` command (folder runner/, import name ehrseq_runner).

Grouped by concern, each group importing only the ones before it: storage (where a run's files live), spec
(what a run is asked to do), checkpoints (its saved training state), job (one run's lifecycle), commands (the
other subcommands); cli.py and entrypoint.py on top. The modelling library `ehrseq` never imports any of it.
"""
