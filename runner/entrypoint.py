"""The container's entrypoint: `docker run ehrseq-job jobs/x.yaml` means `ehrseq run jobs/x.yaml`.

Any other first argument is an ehrseq command (`status`, `list`, `pull`, ...) and passes
through. tini runs this as its child, so SIGTERM from `docker stop` or the pod reaches Python.
First, on stderr, the torch build the image was made with (the Dockerfile's TORCH_SPEC and the CUDA it gave):
the line to compare with the pod's driver when a GPU goes unused.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ehrseq_runner.cli import main

TORCH_BUILD = Path(sys.prefix) / "torch-build.txt"  # written by the Dockerfile's build stage into the venv


def dispatch(argv: list[str]) -> list[str]:
    if argv and argv[0].endswith((".yaml", ".yml")):
        return ["run", *argv]
    return argv


def image_banner(path: Path = TORCH_BUILD) -> str | None:
    """`ehrseq image: torch 2.10.0+cu128 (built for CUDA 12.8; TORCH_SPEC torch==2.10.*)`; None outside the image."""
    try:
        return f"ehrseq image: {path.read_text().strip()}"
    except OSError:
        return None


if __name__ == "__main__":
    banner = image_banner()
    if banner:
        print(banner, file=sys.stderr, flush=True)
    sys.argv[1:] = dispatch(sys.argv[1:])
    main()
