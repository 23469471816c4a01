"""Start points for students with fewer heads (train/head_init.py): the head permutation leaves the teacher's
function unchanged, "scaled" gives each student head the mean of its merged teacher heads' logits, "grouped"
merges the heads that attend alike, and the refusals."""
import itertools
import math

import pytest
import torch
from tiny_bert import one_thread, tiny_bert, tokenized_dataset  # noqa: F401 (fixture)

from mlkd_fast import build_student
from mlkd_fast.data.batching import Collator
from mlkd_fast.errors import InputError
from mlkd_fast.train.capture import capture_features, split_heads
from mlkd_fast.train.encoders import encoder_layout
from mlkd_fast.train.head_init import attention_gap, best_grouping, head_similarity, permute_heads, resolve_head_init

pytestmark = pytest.mark.usefixtures("one_thread")


def _batches(n=2, seed=0):
    data = tokenized_dataset(16, seed=seed)
    collate = Collator(0)
    return [{k: v for k, v in collate([data[i] for i in range(s, s + 8)]).items() if k != "labels"}
            for s in range(0, 8 * n, 8)]


def _logits(model, batch, layer):
    q, k, _ = capture_features(model, batch, qkv=True).qkv[layer - 1]
    heads = encoder_layout(model).heads
    q, k = split_heads(q, heads), split_heads(k, heads)
    return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])


def test_permuting_heads_keeps_the_layer_function_and_moves_the_heads():
    teacher = tiny_bert(layers=2, hidden=32, heads=4).double().eval()
    batch = _batches(1)[0]
    before_out = teacher(**batch).logits
    before = _logits(teacher, batch, 1)
    permute_heads(teacher, 1, [2, 0, 3, 1])
    torch.testing.assert_close(teacher(**batch).logits, before_out, rtol=1e-12, atol=1e-12)
    after = _logits(teacher, batch, 1)
    torch.testing.assert_close(after, before[:, [2, 0, 3, 1]])  # new head i is old head order[i]
    with pytest.raises(InputError, match="permutation of 0..3"):
        permute_heads(teacher, 1, [0, 0, 1, 2])


def test_scaled_heads_start_at_the_mean_of_the_merged_teacher_logits():
    teacher = tiny_bert(layers=2, hidden=32, heads=4).double().eval()
    batch = _batches(1)[0]
    t = _logits(teacher, batch, 1)  # (B, 4, L, L); student layer 1 = teacher layer 1: the same input
    merged_sum = t.view(t.shape[0], 2, 2, *t.shape[2:]).sum(2)
    concat = build_student(teacher, 1, num_heads=2, layer_map=[1]).double().eval()
    scaled = build_student(teacher, 1, num_heads=2, layer_map=[1], head_init="scaled").double().eval()
    torch.testing.assert_close(_logits(concat, batch, 1), merged_sum / math.sqrt(2))
    torch.testing.assert_close(_logits(scaled, batch, 1), merged_sum / 2)
    # same head count: every start is the plain copy
    same = build_student(teacher, 1, num_heads=4, layer_map=[2], head_init="scaled")
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(),
                                                 build_student(teacher, 1, num_heads=4, layer_map=[2]).state_dict().values()))


def test_grouped_merges_heads_that_attend_alike_and_reorders_the_teacher():
    teacher = tiny_bert(layers=2, hidden=32, heads=4).double().eval()
    layout, d = encoder_layout(teacher), 8
    with torch.no_grad():  # layer 1: peaked maps (a random tiny BERT's are near uniform); head 3 is a copy of
        for lin in layout.qkv[0][:2]:  # head 0 (Q and K), head 2 of head 1
            lin.weight.mul_(10)
            lin.weight[3 * d:4 * d] = lin.weight[0:d]
            lin.bias[3 * d:4 * d] = lin.bias[0:d]
            lin.weight[2 * d:3 * d] = lin.weight[d:2 * d]
            lin.bias[2 * d:3 * d] = lin.bias[d:2 * d]
    batches = _batches()
    sim = head_similarity(teacher, batches, [1])[1]
    assert sim[0, 3] == pytest.approx(1.0, abs=1e-5) and sim[1, 2] == pytest.approx(1.0, abs=1e-5)
    assert sorted(map(sorted, [best_grouping(sim, 2)[:2], best_grouping(sim, 2)[2:]])) == [[0, 3], [1, 2]]
    reference = teacher(**batches[0]).logits
    plain = build_student(teacher, 1, num_heads=2, layer_map=[1]).double()
    gap_concat = attention_gap(teacher, plain, batches, [1])
    grouped = build_student(teacher, 1, num_heads=2, layer_map=[1], head_init="grouped", sample=batches).double()
    torch.testing.assert_close(teacher(**batches[0]).logits, reference, rtol=1e-12, atol=1e-12)  # same function
    kl, rel = attention_gap(teacher, grouped, batches, [1])
    assert kl < 1e-8 and rel < 1e-6  # alike heads merged at mean logits: each student map is the teacher's
    assert gap_concat[0] > 1e-3


def test_best_grouping_is_the_exhaustive_optimum():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(6, 6, generator=g)
    sim = a + a.T
    order = best_grouping(sim, 3)
    score = lambda o: sum(float(sim[x, y]) for b in (o[0:2], o[2:4], o[4:6]) for x, y in itertools.combinations(b, 2))  # noqa: E731
    assert score(order) == pytest.approx(max(score(list(p)) for p in itertools.permutations(range(6))))


def test_head_init_refusals():
    teacher = tiny_bert(layers=2, hidden=36, heads=6)
    with pytest.raises(InputError, match="head_init must be one of"):
        build_student(teacher, 1, num_heads=3, head_init="mean")
    with pytest.raises(InputError, match="needs init='teacher'"):
        build_student(teacher, 1, num_heads=3, head_init="scaled", init="random")
    with pytest.raises(InputError, match="student's 4 heads must divide the teacher's 6"):
        build_student(tiny_bert(layers=2, hidden=48, heads=6), 1, num_heads=4, head_init="scaled")
    with pytest.raises(InputError, match="needs sample batches"):
        build_student(teacher, 1, num_heads=3, head_init="grouped")


def test_auto_is_grouped_where_it_applies_else_concat():
    teacher = tiny_bert(layers=2, hidden=32, heads=4).double().eval()
    batches = _batches()
    assert resolve_head_init(teacher, "auto", 2, "teacher", batches) == "grouped"
    assert resolve_head_init(teacher, "auto", 2, "teacher", None) == "concat"  # nothing to compare the heads on
    assert resolve_head_init(teacher, "auto", 4, "teacher", batches) == "concat"  # equal heads: nothing to re-split
    assert resolve_head_init(teacher, "auto", 8, "teacher", batches) == "concat"  # more heads
    assert resolve_head_init(teacher, "auto", 2, "random", batches) == "concat"
    assert resolve_head_init(tiny_bert(layers=2, hidden=48, heads=6), "auto", 4, "teacher", batches) == "concat"
    assert resolve_head_init(teacher, "scaled", 2, "teacher", None) == "scaled"  # a named start is kept
    # the default start, with and without sample batches, is the named one's to the weight
    for sample, named in ((batches, "grouped"), (None, "concat")):
        t1, t2 = (tiny_bert(layers=2, hidden=32, heads=4).double().eval() for _ in range(2))
        auto = build_student(t1, 1, num_heads=2, layer_map=[1], sample=sample)
        explicit = build_student(t2, 1, num_heads=2, layer_map=[1], head_init=named, sample=sample)
        for (k, a), (_, b) in zip(auto.state_dict().items(), explicit.state_dict().items()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
        for (k, a), (_, b) in zip(t1.state_dict().items(), t2.state_dict().items()):  # the teacher reordered alike
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
