"""Plots and human-readable summaries of a run."""
