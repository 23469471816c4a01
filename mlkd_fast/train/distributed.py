"""Data parallelism on the engines users already run: torchrun / accelerate launch set the usual env://
variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and `Dist.from_env` joins that group
(NCCL on GPUs, gloo on CPUs, one device per rank). Single-process runs get a `Dist` whose operations are
identities, so the loop reads the same either way.

What makes a distributed run the same optimisation as a single process on the global batch:
- each global batch (batch_size rows of the seeded order) is split into contiguous per-rank shards;
- every loss term says what it averages over (`unit` in the loss registry): a per-rank "token" or "sample"
  mean is rescaled by its rank's share of the global count, so that DDP-style gradient averaging yields the
  gradient of the global mean; "global" terms (the sample relations L_SS, L_SC) are computed on features
  gathered from every rank, with gradients flowing back to each rank's own rows;
- gradients are averaged over ranks after every backward (one all-reduce per dtype).
"""
from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

import torch
import torch.distributed as dist

from mlkd_fast.errors import InputError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: Optional[torch.device] = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device, timeout_s: float = 1800.0) -> "Dist":
        """Join the process group the launcher described in the environment, or use the one the caller already
        initialised; one process when there is neither."""
        world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:  # a group the caller already joined counts too (e.g. the Python API under mp.spawn)
            return cls(0, 1, device)
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if dist.get_rank() == 0:
            print(f"mlkd_fast: data parallel over {dist.get_world_size()} ranks ({dist.get_backend()})", file=sys.stderr)
        return cls(dist.get_rank(), dist.get_world_size(), device)

    # ------------------------------------------------------------------ collectives (identities on one process)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over ranks (a copy; the input is left alone)."""
        if not self.enabled:
            return values
        out = values.clone()
        dist.all_reduce(out)
        return out

    def shares(self, local_counts: Dict[str, float]) -> Dict[str, float]:
        """For each count, this rank's count over the mean count per rank: the factor that turns a per-rank mean
        into this rank's part of the global mean once gradients are averaged over ranks. One all-reduce for all
        of them; {} on one process (no rescaling)."""
        if not self.enabled:
            return {}
        keys = sorted(local_counts)
        local = torch.tensor([float(local_counts[k]) for k in keys], dtype=torch.float64, device=self.device)
        total = self.sum(local)
        return {k: float(local[i]) * self.world / float(total[i]) if total[i] > 0 else 0.0 for i, k in enumerate(keys)}

    def gather_rows(self, x: torch.Tensor, differentiable: bool = True) -> torch.Tensor:
        """The rows of every rank, in rank order; gradients flow back to each rank's own rows."""
        if not self.enabled:
            return x
        sizes = [torch.zeros(1, dtype=torch.int64, device=x.device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device))
        if len({int(s) for s in sizes}) != 1:
            raise InputError(f"ranks hold different batch sizes {[int(s) for s in sizes]}: shards must be equal")
        if differentiable and x.requires_grad:
            import torch.distributed.nn.functional as dnn

            return torch.cat(dnn.all_gather(x), dim=0)
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    def average_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """grad <- mean over ranks, one flat all-reduce per dtype (what DDP's reducer does, without overlap)."""
        if not self.enabled:
            return
        groups: Dict[torch.dtype, List[torch.Tensor]] = {}
        for p in params:
            if p.grad is not None:
                groups.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in groups.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= self.world
            offset = 0
            for g in grads:
                g.copy_(flat[offset: offset + g.numel()].view_as(g))
                offset += g.numel()

    def mean(self, values: Dict[str, float], extra: float = 0.0):
        """(the mean over ranks of each value, the sum over ranks of `extra`): one all-reduce."""
        if not self.enabled:
            return values, extra
        keys = sorted(values)
        vec = torch.tensor([values[k] for k in keys] + [extra], dtype=torch.float64, device=self.device)
        vec = self.sum(vec)
        return {k: float(vec[i]) / self.world for i, k in enumerate(keys)}, float(vec[-1])

    def gather_objects(self, obj) -> list:
        """Every rank's object, in rank order (on every rank)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Rank 0's object on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def leave_process_group() -> None:
    """End of a process that joined a group: every rank waits for the others, then the group is destroyed.
    Without it each rank tears its gloo connections down at interpreter exit, possibly while another rank is
    still finishing (rank 0 saves and evaluates last), and gloo aborts that rank (SIGABRT, "terminate called
    without an active exception"). Only for a normal end: after an error the other ranks may never arrive."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def check_global_batch(batch_size: int, dist: Dist, accum: int = 1) -> None:
    """batch_size is the global batch: it must split evenly over the ranks and their micro-batches (the same
    optimisation on any world size)."""
    if batch_size % (dist.world * accum):
        raise InputError(f"batch_size={batch_size} is the global batch and must be divisible by the {dist.world} "
                         f"ranks x {accum} micro-batches")


SINGLE = Dist()

__all__ = ["Dist", "SINGLE", "check_global_batch"]
