# The lungscreen job image: the CronJob launcher, the Dask runner (`lungscreen screen`), the Dask
# scheduler and the workers all run it. Build from the repository root:
#   docker build -f docker/job.Dockerfile -t ghcr.io/lungscreen/lungscreen-job:0.1.0 .
# With TensorRT (the plan builder of Triton's init container; TENSORRT_VERSION must be the one
# inside the Triton image, see triton.Dockerfile):
#   docker build -f docker/job.Dockerfile --build-arg EXTRAS=gpu -t ghcr.io/lungscreen/lungscreen-job:0.1.0-trt .
FROM python:3.11.11-slim-bookworm

ARG EXTRAS=""
ARG TENSORRT_VERSION=10.5.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp

WORKDIR /opt/lungscreen
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY export ./export
COPY synth ./synth
# torch from the CPU wheel index keeps the image small; the GPU work happens in Triton.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ".${EXTRAS:+[$EXTRAS]}" \
    && if [ "$EXTRAS" = "gpu" ]; then pip install "tensorrt==${TENSORRT_VERSION}"; fi \
    && useradd --uid 1000 --gid 0 --no-create-home --home-dir /tmp lungscreen

# The chart runs every container with a read-only root filesystem: only /tmp (an emptyDir) and
# the mounted claims are writable.
USER 1000
ENTRYPOINT []
CMD ["lungscreen", "--help"]
