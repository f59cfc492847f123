# docker build -t ehrseq-job .               (torch's CUDA 12.8 build from PyPI: NVIDIA driver >= 525, any RunPod pod
#                                             whose "CUDA version" is 12.x)
# docker build -t ehrseq-job:cu13 --build-arg TORCH_SPEC='torch==2.11.*' --build-arg TORCH_CUDA=13.0 .
#                                            (CUDA 13.0: driver >= 580, RunPod filter "CUDA version" 13.0 or newer)
# docker build -t ehrseq-job:cpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu --build-arg TORCH_CUDA=none .
#                                            (Macs, compose)
# docker run --gpus all -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_ENDPOINT_URL ehrseq-job jobs/behrt_large.yaml
# Both stages start from BASE_IMAGE: scripts/image-check passes a local Debian bookworm (Python 3.11) built without a registry.
ARG BASE_IMAGE=python:3.11-slim
# The torch build, chosen on purpose: a newer CUDA than the pod's driver runs leaves the GPU unseen (ehrseq then
# refuses to start rather than train on the CPU). TORCH_SPEC is the pip requirement; PyPI's torch 2.8-2.10 are CUDA
# 12.8 builds (nvidia-cuda-runtime-cu12==12.8.90), 2.11 and later CUDA 13.0 builds. TORCH_CUDA is the CUDA build it
# must give (torch.version.cuda, "none" for a CPU build): the build fails on any other, and the image's labels carry
# both. TORCH_INDEX is the one index torch comes from (its CPU wheels: https://download.pytorch.org/whl/cpu).
ARG TORCH_SPEC="torch==2.10.*"
ARG TORCH_CUDA=12.8
ARG TORCH_INDEX=https://pypi.org/simple

# --- build: a virtual environment with torch (CUDA wheels bundle their own runtime) and ehrseq -------------------
FROM ${BASE_IMAGE} AS build
ARG TORCH_SPEC
ARG TORCH_CUDA
ARG TORCH_INDEX
# Unset on a real host. A build machine with torch on local disk and a TLS proxy passes a wheel folder, a
# constraints file and a CA bundle (mounted for the build); pip reads them from the environment, and they never
# reach the runtime stage.
ARG PIP_FIND_LINKS
ARG PIP_CONSTRAINT
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from TORCH_SPEC on TORCH_INDEX alone; then its exact version is a constraint (outside the venv, so it
# stays in this stage) and the project's own torch range is already satisfied: nothing can swap the build.
# hadolint ignore=DL3013
RUN pip install --index-url "${TORCH_INDEX}" "${TORCH_SPEC}" \
    && python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > /tmp/torch-constraint.txt \
    && python -c "import sys, torch; built = torch.version.cuda or 'none'; \
built == '${TORCH_CUDA}' or sys.exit(f'${TORCH_SPEC} gave CUDA build {built}, not TORCH_CUDA=${TORCH_CUDA}'); \
print(f'torch {torch.__version__} (' + (f'built for CUDA {built}' if built != 'none' else 'CPU-only build') \
+ '; TORCH_SPEC ${TORCH_SPEC})')" > /opt/venv/torch-build.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY runner ./runner
# the tracking clients too (tracking.mlflow / tracking.tensorboard in a spec): a pod has no time to install them;
# "." is this project, its versions are pyproject's ranges
# hadolint ignore=DL3013
RUN pip install -c /tmp/torch-constraint.txt ".[mlflow,tensorboard]"

# --- runtime: the venv, tini as PID 1, a non-root user --------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG TORCH_SPEC
ARG TORCH_CUDA
LABEL io.ehrseq.torch-spec="${TORCH_SPEC}" io.ehrseq.torch-cuda="${TORCH_CUDA}"
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
