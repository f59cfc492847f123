"""Where a run's files live and how they get there.

The storage interface and its backends (a local folder, S3), the run folder's layout, safe key names, uploads
retried through outages and the lease that keeps one writer per run. Nothing here knows about models or training:
the runner's other groups (checkpoints, spec, job, commands) build on these modules, never the reverse.
"""
