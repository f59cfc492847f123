"""EHR data: MEDS in, token cache out. `from ehrseq.data import prepare, DataSettings` is the entry point."""

from typing import Any

_ENTRY = ("DataSettings", "PreparedData", "prepare")


def __getattr__(name: str) -> Any:
    """The entry point, imported on first use (it brings pyarrow and the cache: `ehrseq --help` stays fast)."""
    if name in _ENTRY:
        from ehrseq.data import prepared

        return getattr(prepared, name)
    raise AttributeError(f"module 'ehrseq.data' has no attribute {name!r}")
