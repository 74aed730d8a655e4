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
# CUDA 13 and cuDNN 9 come from NVIDIA's pip wheels (the `gpu` extra of pyproject.toml), not from
# an nvidia/cuda base image: pyproject.toml stays the single place that pins onnxruntime-gpu and
# the CUDA it needs, the image installs exactly what `pip install '.[gpu]'` installs on bare metal
# (CUDA and cuDNN as pip wheels: the arrangement that loaded the CUDA provider on an H100), and
# the host needs only the NVIDIA driver and container toolkit. The same Dockerfile then builds
# the CPU image by leaving the extra out.
#
# No Docker engine runs in CI: scripts/replay_service_image.py replays the `service-build` stage
# (its ENV, COPY and RUN lines, read from this file) in a fresh virtual environment and starts the
# service from it. Keep that stage's RUN steps plain shell, with paths under /opt/venv and /build.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
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

# ---------------------------------------------------------------------------------------------
# The service's virtual environment: the base dependencies of pyproject.toml plus SERVICE_EXTRAS
# ("gpu" = onnxruntime-gpu[cuda,cudnn]; empty = CPU only). Installed non-editable, so the
# runtime stage needs no source tree.
FROM base AS service-build
ARG SERVICE_EXTRAS=gpu
WORKDIR /build
COPY pyproject.toml README.md ./
COPY service/ service/
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv "$VIRTUAL_ENV" \
    && pip install "/build${SERVICE_EXTRAS:+[${SERVICE_EXTRAS}]}" \
    && python -m pip check \
    && python -c "import importlib.util as u, sys; bad = [m for m in ('tensorflow', 'keras', 'tf2onnx') if u.find_spec(m)]; sys.exit(f'TensorFlow stack in the service venv: {bad}' if bad else 0)"

# ---------------------------------------------------------------------------------------------
# Retraining: `docker compose --profile train run --rm trainer --data /data ...` (see README).
# TensorFlow here is the CPU build from PyPI; TRAIN_EXTRAS can add more of pyproject's extras.
FROM base AS train
ARG TRAIN_EXTRAS=train
WORKDIR /build
COPY pyproject.toml README.md ./
COPY training/ training/
COPY service/ service/
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv "$VIRTUAL_ENV" \
    && pip install "/build[${TRAIN_EXTRAS}]" \
    && python -m pip check
WORKDIR /app
COPY scripts/retrain.sh scripts/retrain.sh
# The trainer runs as whatever user owns ./models and ./runs on the host (compose sets `user:`),
# so every cache goes to /tmp, which any user can write.
ENV HOME=/tmp \
    KERAS_HOME=/tmp/.keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    KERAS_BACKEND=tensorflow \
    TF_CPP_MIN_LOG_LEVEL=2
RUN mkdir -p /app/models /app/runs && chown 10001:10001 /app/models /app/runs
USER 10001:10001
ENTRYPOINT ["bash", "scripts/retrain.sh"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
# The service image (default target). The model baked in from models/ is replaced by mounting a
# folder over /app/models (docker-compose.yml does) or by pointing UPSCALER_MODEL_PATH elsewhere.
FROM base AS service
ARG SERVICE_EXTRAS=gpu
COPY --from=service-build /opt/venv /opt/venv
# CUDA and cuDNN from the NVIDIA wheels live in site-packages/nvidia/*/lib, where the dynamic
# loader does not look. List those folders (computed from the installed wheels, so nothing here
# hard-codes the Python version or the wheel layout) in ld.so.conf: the effect of LD_LIBRARY_PATH,
# which an ENV line could not compute. service/runtime.py also calls onnxruntime.preload_dlls().
# The build fails if the gpu extra is in but no such folder is found (a changed wheel layout).
RUN python -c "import pathlib, sys, sysconfig; root = pathlib.Path(sysconfig.get_paths()['purelib'], 'nvidia'); sys.stdout.writelines(f'{p}\n' for p in sorted(root.glob('*/lib')) if p.is_dir())" \
        > /etc/ld.so.conf.d/zz-nvidia-pip-wheels.conf \
    && ldconfig \
    && echo "NVIDIA wheel libraries: $(paste -sd ' ' /etc/ld.so.conf.d/zz-nvidia-pip-wheels.conf)" \
    && case ",${SERVICE_EXTRAS}," in \
        *,gpu,*) test -s /etc/ld.so.conf.d/zz-nvidia-pip-wheels.conf \
            || { echo "gpu extra installed, but no site-packages/nvidia/*/lib found" >&2; exit 1; } ;; \
    esac
COPY models/ /app/models/
ENV UPSCALER_MODEL_PATH=/app/models/edsr_x4.onnx
USER 10001:10001
EXPOSE 8000
# /readyz answers 200 only once the model is loaded and warmed up (503 before, and on failure).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]
CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000"]
