"""Test-session setup shared by every test file.

The Triton kernels run on CPU tensors in the Triton interpreter when no GPU is
present. TRITON_INTERPRET is read when a kernel is decorated (i.e. when
mlkd_fast.kernels is first imported), so it is set here, before any test
imports triton; an explicit TRITON_INTERPRET in the environment wins. With a
GPU the kernels compile for it and the CPU/interpreter cases skip. (The
interpreter needs numpy, a test dependency.)

The folder itself goes on sys.path, so test files in subfolders import the
shared modules (helpers, naive, tiny_bert) by name.
"""
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
