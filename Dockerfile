# lobstream signal daemon, CPU image.
#
#   docker build -t lobstream .
#   docker run --rm --network host \
#       -v "$PWD/lobstream.toml:/etc/lobstream/lobstream.toml:ro" \
#       -v "$PWD/models:/models:ro" -v /tmp/lobstream:/tmp/lobstream \
#       lobstream
#
# The config is mounted at /etc/lobstream/lobstream.toml (start from examples/serve.toml; its
# relative paths are relative to the config file, so give the model an absolute path such as
# /models/binctabl.pt, or leave [model] path at the bundled artifact's installed location).
# ipc:// endpoints are files: mount their folder to share them with a feed outside the container.
# Metrics and binds are loopback-only unless the config sets [security] allow_remote = true;
# with --network host a Prometheus on the host scrapes 127.0.0.1:9108 as it is.
#
# Signals: `docker stop` sends SIGTERM (the daemon publishes the batch in flight, then exits 0);
# `docker kill --signal HUP CONTAINER` reloads the model artifact. lobstream is PID 1 (exec
# form below) and installs handlers for both, so no init process is needed.
#
# CUDA variant: the PyTorch CUDA wheels bundle the CUDA runtime libraries, so the same slim base
# works with a CUDA build of torch; the host needs the NVIDIA driver and the NVIDIA Container
# Toolkit:
#
#   docker build -t lobstream:cuda \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cuXYZ .
#   docker run --rm --gpus all ... lobstream:cuda
#
# where cuXYZ is a CUDA build that pytorch.org lists for torch 2.13.0 and that the host's driver
# supports. [model] device = "auto" (the default) then runs the model on the GPU.

ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CACHE_DIR=/var/cache/lobstream/numba

# torch first, from the PyTorch index: the project's `torch>=2.3` is then already met, and pip
# does not pull the default (CUDA) wheel from PyPI.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY . /src
RUN pip install /src \
    && rm -rf /src \
    && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin lobstream \
    && mkdir -p /etc/lobstream "${NUMBA_CACHE_DIR}" \
    && chown lobstream:lobstream "${NUMBA_CACHE_DIR}"

WORKDIR /
USER lobstream
# Numba compiles the book kernels on the first start into NUMBA_CACHE_DIR; mount a volume there
# to keep the compiled kernels across containers.
VOLUME ["/var/cache/lobstream/numba"]
EXPOSE 9108
STOPSIGNAL SIGTERM
ENTRYPOINT ["lobstream"]
CMD ["serve", "--config", "/etc/lobstream/lobstream.toml"]
