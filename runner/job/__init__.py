"""One run's lifecycle on a pod: inputs, training under stop requests, live metrics, the bundle, torchrun ranks.

It builds on storage, checkpoints and spec; only the commands and the CLI import it.
"""
