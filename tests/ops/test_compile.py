"""The ops under torch.compile(fullgraph=True) on CPU: every op and CPU backend traces without a graph break
(the C++ kernels are torch.library custom ops with fake implementations and registered autograd), and the
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


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fullgraph_compile_equals_eager(op, backend):
    torch._dynamo.reset()
    fn = OPS[op](backend)
    t, s, m, ct, cs = _inputs()
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


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="the C++ extension is not built")
def test_opcheck_of_the_cpp_custom_ops():
    t, s, m, ct, cs = _inputs(2)
    ops = torch.ops.mlkd_fast
    torch.library.opcheck(ops.relation_kl_cpp.default, (t, s, 3, m))
    torch.library.opcheck(ops.relation_kl_cpp.default, (t, s, 3, None))
    anchors = torch.nn.functional.normalize(torch.cat([cs, cs.detach() + 1]), dim=1).detach().requires_grad_()
    ids = torch.tensor([0, 1, 0, 1, 2, 2] * 2)
    torch.library.opcheck(ops.sample_contrastive_cpp.default, (anchors, ids, 10.0, 0.5))
