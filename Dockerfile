# syntax=docker/dockerfile:1
#
# EDSR upscaler images. Build targets:
#   service (default)  the upscaling service: FastAPI + onnxruntime, no TensorFlow, non-root user
#   train              the training package (TensorFlow, Keras, tf2onnx) and scripts/retrain.sh
#
#   docker build -t edsr-upscaler:gpu .                                  # CUDA 13 + cuDNN 9 wheels
#   docker build --build-arg SERVICE_EXTRAS= -t edsr-upscaler:cpu .      # CPU only, much smaller
#   docker build --target train -t edsr-upscaler:train .
#
# CUDA and cuDNN come from NVIDIA's pip wheels (pyproject's `gpu` extra), not from an nvidia/cuda
# base image: pyproject.toml stays the one place that pins onnxruntime-gpu and its CUDA, and the
# host needs only the NVIDIA driver and container toolkit.
#
# CI has no Docker engine: scripts/check_service_image.py installs what the service-build stage
# installs into a fresh venv and runs the service stage's CMD and HEALTHCHECK (`make test`).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin app
WORKDIR /app

# The service's venv: pyproject's base dependencies plus SERVICE_EXTRAS ("gpu" adds the CUDA and
# cuDNN wheels; empty = CPU only), installed non-editable so that no source tree is needed later.
# The build fails if the TensorFlow stack got in.
FROM base AS service-build
ARG SERVICE_EXTRAS=gpu
WORKDIR /build
COPY pyproject.toml README.md ./
COPY service/ service/
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
    && pip install "./${SERVICE_EXTRAS:+[${SERVICE_EXTRAS}]}" \
    && pip check \
    && python -c "import importlib.util as u, sys; bad = [m for m in ('tensorflow', 'keras', 'tf2onnx') if u.find_spec(m)]; sys.exit(f'TensorFlow stack in the service venv: {bad}' if bad else 0)"

# Retraining: `docker compose --profile train run --rm trainer --data /data ...` (see README).
FROM base AS train
ARG TRAIN_EXTRAS=train
WORKDIR /build
COPY pyproject.toml README.md ./
COPY training/ training/
COPY service/ service/
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
    && pip install "./[${TRAIN_EXTRAS}]" \
    && pip check
WORKDIR /app
COPY scripts/retrain.sh scripts/retrain.sh
# The trainer runs as whoever owns ./models and ./runs on the host (compose sets `user:`), so
# every cache goes to /tmp, which any user can write.
ENV HOME=/tmp \
    KERAS_HOME=/tmp/.keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    KERAS_BACKEND=tensorflow \
    TF_CPP_MIN_LOG_LEVEL=2
RUN mkdir -p /app/models /app/runs && chown 10001:10001 /app/models /app/runs
USER 10001:10001
ENTRYPOINT ["bash", "scripts/retrain.sh"]
CMD ["--help"]

# The service image (default target). Mount a folder over /app/models (compose does) or set
# UPSCALER_MODEL_PATH to serve another model than the one baked in.
FROM base AS service
ARG SERVICE_EXTRAS=gpu
COPY --from=service-build /opt/venv /opt/venv
# The NVIDIA wheels put their libraries in site-packages/nvidia/*/lib, where the dynamic loader
# does not look: list those folders in ld.so.conf (what LD_LIBRARY_PATH would do, computed from
# the installed wheels). service/core/engines/onnxruntime_engine.py also calls
# onnxruntime.preload_dlls(). With the gpu extra, finding no such folder (a changed wheel layout)
# fails the build.
RUN python -c "import pathlib, sys, sysconfig; root = pathlib.Path(sysconfig.get_paths()['purelib'], 'nvidia'); sys.stdout.writelines(f'{p}\n' for p in sorted(root.glob('*/lib')) if p.is_dir())" \
        > /etc/ld.so.conf.d/zz-nvidia-pip-wheels.conf \
    && ldconfig \
    && case ",${SERVICE_EXTRAS}," in \
        *,gpu,*) test -s /etc/ld.so.conf.d/zz-nvidia-pip-wheels.conf \
            || { echo "gpu extra installed, but no site-packages/nvidia/*/lib found" >&2; exit 1; } ;; \
    esac
COPY models/ /app/models/
# Jobs (POST /jobs) keep their inputs, results and records in /app/jobs, owned by the service's
# user; compose mounts a volume there so that they outlive the container. Relative to WORKDIR,
# so that the image check (scripts/check_service_image.py) keeps them in its own folder.
RUN mkdir /app/jobs && chown 10001:10001 /app/jobs
ENV UPSCALER_MODELS_DIR=/app/models \
    UPSCALER_DEFAULT_MODEL=edsr_x4 \
    UPSCALER_JOBS_DIR=jobs
# No MALLOC_ARENA_MAX here: `python -m service` bounds its glibc malloc arenas to two itself
# (service.host.limit_malloc_arenas; docs/operations.md, memory), however it is started.
USER 10001:10001
EXPOSE 8000
# /readyz answers 200 only once the model is loaded and warmed up (503 before, and on failure).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]
CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000"]
