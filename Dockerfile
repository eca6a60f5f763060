# syntax=docker/dockerfile:1
# The melu image: the package and its CLI (`melu train`, `melu serve`, ...), run as a non-root user.
#
#   docker build -t melu:cpu .                      # CPU build of torch (the default)
#   docker build -t melu:gpu --build-arg TORCH_INDEX=https://pypi.org/simple .
#
# TORCH_INDEX is the package index torch comes from: PyTorch's CPU-only index by default (a much
# smaller image); PyPI's Linux wheels of torch are CUDA builds, or name one of PyTorch's CUDA
# indexes (…/whl/cuXYZ) to pick a CUDA version. docker-compose.yml sets it per profile.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch==2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MELU_DATA_DIR=/data

# torch first, in its own layer: it is by far the largest and changes least often. TORCH_SPEC
# pins the version (the same as the Makefile's), which hadolint cannot see through the variable.
# hadolint ignore=DL3013
RUN pip install --index-url "${TORCH_INDEX}" "${TORCH_SPEC}"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY melu ./melu
COPY service ./service
# A regular (not editable) install: service/static ships as package data. torch is already
# satisfied, so pip keeps the build chosen above and fetches only the other dependencies.
RUN pip install . \
    && groupadd --gid 10001 melu \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin melu \
    && mkdir -p /data /runs \
    && chown melu:melu /data /runs

# A new named volume mounted on /data or /runs starts as a copy of the folder here, owned by
# melu, so the non-root user can write to it (see docker-compose.yml).
USER 10001:10001
EXPOSE 8000

CMD ["melu", "serve", "--checkpoint", "/runs/latest/checkpoint.pt", "--host", "0.0.0.0", "--port", "8000"]
