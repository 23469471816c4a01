"""One rank of a 2-process MLKDTrainer run (launched by torchrun in tests/test_hf_trainer.py): tiny models,
gloo on CPU. Each rank saves its projections and student so the test can check they stayed identical."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_bert import tiny_bert, tokenized_dataset  # noqa: E402

from mlkd_fast import DistillConfig, build_student  # noqa: E402
from mlkd_fast.hf import MLKDTrainer  # noqa: E402


def main(out: str) -> None:
    from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast, TrainingArguments
    from tokenizers import Tokenizer, models

    teacher = tiny_bert(layers=4, hidden=32, heads=4)
    torch.manual_seed(1)
    student = build_student(teacher, 2, num_heads=2)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]")),
                                  pad_token="[PAD]")
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=4, max_steps=4, learning_rate=5e-3,
                             logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, ddp_backend="gloo",
                             seed=0, disable_tqdm=True)
    trainer = MLKDTrainer(model=student, teacher=teacher, args=args, train_dataset=tokenized_dataset(32),
                          data_collator=DataCollatorWithPadding(tok), distill_config=DistillConfig(splits=4))
    trainer.train()
    rank = int(os.environ["RANK"])
    torch.save({"projections": trainer.projections.state_dict(), "student": trainer.model.state_dict(),
                "world": trainer.args.world_size}, os.path.join(out, f"rank{rank}.pt"))
    # a clean end: transformers 5.0 leaves the gloo group open, and a rank exiting with its threads alive can
    # abort ("terminate called without an active exception"), about one run in three here
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
