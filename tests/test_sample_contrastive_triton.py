"""backend="triton" of sample_contrastive (L_SC) against the float64 reference.

CPU tensors run in the Triton interpreter (TRITON_INTERPRET=1, set by
conftest.py without a GPU), CUDA tensors when a GPU is present; each case
skips visibly where its device is missing. N = 2B = 80 anchors cross the
64-row and 64-column tiles; D = 312 and 768 cross the 64-wide head chunks.
"""
import pytest
import torch

import mlkd_fast as mf
from mlkd_fast.ops import reference

pytest.importorskip("triton")

from triton_devices import DEVICES  # noqa: E402

FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16
# (loss rel tol, grad tol as a fraction of the largest reference grad entry); the anchors are fp32
# whatever the input dtype, so the 16-bit error is the rounding of the returned gradient.
TOL = {FP32: (1e-5, 1e-4), FP16: (1e-4, 3e-3), BF16: (1e-4, 2e-2)}


def check(B, D, labels, dtype, device, tau=0.07, base=1.0, upstream=1.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(B, D, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    s = torch.randn(B, D, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    lab = None if labels is None else torch.as_tensor(labels).to(device)
    loss = mf.sample_contrastive(t, s, lab, temperature=tau, base_temperature=base, backend="triton")
    assert loss.dtype == torch.float32 and loss.dim() == 0
    loss.backward(torch.tensor(upstream, device=device))

    t64 = t.detach().double().requires_grad_(True)
    s64 = s.detach().double().requires_grad_(True)
    want = reference.sample_contrastive(t64, s64, lab, tau, base)
    want.backward(torch.tensor(upstream, dtype=torch.float64, device=device))
    rtol, gtol = TOL[dtype]
    assert loss.item() == pytest.approx(want.item(), rel=rtol, abs=1e-6)
    for name, got, ref in (("student", s.grad, s64.grad), ("teacher", t.grad, t64.grad)):
        assert got.dtype == dtype and torch.isfinite(got).all()
        err = (got.double() - ref).abs().max().item()
        scale = ref.abs().max().item()
        assert err <= gtol * scale + 1e-12, f"{name} grad: max error {err:.3g} vs largest entry {scale:.3g}"


def classes(B, n, seed=0):
    return torch.randint(0, n, (B,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "B,D,labels,dtype",
    [
        (1, 16, None, FP32),              # two anchors, each the other's only positive
        (5, 20, "3", FP32),               # D padded to 32
        (40, 312, "3", FP32),             # crosses row, column and head-chunk tiles
        (40, 100, None, FP16),            # regression task: the other view only
        (9, 768, "3", BF16),
        (6, 24, "same", FP32),            # every anchor positive with every other
    ],
)
def test_sample_contrastive_matches_reference(device, B, D, labels, dtype):
    lab = {None: None, "3": classes(B, 3), "same": torch.full((B,), 7)}[labels]
    check(B, D, lab, dtype, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tau,base", [(0.5, 0.07), (1.0, 1.0)])
def test_sample_contrastive_temperatures(device, tau, base):
    check(12, 48, classes(12, 4, seed=2), FP32, device, tau=tau, base=base, upstream=-0.6, seed=2)


@pytest.mark.parametrize("device", DEVICES)
def test_sample_contrastive_empty_batch_is_zero(device):
    t = torch.zeros(0, 8, device=device, requires_grad=True)
    loss = mf.sample_contrastive(t, t, backend="triton")
    loss.backward()
    assert loss.item() == 0.0 and t.grad.shape == (0, 8)


@pytest.mark.parametrize("device", DEVICES)
def test_sample_contrastive_rejects_fp64(device):
    t = torch.randn(3, 8, dtype=torch.float64, device=device)
    with pytest.raises(TypeError, match="fp32, fp16 or bf16"):
        mf.sample_contrastive(t, t, backend="triton")
