"""A model knows its task: finetune and distill record it (and the label names) in the saved config; evaluate
and distill refuse a model of another task unless told to allow it."""
import pytest
from tiny_bert import one_thread, tiny_bert, tokenized_dataset  # noqa: F401 (fixture)

from mlkd_fast import DistillConfig, FinetuneConfig, build_student, distill, evaluate, finetune
from mlkd_fast.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_recorded_task_is_checked(tmp_path):
    from transformers import AutoConfig

    teacher = tiny_bert(layers=2, hidden=32, heads=4)
    train, dev = tokenized_dataset(16), tokenized_dataset(8, seed=1)
    ft = finetune(teacher, train, eval_data=dev, task="mrpc", output_dir=str(tmp_path / "t"), progress=False,
                  config=FinetuneConfig(epochs=1, batch_size=8, device="cpu"))
    saved = AutoConfig.from_pretrained(ft.model_dir)
    assert saved.finetuning_task == "mrpc" and saved.id2label == {0: "0", 1: "1"}
    assert "accuracy" in evaluate(ft.model_dir, dev, task="mrpc", device="cpu")
    with pytest.raises(InputError, match=r"the model was trained for task 'mrpc' .*not 'rte'.*allow_other_task"):
        evaluate(ft.model_dir, dev, task="rte", device="cpu")
    assert "accuracy" in evaluate(ft.model_dir, dev, task="rte", device="cpu", allow_other_task=True)

    cfg = DistillConfig(stage1_epochs=1, stage2_epochs=1, batch_size=8, splits=4, device="cpu")
    student = build_student(teacher, 1, num_heads=2)
    with pytest.raises(InputError, match=r"the teacher was trained for task 'mrpc'"):
        distill(teacher, student, train, task="qnli", config=cfg, output_dir=str(tmp_path / "s0"), progress=False)
    result = distill(teacher, student, train, eval_data=dev, task="mrpc", config=cfg, output_dir=str(tmp_path / "s"),
                     progress=False)
    assert AutoConfig.from_pretrained(result.student_dir).finetuning_task == "mrpc"
    teacher.config.finetuning_task = "stsb"  # another tool's spelling of a task is compared by its meaning
    with pytest.raises(InputError, match=r"trained for task 'sts-b'"):
        evaluate(teacher, dev, task="mrpc", device="cpu")
    teacher.config.finetuning_task = "my-own-task"  # a name this library does not know: not compared
    assert "accuracy" in evaluate(teacher, dev, task="mrpc", device="cpu")
