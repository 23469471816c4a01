"""Property tests (hypothesis) of the relation ops on every backend: random shapes, padding with garbage
(NaN, inf, huge values) at the padded positions, scales from 1e-4 to 1e4, fp32 and fp64. The loss and the
gradients are finite and agree with the float64 reference on the same (cleaned) inputs."""
import math

import pytest
import torch
from helpers import BACKENDS, FP32, FP64, interpreted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlkd_fast as mf

GARBAGE = {"zeros": 0.0, "nan": float("nan"), "inf": float("inf"), "huge": 3e38}


@st.composite
def relation_case(draw):
    B, L = draw(st.integers(1, 3)), draw(st.integers(1, 24))
    splits = draw(st.sampled_from([1, 2, 3]))
    return dict(
        B=B, L=L, splits=splits, dt=splits * draw(st.integers(1, 8)), ds=splits * draw(st.integers(1, 8)),
        lengths=draw(st.lists(st.integers(0, L), min_size=B, max_size=B)),
        scale=10.0 ** draw(st.floats(-4, 4)), garbage=draw(st.sampled_from(sorted(GARBAGE))),
        seed=draw(st.integers(0, 2**31 - 1)), dtype=draw(st.sampled_from([FP32, FP64])),
    )


@st.composite
def contrastive_case(draw):
    B = draw(st.integers(1, 20))
    return dict(B=B, D=draw(st.integers(1, 40)), classes=draw(st.sampled_from([0, 1, 2, 5])),
                scale=10.0 ** draw(st.floats(-4, 4)), seed=draw(st.integers(0, 2**31 - 1)),
                tau=draw(st.sampled_from([0.05, 0.07, 0.5, 1.0])), dtype=draw(st.sampled_from([FP32, FP64])))


def _settings(backend, device):
    """Derandomised examples, fewer for the interpreter (every Triton program runs in Python there)."""
    return settings(max_examples=15 if interpreted(backend, device) else 120, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


def _relation(case, backend, device):
    g = torch.Generator().manual_seed(case["seed"])
    dtype = FP32 if backend == "triton" else case["dtype"]
    mask = torch.arange(case["L"])[None, :] < torch.tensor(case["lengths"])[:, None]
    xs = []
    for d in (case["dt"], case["ds"]):
        x = torch.randn(case["B"], case["L"], d, generator=g, dtype=FP64) * case["scale"]
        x[~mask] = GARBAGE[case["garbage"]]
        xs.append(x)
    clean = [x.masked_fill(~mask[..., None], 0.0) for x in xs]
    t, s = (x.to(device, dtype).clone().requires_grad_() for x in xs)
    loss = mf.relation_kl(t, s, case["splits"], mask.to(device), backend=backend)
    loss.backward()
    t64, s64 = (x.clone().requires_grad_() for x in clean)
    want = mf.relation_kl(t64, s64, case["splits"], mask, backend="torch")
    want.backward()
    return loss, want, (t.grad, s.grad), (t64.grad, s64.grad), dtype


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_relation_kl_properties(backend, device):
    @_settings(backend, device)
    @given(relation_case())
    def check(case):
        loss, want, grads, want_grads, dtype = _relation(case, backend, device)
        assert math.isfinite(loss.item()) and loss.item() >= -1e-6
        assert all(torch.isfinite(g).all() for g in grads), "non-finite gradient"
        tol = 1e-9 if dtype == FP64 else 2e-3
        assert loss.item() == pytest.approx(want.item(), rel=tol, abs=tol * max(1.0, case["scale"] ** 2))
        if case["scale"] <= 10:  # beyond, fp32 relations are one-hot and their gradients cancel to rounding
            for g, w in zip(grads, want_grads):
                err = (g.double().cpu() - w).abs().max().item() if g.numel() else 0.0
                assert err <= 100 * tol * max(1e-6, w.abs().max().item())

    check()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_sample_contrastive_properties(backend, device):
    @_settings(backend, device)
    @given(contrastive_case())
    def check(case):
        g = torch.Generator().manual_seed(case["seed"])
        dtype = FP32 if backend == "triton" else case["dtype"]
        t, s = (torch.randn(case["B"], case["D"], generator=g, dtype=FP64) * case["scale"] for _ in range(2))
        labels = torch.randint(0, case["classes"], (case["B"],), generator=g) if case["classes"] else None
        tt, ss = (x.to(device, dtype).clone().requires_grad_() for x in (t, s))
        loss = mf.sample_contrastive(tt, ss, None if labels is None else labels.to(device), temperature=case["tau"],
                                     backend=backend)
        loss.backward()
        t64, s64 = t.clone().requires_grad_(), s.clone().requires_grad_()
        want = mf.sample_contrastive(t64, s64, labels, temperature=case["tau"], backend="torch")
        want.backward()
        tol = 1e-9 if dtype == FP64 else 1e-4
        assert math.isfinite(loss.item()) and loss.item() == pytest.approx(want.item(), rel=tol, abs=tol)
        for got, ref in ((tt.grad, t64.grad), (ss.grad, s64.grad)):
            assert torch.isfinite(got).all()
            assert (got.double().cpu() - ref).abs().max().item() <= 100 * tol * max(1e-3, ref.abs().max().item())

    check()
