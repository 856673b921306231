# lem's TensorRT-LLM worker in NVIDIA's own TensorRT-LLM container (docs/tensorrt.md, docs/launchers.md).
#
#   docker build -f docker/tensorrt.Dockerfile -t lem-tensorrt .      (from the repository root)
#   lem run exp.toml --launch tensorrt="docker run --rm -i --gpus all --ipc=host lem-tensorrt python"
#
# The release lem's TensorRT-LLM backend was written against (docs/tensorrt.md): 1.2.1. TensorRT-LLM,
# CUDA, PyTorch and Python come with NVIDIA's image; lem-core, the backend and the NVML meter are
# installed from this repository. Not built on lem's CI machines (no Docker there): see docs/launchers.md.
FROM nvcr.io/nvidia/tensorrt-llm/release:1.2.1

COPY packages/lem-core /opt/lem/lem-core
COPY packages/lem-backend-tensorrt /opt/lem/lem-backend-tensorrt
COPY packages/lem-energy-nvml /opt/lem/lem-energy-nvml
# --no-deps for the backend: its only library is the image's TensorRT-LLM, which pip must not replace.
RUN pip install --no-cache-dir /opt/lem/lem-core /opt/lem/lem-energy-nvml \
    && pip install --no-cache-dir --no-deps /opt/lem/lem-backend-tensorrt \
    && python -c "import lem.campaign.worker, lem_backend_tensorrt"

# lem appends `-m lem.campaign.worker` to the launcher's command: the image must not add an entrypoint.
ENTRYPOINT []
CMD ["lem", "plugins"]
