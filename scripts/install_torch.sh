# Sourced by scripts/main_job.sh and .ci/run inside their venv: install torch 2.13.0, the CPU build where this
# machine has no NVIDIA GPU. PyPI's default torch wheel for Linux is the CUDA one (gigabytes), so without a GPU
# the CPU wheel comes from PyTorch's CPU index, unless pip already has an index of its own configured
# (PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS or `pip config`: a mirror that serves the build you
# want). TORCH_INDEX_URL overrides the choice (e.g. https://download.pytorch.org/whl/cu128 for CUDA 12.8).
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
torch_index=()
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    torch_index=(--index-url "$TORCH_INDEX_URL")
elif ! command -v nvidia-smi >/dev/null 2>&1 && [ -z "${PIP_INDEX_URL:-}${PIP_EXTRA_INDEX_URL:-}${PIP_FIND_LINKS:-}" ] \
        && ! python -m pip config list 2>/dev/null | grep -q -E "index-url|find-links"; then
    torch_index=(--index-url https://download.pytorch.org/whl/cpu)
fi
echo "install_torch: torch==$TORCH_VERSION ${torch_index[*]:-from the index pip is configured with}"
python -m pip install -q "${torch_index[@]}" "torch==$TORCH_VERSION"
