# lem's PyTorch (Transformers) worker in PyTorch's official image (docs/launchers.md).
#
#   docker build -f docker/pytorch.Dockerfile -t lem-pytorch .        (from the repository root)
#   lem run exp.toml --launch pytorch="docker run --rm -i --gpus all --ipc=host lem-pytorch python"
#
# torch 2.11.0 with CUDA 13.0 and transformers 5.17.0: what lem's GPU measurements ran with (PLATFORM
# notes, docs). Not built on lem's CI machines (no Docker there): see docs/launchers.md.
FROM pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime

COPY packages/lem-core /opt/lem/lem-core
COPY packages/lem-backend-pytorch /opt/lem/lem-backend-pytorch
COPY packages/lem-energy-nvml /opt/lem/lem-energy-nvml
# torch==2.11.0 keeps pip from replacing the image's CUDA build with another.
RUN pip install --no-cache-dir "torch==2.11.0" "transformers==5.17.0" \
        /opt/lem/lem-core /opt/lem/lem-backend-pytorch /opt/lem/lem-energy-nvml \
    && python -c "import lem.campaign.worker, lem_backend_pytorch"

ENTRYPOINT []
CMD ["lem", "plugins"]
