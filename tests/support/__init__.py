"""What the tests share besides fixtures: helpers and constants, the per-patient reference implementations the
library is checked against, and the real S3 server. Importable as `support` (pyproject's pytest pythonpath)."""
