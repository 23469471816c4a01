"""Fine-tuning (the teacher's task training): it learns, and a resumed run equals the uninterrupted one."""
import pytest
import torch
from tiny_bert import Crash, crash_at_save, one_thread, tiny_bert, tokenized_dataset  # noqa: F401 (fixture)

from mlkd_fast import FinetuneConfig, finetune

pytestmark = pytest.mark.usefixtures("one_thread")


def test_finetune_learns_and_resumes_exactly(tmp_path, monkeypatch):
    train, dev = tokenized_dataset(16), tokenized_dataset(8, seed=4)
    cfg = FinetuneConfig(epochs=3, batch_size=8, learning_rate=1e-3, checkpoint_every=1, device="cpu")
    ref = finetune(tiny_bert(layers=2), train, eval_data=dev, task="mrpc", config=cfg, output_dir=str(tmp_path / "ref"), progress=False)
    assert [h["epoch"] for h in ref.history] == [1, 2, 3] and ref.history[-1]["loss"] < ref.history[0]["loss"]
    with crash_at_save(monkeypatch, 4) as crash:
        finetune(tiny_bert(layers=2), train, eval_data=dev, task="mrpc", config=cfg, output_dir=str(tmp_path / "run"), progress=False)
    assert len(crash.calls) == 4
    model = tiny_bert(layers=2)
    res = finetune(model, train, eval_data=dev, task="mrpc", config=cfg, output_dir=str(tmp_path / "run"), resume=True, progress=False)
    assert res.history == ref.history
    from transformers import AutoModelForSequenceClassification

    a = AutoModelForSequenceClassification.from_pretrained(ref.model_dir).state_dict()
    b = AutoModelForSequenceClassification.from_pretrained(res.model_dir).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
