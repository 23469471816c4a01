"""The ops under torch.compile(fullgraph=True) on CPU: every op and CPU backend traces without a graph break
(each fused op is one torch.library custom op over its table of backends, cpp and triton, with per-backend
fake implementations and one registered autograd; triton here under the interpreter), and the
compiled loss and gradients equal the eager ones. torch.library.opcheck checks each custom op's registration."""
import pytest
import torch

import mlkd_fast as mf

CPU_BACKENDS = ["torch"] + (["cpp"] if "cpp" in mf.available_backends() else [])


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    return r(2, 7, 24), r(2, 7, 12).requires_grad_(), mask, r(6, 24), r(6, 12).requires_grad_()


OPS = {
    "relation_kl": lambda b: lambda t, s, m, ct, cs: mf.relation_kl(t, s, 3, m, backend=b),
    "sample_relation_kl": lambda b: lambda t, s, m, ct, cs: mf.sample_relation_kl(ct, cs, backend=b),
    "sample_contrastive": lambda b: lambda t, s, m, ct, cs: mf.sample_contrastive(
        ct, torch.nn.functional.pad(cs, (0, 12)), torch.tensor([0, 1, 0, 1, 2, 2]), temperature=0.1, backend=b),
    "sample_contrastive_views": lambda b: lambda t, s, m, ct, cs: mf.sample_contrastive(
        ct, torch.nn.functional.pad(cs, (0, 12)), None, backend=b),
    "soft_cross_entropy": lambda b: lambda t, s, m, ct, cs: mf.soft_cross_entropy(ct[:, :5], cs[:, :5], temperature=2.0),
}


INTERPRETED = mf.ops.backends.triton_kernels() is not None and mf.ops.backends.triton_interpreter()


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("backend", CPU_BACKENDS + (["triton"] if INTERPRETED else []))
def test_fullgraph_compile_equals_eager(op, backend):
    torch._dynamo.reset()
    fn = OPS[op](backend)
    t, s, m, ct, cs = _inputs()
    if backend == "triton":  # the Triton kernels (here under the interpreter) take fp32/fp16/bf16
        t, s, ct, cs = (x.detach().float().requires_grad_(x.requires_grad) for x in (t, s, ct, cs))
    eager = fn(t, s, m, ct, cs)
    g_eager = torch.autograd.grad(eager, [s, cs], allow_unused=True)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(t, s, m, ct, cs)
    g_compiled = torch.autograd.grad(compiled, [s, cs], allow_unused=True)
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_compiled, g_eager):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="the C++ extension is not built")
def test_inductor_compiles_around_the_cpp_op():
    torch._dynamo.reset()
    t, s, m, _, _ = _inputs(1)
    fn = lambda t, s, m: 2.0 * mf.relation_kl(t.float(), s.float(), 3, m, backend="cpp")  # noqa: E731
    eager = fn(t, s, m)
    compiled = torch.compile(fn, fullgraph=True)(t, s, m)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.autograd.grad(compiled, s)[0], torch.autograd.grad(eager, s)[0], rtol=1e-5,
                               atol=1e-7)


FUSED_CPU = [b for b in ("cpp", "triton") if b in CPU_BACKENDS or (b == "triton" and INTERPRETED)]


@pytest.mark.parametrize("backend", FUSED_CPU)
def test_opcheck_of_the_fused_custom_ops(backend):
    """Each op's one custom op, per backend of its table (triton: under the interpreter, on CPU tensors):
    schema, fake shapes, autograd registration."""
    t, s, m, ct, cs = _inputs(2)
    dtype = torch.float32 if backend == "triton" else torch.float64  # the Triton kernels take no fp64
    t, s, cs = t.to(dtype), s.detach().to(dtype).requires_grad_(), cs.detach().to(dtype)
    ops = torch.ops.mlkd_fast
    torch.library.opcheck(ops.relation_kl_fused.default, (t, s, 3, m, backend))
    torch.library.opcheck(ops.relation_kl_fused.default, (t, s, 3, None, backend))
    anchors = torch.nn.functional.normalize(torch.cat([cs, cs + 1]), dim=1).detach().requires_grad_()
    ids = torch.tensor([0, 1, 0, 1, 2, 2] * 2)
    torch.library.opcheck(ops.sample_contrastive_fused.default, (anchors, ids, 10.0, 0.5, backend))
