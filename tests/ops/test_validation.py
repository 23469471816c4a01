"""Every bad input of the op contract (docs/kernels.md) raises the documented error, naming the argument."""
import pytest
import torch

import mlkd_fast as mf


def r(*shape):
    return torch.randn(*shape)


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        ((r(2, 5), r(2, 5, 4), 2), {}, ValueError, "teacher must be 3-D"),
        ((r(2, 5, 4), r(2, 5), 2), {}, ValueError, "student must be 3-D"),
        ((r(2, 5, 4), r(3, 5, 4), 2), {}, ValueError, r"agree on \(B, L\)"),
        ((r(2, 5, 4), r(2, 6, 4), 2), {}, ValueError, r"agree on \(B, L\)"),
        ((r(2, 5, 6), r(2, 5, 4), 4), {}, ValueError, "teacher hidden size 6 is not divisible by splits=4"),
        ((r(2, 5, 8), r(2, 5, 6), 4), {}, ValueError, "student hidden size 6 is not divisible by splits=4"),
        ((r(2, 5, 4), r(2, 5, 4), 0), {}, ValueError, "splits must be >= 1"),
        ((r(2, 5, 4), r(2, 5, 4), 2.0), {}, TypeError, "splits must be an int"),
        ((r(2, 5, 4), r(2, 5, 4), 2, torch.ones(2, 4)), {}, TypeError, "mask must be a bool or integer"),
        ((r(2, 5, 4), r(2, 5, 4), 2, torch.ones(2, 4, dtype=torch.bool)), {}, ValueError, r"mask must have shape \(B, L\)"),
        ((r(2, 5, 4), r(2, 5, 4), 2, [[1] * 5] * 2), {}, TypeError, "mask must be a torch.Tensor"),
        ((r(2, 5, 4).long(), r(2, 5, 4), 2), {}, TypeError, "teacher must be a floating-point"),
        (("x", r(2, 5, 4), 2), {}, TypeError, "teacher must be a torch.Tensor"),
        ((r(2, 5, 4), r(2, 5, 4), 2), {"backend": "cuda"}, ValueError, "backend must be one of"),
        ((r(2, 5, 4), r(2, 5, 4).to("meta"), 2), {}, ValueError, "same device"),
    ],
)
def test_relation_kl_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        mf.relation_kl(*args, **kwargs)


@pytest.mark.parametrize(
    "t,s,exc,match",
    [
        (r(4, 3, 2), r(4, 3), ValueError, "teacher must be 2-D"),
        (r(4, 3), r(5, 3), ValueError, "same batch size"),
        (r(4, 3), r(4, 3).int(), TypeError, "student must be a floating-point"),
    ],
)
def test_sample_relation_bad_input(t, s, exc, match):
    with pytest.raises(exc, match=match):
        mf.sample_relation_kl(t, s)


@pytest.mark.parametrize(
    "t,s,labels,kwargs,exc,match",
    [
        (r(4, 3), r(4, 5), None, {}, ValueError, "same width D"),
        (r(4, 3), r(3, 3), None, {}, ValueError, "same batch size"),
        (r(4, 3), r(4, 3), torch.tensor([0, 1, 0]), {}, ValueError, r"labels must have shape \(B,\)"),
        (r(4, 3), r(4, 3), torch.tensor([0.0, 1, 0, 1]), {}, TypeError, "labels must be an integer"),
        (r(4, 3), r(4, 3), None, {"temperature": 0.0}, ValueError, "temperature must be a finite number > 0"),
        (r(4, 3), r(4, 3), None, {"base_temperature": -1.0}, ValueError, "base_temperature must be"),
    ],
)
def test_sample_contrastive_bad_input(t, s, labels, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        mf.sample_contrastive(t, s, labels, **kwargs)


def test_soft_cross_entropy_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        mf.soft_cross_entropy(r(4, 3), r(4, 2))
    with pytest.raises(ValueError, match="reduction must be one of"):
        mf.soft_cross_entropy(r(4, 3), r(4, 3), reduction="sum")
    with pytest.raises(ValueError, match="temperature"):
        mf.soft_cross_entropy(r(4, 3), r(4, 3), temperature=-2.0)
    with pytest.raises(ValueError, match="teacher_logits must be 2-D"):
        mf.soft_cross_entropy(r(4), r(4, 3))


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    from mlkd_fast.ops import backends

    if backends.triton_kernels() is None:
        with pytest.raises(RuntimeError, match="triton is not importable"):
            mf.relation_kl(r(1, 3, 4), r(1, 3, 4), 2, backend="triton")
    else:
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            mf.relation_kl(r(1, 3, 4), r(1, 3, 4), 2, backend="triton")


def test_cpp_with_non_cpu_tensors_is_an_error():
    from mlkd_fast.ops import backends

    t = r(1, 3, 4).to("meta")
    if "cpp" in mf.available_backends():
        with pytest.raises(ValueError, match="CPU tensors only"):
            backends.resolve("cpp", t.device)
    else:
        with pytest.raises(RuntimeError, match="not available"):
            backends.resolve("cpp", t.device)
