"""The container's entrypoint: `docker run ehrseq-job jobs/x.yaml` means `ehrseq run jobs/x.yaml`.

Any other first argument is an ehrseq command (`status`, `list`, `pull`, ...) and passes
through. tini runs this as its child, so SIGTERM from `docker stop` or the pod reaches Python.
"""

from __future__ import annotations

import sys

from ehrseq_runner.cli import main


def dispatch(argv: list[str]) -> list[str]:
    if argv and argv[0].endswith((".yaml", ".yml")):
        return ["run", *argv]
    return argv


if __name__ == "__main__":
    sys.argv[1:] = dispatch(sys.argv[1:])
    main()
