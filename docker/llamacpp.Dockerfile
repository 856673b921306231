# lem's llama.cpp worker (llama-cpp-python built with CUDA) on NVIDIA's CUDA image (docs/launchers.md).
#
#   docker build -f docker/llamacpp.Dockerfile -t lem-llamacpp .      (from the repository root)
#   lem run exp.toml --launch llamacpp="docker run --rm -i --gpus all lem-llamacpp python3"
#
# llama.cpp's own images (ghcr.io/ggml-org/llama.cpp) hold its C++ programs, not the Python binding lem
# drives, so this builds llama-cpp-python 0.3.36 (the version lem's llama.cpp backend is tested with,
# docs/llamacpp.md) on NVIDIA's CUDA development image. Not built on lem's CI machines (no Docker there).
FROM nvidia/cuda:12.8.1-devel-ubuntu24.04

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

COPY packages/lem-core /opt/lem/lem-core
COPY packages/lem-backend-llamacpp /opt/lem/lem-backend-llamacpp
COPY packages/lem-energy-nvml /opt/lem/lem-energy-nvml
RUN CMAKE_ARGS="-DGGML_CUDA=on" pip install --no-cache-dir "llama-cpp-python==0.3.36" \
    && pip install --no-cache-dir /opt/lem/lem-core /opt/lem/lem-backend-llamacpp /opt/lem/lem-energy-nvml \
    && python3 -c "import lem.campaign.worker, lem_backend_llamacpp"

ENTRYPOINT []
CMD ["lem", "plugins"]
