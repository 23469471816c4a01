"""Mixed precision for the training step: `precision` fp32 (default: no autocast), bf16 (autocast) or fp16
(autocast and a gradient scaler). The relation ops take the autocast dtype and accumulate in fp32."""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Optional

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("fp32", "bf16", "fp16")


class Precision:
    def __init__(self, name: str, device: torch.device):
        self.name = name
        self.device_type = device.type
        # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range and needs none
        self.scaler: Optional[torch.amp.GradScaler] = (
            torch.amp.GradScaler(device.type) if name == "fp16" else None
        )

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=DTYPES[self.name])

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer) -> None:
        """Gradients back in true units before they are averaged over ranks, clipped and checked."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> bool:
        """The optimiser step; with fp16 the scaler skips a step whose gradients overflowed. True if taken."""
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale

    @property
    def skips_overflow(self) -> bool:
        """An overflowing gradient is routine for fp16 (the scaler shrinks its scale), not a divergence."""
        return self.scaler is not None

    def state_dict(self) -> Dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


__all__ = ["Precision", "PRECISIONS"]
