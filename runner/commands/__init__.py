"""What the `ehrseq` subcommands do beyond running one job: pull, export, compare, ladder, bench, data.

cli.py wires them into the app (bench and data as sub-apps; the others are imported when their command runs, so
`ehrseq --help` stays fast). They sit on top of the job, checkpoints, spec and storage groups; nothing there
imports them.
"""
