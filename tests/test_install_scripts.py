"""scripts/install_torch.sh picks the torch index: PyTorch's CPU index on a machine without an NVIDIA GPU and
without an index of pip's own, pip's configured index where there is one, TORCH_INDEX_URL above both."""
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def chosen(tmp_path, **env):
    """The pip install command the script runs (pip itself replaced by an echo), with `env` on a clean one."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "python").write_text('#!/bin/sh\nif [ "$3" = config ]; then exit 0; fi\necho "PIP $*"\n')
    (fake / "python").chmod(0o755)
    base = {"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(["bash", "-c", "set -euo pipefail; . scripts/install_torch.sh"], cwd=REPO,
                         env={**base, **env}, capture_output=True, text=True, check=True)
    return next(line for line in out.stdout.splitlines() if line.startswith("PIP "))


@pytest.mark.skipif(os.path.exists("/usr/bin/nvidia-smi") or os.path.exists("/bin/nvidia-smi"),
                    reason="this machine has nvidia-smi")
def test_cpu_index_without_gpu_or_own_index(tmp_path):
    assert chosen(tmp_path) == "PIP -m pip install -q --index-url https://download.pytorch.org/whl/cpu torch==2.13.0"


def test_pip_configured_index_is_kept(tmp_path):
    assert chosen(tmp_path, PIP_EXTRA_INDEX_URL="file:///mirror") == "PIP -m pip install -q torch==2.13.0"


def test_torch_index_url_wins(tmp_path):
    got = chosen(tmp_path, PIP_EXTRA_INDEX_URL="file:///mirror", TORCH_INDEX_URL="https://example/cu128")
    assert got == "PIP -m pip install -q --index-url https://example/cu128 torch==2.13.0"
