"""Training objectives and their held-out metrics (MLM now; next_visit, binary, survival later)."""
