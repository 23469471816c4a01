"""Run logs: progress as tqdm frames only on a terminal (plain lines in a file or pipe), and TensorBoard only
when asked for (report_to, as TrainingArguments has it)."""
import io

import pytest

from mlkd_fast import DistillConfig
from mlkd_fast.errors import InputError
from mlkd_fast.train.logs import LineProgress, progress_bar


def test_progress_in_a_file_is_plain_lines():
    stream = io.StringIO()
    bar = progress_bar(20, 0, "stage 1 epoch 1/1", True, stream=stream)
    assert isinstance(bar, LineProgress)
    for _ in range(20):
        bar.set_postfix({"loss": "0.5"})
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("stage 1 epoch 1/1: 20/20") and "loss=0.5" in lines[-1]
    assert "\r" not in stream.getvalue()
    resumed = io.StringIO()
    bar = progress_bar(20, 15, "x", True, stream=resumed)
    for _ in range(5):
        bar.update(1)
    assert resumed.getvalue().splitlines()[-1].startswith("x: 20/20")


def test_report_to_is_checked_and_tensorboard_off_by_default():
    assert DistillConfig().report_to == "none"
    with pytest.raises(InputError, match=r"report_to must be one of \['none', 'tensorboard'\], got 'wandb'"):
        DistillConfig(report_to="wandb").validate()
