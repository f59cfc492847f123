"""Held-out metrics and their uncertainty."""
