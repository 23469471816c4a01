"""Pieces shared by the Triton relation kernels: launch configuration and tile helpers.

Configuration is a small heuristic per shape instead of `@triton.autotune`:
autotuning with several configs cannot run under the Triton interpreter
(it times configs through the driver), and the relation shapes are few and
regular (heads cut into 16..64-wide chunks, L from 1 to tens of thousands).

All scores inside the kernels are kept in base-2 units (natural logit times
log2(e)) so that the softmaxes use exp2/log2, the fast hardware functions;
results are converted back to natural units (times LN2) before they leave a kernel.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # natural logits -> base-2 units (host side, folded into the score scale)
LN2 = tl.constexpr(0.6931471805599453)  # base-2 units -> nats (inside the kernels)
# Running maxima start here instead of -inf so that a tile whose keys are all
# masked gives exp2(-inf - NEG_INIT) = 0 and never exp2(-inf + inf) = nan.
NEG_INIT = tl.constexpr(-1.0e30)

# tl.dot needs every tile dimension >= 16; head widths are padded up to a power
# of two >= 16 and processed in chunks of at most MAX_BLOCK_D columns so that
# wide single-split relations (L_EMB: d = 768) never need huge register tiles.
MIN_BLOCK = 16
MAX_BLOCK_D = 64

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """True when kernels run in the Triton interpreter (read when the kernels are launched)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_dtypes(**tensors: torch.Tensor) -> None:
    """The kernels accumulate in fp32 and take fp32/fp16/bf16 inputs; fp64 is the CPU backends' job."""
    for name, t in tensors.items():
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"backend='triton' takes fp32, fp16 or bf16 {name}, got {t.dtype} "
                "(fp64 runs on backend='torch' or 'cpp')"
            )


def pow2_at_least(n: int, lo: int = MIN_BLOCK) -> int:
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


@dataclass(frozen=True)
class HeadTiling:
    """How one head width d is cut: chunks of `block` columns (a power of two >= 16), `chunks` of them."""

    block: int
    chunks: int


def head_tiling(d: int) -> HeadTiling:
    block = min(pow2_at_least(d), MAX_BLOCK_D)
    return HeadTiling(block, math.ceil(d / block))


def dot_flags(*tensors: torch.Tensor):
    """(DOT_F32, PRECISION): how the kernels call tl.dot for these inputs.

    DOT_F32: upcast tiles to fp32 before tl.dot. Needed only in the interpreter,
    whose bf16 dot is wrong; on a GPU bf16/fp16 tiles go to the tensor cores as they are.
    PRECISION for fp32 operands: "tf32x3" (three tf32 products, about fp32
    accuracy at tensor-core speed) on Ampere and newer, "ieee" elsewhere; the
    interpreter computes fp32 products in numpy whatever is asked.
    """
    interp = interpreting()
    dot_f32 = interp and any(t.dtype == torch.bfloat16 for t in tensors)
    precision = "ieee"
    if not interp and torch.cuda.is_available():
        major, _ = torch.cuda.get_device_capability(tensors[0].device)
        if major >= 8:
            precision = "tf32x3"
    return dot_f32, precision


@dataclass(frozen=True)
class Blocks:
    """Launch configuration of one kernel: query rows per program, keys per step, warps, pipeline stages."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def relation_blocks(L: int, widths, itemsize: int, backward: bool, chunked: bool = False) -> Blocks:
    """Tile sizes for an L x L relation whose tiles carry head chunks of the given padded widths.

    Interpreter: 64 x 64 tiles. Its cost is per program and per tile
    operation, nearly whatever the tile size, so the largest tiles that still
    leave the test shapes (L = 70) several tiles in each direction.
    GPU: chosen from the register use and spills that ptxas reports for
    sm_90 at the headline shape (d = 64 and 26). "Light" steps (at most 256
    bytes of head columns per row, e.g. bf16 64 + 32, or 64 + 32 + 32 in the
    student backward) take 128 x 64 (forward) or 64 x 64 (backward) tiles on
    8 warps with no spills; heavier ones (fp32, whose tf32x3 products need
    more registers, or the teacher backward) take 64 x 64 forward / 64 x 32
    backward tiles, again spill-free. Heads wider than one chunk (d > 64:
    L_EMB, L_SS, L_SC) loop over chunks inside every key step and spill
    least with 64 x 64 tiles on 8 warps.
    """
    cap = pow2_at_least(L)
    if interpreting():
        b = min(64, cap)
        return Blocks(b, b, 4, 1)
    light = sum(widths) * itemsize <= 256
    if chunked:
        bm, bn, warps = 64, 64, 8
    elif backward:
        bm, bn, warps = (64, 64, 8) if light else (64, 32, 4)
    else:
        bm, bn, warps = (128, 64, 8) if light else (64, 64, 8)
    bm, bn = min(bm, cap), min(bn, cap)
    if bm * bn < 64 * 64:  # short sequences: small tiles need fewer warps
        warps = 4
    return Blocks(bm, bn, warps, 2)


def device_function(fn):
    """@triton.jit for helpers that kernels call; the plain function under the interpreter.

    The interpreter re-patches triton.language on every call of a jitted
    helper (milliseconds a call, most of the test time); a plain function runs
    the same tl operations inside the interpreted kernel. Decided when the
    module is imported, as triton.jit itself decides on TRITON_INTERPRET.
    """
    return fn if interpreting() else triton.jit(fn)


@device_function
def tile_scores(q_base, k_base, rows, cols, row_ok, col_ok, stride_l, stride_d, d, q_pre,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                D_CHUNKS: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """X[rows] . X[cols]^T over the d columns starting at q_base / k_base, as a (BLOCK_M, BLOCK_N) fp32 tile.

    Columns beyond d and rows/cols outside the sequence load as zeros. A head
    of one chunk uses the query tile the caller loaded once (q_pre); wider
    heads loop over chunks at run time (a loop the compiler unrolls would keep
    every chunk's tiles in shared memory at once: > 200 KB at d = 768).
    """
    dk = tl.arange(0, BLOCK_D)
    if D_CHUNKS == 1:
        k = tl.load(k_base + cols[:, None] * stride_l + dk[None, :] * stride_d,
                    mask=col_ok[:, None] & (dk < d)[None, :], other=0.0)
        q = q_pre
        if DOT_F32:
            q = q.to(tl.float32)
            k = k.to(tl.float32)
        acc = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for c in range(D_CHUNKS):
            dc = c * BLOCK_D + dk
            d_ok = dc < d
            q = tl.load(q_base + rows[:, None] * stride_l + dc[None, :] * stride_d,
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            k = tl.load(k_base + cols[:, None] * stride_l + dc[None, :] * stride_d,
                        mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            if DOT_F32:
                q = q.to(tl.float32)
                k = k.to(tl.float32)
            acc = tl.dot(q, tl.trans(k), acc, input_precision=PRECISION)
    return acc


@device_function
def load_rows(base, rows, row_ok, stride_l, stride_d, d, BLOCK_D: tl.constexpr, D_CHUNKS: tl.constexpr):
    """The (rows, first BLOCK_D columns) tile when the head is a single chunk (the q_pre of tile_scores)."""
    dk = tl.arange(0, BLOCK_D)
    if D_CHUNKS == 1:
        q = tl.load(base + rows[:, None] * stride_l + dk[None, :] * stride_d,
                    mask=row_ok[:, None] & (dk < d)[None, :], other=0.0)
    else:
        q = tl.zeros((1, BLOCK_D), dtype=tl.float32)  # unused placeholder: tile_scores reloads per chunk
    return q
