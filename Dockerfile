# docker build -t ehrseq-job .                                         (CUDA build of torch, for GPU pods)
# docker build -t ehrseq-job:cpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .   (Macs, compose)
# docker run --gpus all -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_ENDPOINT_URL ehrseq-job jobs/behrt_large.yaml
# Both stages start from BASE_IMAGE: scripts/image-check passes a local Debian bookworm (Python 3.11) built without a registry.
ARG BASE_IMAGE=python:3.11-slim

# --- build: a virtual environment with torch (CUDA wheels bundle their own runtime) and ehrseq -------------------
FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
# Unset on a real host. A build machine with torch on local disk and a TLS proxy passes a wheel folder, a
# constraints file and a CA bundle (mounted for the build); pip reads them from the environment, and they never
# reach the runtime stage.
ARG PIP_FIND_LINKS
ARG PIP_CONSTRAINT
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY runner ./runner
# the tracking clients too (tracking.mlflow / tracking.tensorboard in a spec): a pod has no time to install them;
# "." is this project, its versions are pyproject's ranges
# hadolint ignore=DL3013
RUN pip install --extra-index-url "${TORCH_INDEX}" ".[mlflow,tensorboard]"

# --- runtime: the venv, tini as PID 1, a non-root user --------------------------------------------------------------
FROM ${BASE_IMAGE}
# tini forwards SIGTERM to Python and reaps children; Debian's package is the pinned distribution release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 ehrseq
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /home/ehrseq/app
COPY --chown=1000:1000 jobs ./jobs
USER 1000:1000
# exec form: tini is PID 1, Python its child; `docker run IMAGE jobs/x.yaml` runs the job, other args are commands.
ENTRYPOINT ["tini", "--", "python", "-m", "ehrseq_runner.entrypoint"]
CMD ["jobs/behrt_small.yaml"]
