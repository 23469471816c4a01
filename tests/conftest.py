"""Test-session setup shared by every test file.

The Triton kernels run on CPU tensors in the Triton interpreter when no GPU is
present. TRITON_INTERPRET is read when a kernel is decorated (i.e. when
mlkd_fast.kernels is first imported), so it is set here, before any test
imports triton; an explicit TRITON_INTERPRET in the environment wins. With a
GPU the kernels compile for it and the CPU/interpreter cases skip. (The
interpreter needs numpy, a test dependency.)

The tests never need a model hub: HF_HUB_OFFLINE=1 (set before transformers is imported, as it reads it then)
keeps a lookup from waiting on a network that is not there.

The folder itself goes on sys.path, so test files in subfolders import the
shared modules (helpers, naive, tiny_bert) by name.
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
