"""Device parameters shared by the Triton test files: CPU tensors run in the
interpreter (TRITON_INTERPRET=1, set by conftest.py without a GPU), CUDA
tensors need a GPU; each case skips visibly where its device is missing."""
import pytest
import torch

from mlkd_fast import backends

INTERPRETER = backends.triton_interpreter()
HAS_CUDA = torch.cuda.is_available()
gpu_only = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRETER, reason="CPU tensors need TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=gpu_only),
]
