"""A run's saved training state: the commit protocol in storage, checkpoints off the training thread, a local tier.

Every resume reads from here and every stop request writes here; the group sits above storage and below the job.
"""
