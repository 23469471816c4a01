"""build_student: teacher-initialised copies (any head count), random init, and every bad shape."""
import pytest
import torch
from tiny_bert import one_thread, tiny_bert  # noqa: F401 (fixture)

from mlkd_fast import build_student

pytestmark = pytest.mark.usefixtures("one_thread")


def _layer(model, i):
    return {k: v for k, v in model.bert.encoder.layer[i].state_dict().items()}


def test_teacher_init_copies_the_uniformly_mapped_layers_with_fewer_heads():
    teacher = tiny_bert(layers=4, hidden=32, heads=4)
    student = build_student(teacher, 2, num_heads=2)
    assert type(student) is type(teacher)
    assert student.config.num_hidden_layers == 2 and student.config.num_attention_heads == 2
    assert student.config.hidden_size == 32 and teacher.config.num_attention_heads == 4
    for n, m in enumerate((2, 4)):  # uniform map 4 -> 2: layers 2 and 4 (1-based)
        s, t = _layer(student, n), _layer(teacher, m - 1)
        assert s.keys() == t.keys() and all(torch.equal(s[k], t[k]) for k in s)
    for name in ("bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight", "classifier.weight"):
        assert torch.equal(student.state_dict()[name], teacher.state_dict()[name])
    # the copy is a copy: training the student leaves the teacher alone
    student.bert.embeddings.word_embeddings.weight.data.add_(1.0)
    assert not torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)


def test_explicit_layer_map_and_full_copy_reproduces_the_teacher():
    teacher = tiny_bert(layers=4, hidden=32, heads=4).eval()
    student = build_student(teacher, 2, layer_map=(1, 3))
    assert torch.equal(_layer(student, 1)["output.dense.weight"], _layer(teacher, 2)["output.dense.weight"])
    same = build_student(teacher, 4).eval()  # all layers, same heads: the same function
    ids = torch.randint(5, 64, (2, 7))
    torch.testing.assert_close(same(input_ids=ids).logits, teacher(input_ids=ids).logits)


def test_random_init_narrower_student():
    teacher = tiny_bert(layers=4, hidden=64, heads=4, intermediate=128)
    student = build_student(teacher, 2, hidden_size=32, num_heads=1, intermediate_size=48, init="random")
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (2, 32, 1, 48)
    assert c.num_labels == teacher.config.num_labels
    assert teacher.config.hidden_size == 64  # the teacher's config is untouched


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(num_layers=2, num_heads=3), ValueError, "num_heads=3 does not divide hidden_size=32"),
        (dict(num_layers=2, hidden_size=30, init="random"), ValueError, "not divisible by the teacher's 4 heads"),
        (dict(num_layers=2, hidden_size=16, num_heads=2), ValueError, "init='teacher' copies teacher weights"),
        (dict(num_layers=2, intermediate_size=32), ValueError, "init='teacher' copies teacher weights"),
        (dict(num_layers=3), ValueError, "not a multiple"),
        (dict(num_layers=2, layer_map=(1, 5)), ValueError, "teacher layers in 1..4"),
        (dict(num_layers=2, layer_map=(3, 2)), ValueError, "strictly increasing"),
        (dict(num_layers=2, layer_map=(2,)), ValueError, "one teacher layer per student layer"),
        (dict(num_layers=0), ValueError, "num_layers must be >= 1"),
        (dict(num_layers=2.0), TypeError, "num_layers must be an int"),
        (dict(num_layers=2, init="copy"), ValueError, "init must be 'teacher' or 'random'"),
    ],
)
def test_bad_student_shapes_are_rejected(kwargs, exc, match):
    teacher = tiny_bert(layers=4, hidden=32, heads=4)
    with pytest.raises(exc, match=match):
        build_student(teacher, **kwargs)


def test_non_transformers_teacher_is_rejected():
    with pytest.raises(TypeError, match="transformers model"):
        build_student(torch.nn.Linear(2, 2), 2)
