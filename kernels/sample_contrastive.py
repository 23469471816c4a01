"""Fused supervised two-view contrastive loss L_SC on GPUs (backend="triton").

    forward(x (N, D) fp32, ids (N,) long, 1 / tau, tau / base_tau) -> (loss 0-dim fp32, stats (2, N): LSE, |P|)
    backward(x, ids, stats, grad, 1 / tau, tau / base_tau) -> d x
The op mlkd_fast::sample_contrastive_fused (mlkd_fast/ops/sample_contrastive.py) calls these as its "triton"
backend; the anchors are built there:

Anchors X = [normalize(student); normalize(teacher)] (N = 2B rows, fp32; the
normalisation and concatenation are O(N D) torch ops whose backward autograd
provides). Logits z_ij = X_i . X_j / tau are never stored:

Forward, one program per block of anchors, one pass over column tiles: an
online log-sum-exp over j != i plus the sum and the count of the positive
logits (same id, j != i), so loss_i = LSE_i - sum_pos_i / |P(i)|.
L_SC = (tau / base_tau) mean_i loss_i. Saved: LSE_i and |P(i)| per anchor.

Backward: d L / d z_ij = g (softmax_ij [j != i] - [j in P(i)] / |P(i)|) =: G_ij,
g = upstream * (tau / base_tau) / N, and dX = (G + G^T) X / tau. As in the
relation kernel, z is symmetric, so the tile X_R X_C^T gives both the rows'
share (normalised by row statistics) and the columns' share (by column
statistics): one program per block of rows owns its output, no atomics.
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from mlkd_fast.kernels._common import LN2, LOG2E, NEG_INIT, dot_flags
from mlkd_fast.kernels._common import head_tiling, load_rows, relation_blocks, tile_scores


@triton.jit
def _contrastive_fwd(
    x_ptr, ids_ptr, loss_ptr, lse_ptr, cnt_ptr,
    N, D, sx_n, sx_d, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D_CHUNKS: tl.constexpr,
    DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    id_r = tl.load(ids_ptr + rows, mask=row_ok, other=0)
    q = load_rows(x_ptr, rows, row_ok, sx_n, sx_d, D, BLOCK_D, D_CHUNKS)

    m = tl.full((BLOCK_M,), NEG_INIT, dtype=tl.float32)
    l = tl.zeros((BLOCK_M,), dtype=tl.float32)
    pos_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    pos_cnt = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        id_c = tl.load(ids_ptr + cols, mask=col_ok, other=0)
        z = tile_scores(x_ptr, x_ptr, rows, cols, row_ok, col_ok, sx_n, sx_d, D, q,
                        BLOCK_M, BLOCK_N, BLOCK_D, D_CHUNKS, DOT_F32, PRECISION) * scale
        other = col_ok[None, :] & (rows[:, None] != cols[None, :])
        pos = other & (id_r[:, None] == id_c[None, :])
        zo = tl.where(other, z, float("-inf"))
        m_new = tl.maximum(m, tl.max(zo, axis=1))
        l = l * tl.exp2(m - m_new) + tl.sum(tl.exp2(zo - m_new[:, None]), axis=1)
        m = m_new
        pos_sum += tl.sum(tl.where(pos, z, 0.0), axis=1)
        pos_cnt += tl.sum(pos.to(tl.float32), axis=1)

    lse = m + tl.log2(l)
    # Every anchor has at least one positive (its other view); rows past N are not stored.
    loss = (lse - pos_sum / tl.maximum(pos_cnt, 1.0)) * LN2
    tl.store(loss_ptr + rows, loss, mask=row_ok)
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(cnt_ptr + rows, pos_cnt, mask=row_ok)


@triton.jit
def _contrastive_bwd(
    x_ptr, ids_ptr, lse_ptr, cnt_ptr, g_ptr, out_ptr,
    N, D, sx_n, sx_d, scale, coef,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D_CHUNKS: tl.constexpr,
    BD_O: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    od = tl.program_id(1) * BD_O + tl.arange(0, BD_O)
    od_ok = od < D
    id_r = tl.load(ids_ptr + rows, mask=row_ok, other=0)
    lse_r = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    inv_cnt_r = 1.0 / tl.load(cnt_ptr + rows, mask=row_ok, other=1.0)
    q = load_rows(x_ptr, rows, row_ok, sx_n, sx_d, D, BLOCK_D, D_CHUNKS)

    acc = tl.zeros((BLOCK_M, BD_O), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        id_c = tl.load(ids_ptr + cols, mask=col_ok, other=0)
        lse_c = tl.load(lse_ptr + cols, mask=col_ok, other=0.0)
        inv_cnt_c = 1.0 / tl.load(cnt_ptr + cols, mask=col_ok, other=1.0)
        z = tile_scores(x_ptr, x_ptr, rows, cols, row_ok, col_ok, sx_n, sx_d, D, q,
                        BLOCK_M, BLOCK_N, BLOCK_D, D_CHUNKS, DOT_F32, PRECISION) * scale
        other = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
        pos = other & (id_r[:, None] == id_c[None, :])
        # Rows' share (anchor i in R) plus the columns' share transposed (anchor j in C).
        gm = tl.exp2(z - lse_r[:, None]) + tl.exp2(z - lse_c[None, :])
        gm -= tl.where(pos, inv_cnt_r[:, None] + inv_cnt_c[None, :], 0.0)
        gm = tl.where(other, gm, 0.0)
        xo = tl.load(x_ptr + cols[:, None] * sx_n + od[None, :] * sx_d,
                     mask=col_ok[:, None] & od_ok[None, :], other=0.0)
        acc = tl.dot(gm, xo, acc, input_precision=PRECISION)

    acc = acc * (tl.load(g_ptr) * coef)
    tl.store(out_ptr + rows[:, None] * D + od[None, :], acc, mask=row_ok[:, None] & od_ok[None, :])


def _launch_common(x):
    N, D = x.shape
    tiling = head_tiling(D)
    dot_f32, precision = dot_flags(x)
    return tiling, dict(N=N, D=D, sx_n=x.stride(0), sx_d=x.stride(1), BLOCK_D=tiling.block,
                        D_CHUNKS=tiling.chunks, DOT_F32=dot_f32, PRECISION=precision)


def forward(x, ids, inv_tau: float, scale: float):
    """The "triton" backend of mlkd_fast::sample_contrastive_fused: anchors x (N, D) normalised fp32, ids (N,)
    long. The 0-dim fp32 loss scale * mean_i(loss row i) and the row statistics (2, N) fp32: lse, positives."""
    N = x.shape[0]
    tiling, common = _launch_common(x)
    blk = relation_blocks(N, (tiling.block,), x.element_size(), backward=False, chunked=tiling.chunks > 1)
    loss_rows = torch.empty(N, device=x.device, dtype=torch.float32)
    stats = torch.empty(2, N, device=x.device, dtype=torch.float32)
    _contrastive_fwd[(triton.cdiv(N, blk.block_m),)](
        x, ids, loss_rows, stats[0], stats[1], scale=LOG2E * inv_tau,
        BLOCK_M=blk.block_m, BLOCK_N=blk.block_n, num_warps=blk.num_warps, num_stages=blk.num_stages,
        **common,
    )
    return loss_rows.mean() * scale, stats


def backward(x, ids, stats, grad, inv_tau: float, scale: float):
    """d loss / d x for the upstream gradient `grad` (a 0-dim tensor, kept on the device)."""
    N, D = x.shape
    tiling, common = _launch_common(x)
    blk = relation_blocks(N, (tiling.block, tiling.block), x.element_size(), backward=True, chunked=tiling.chunks > 1)
    g = (grad.to(torch.float32) * (scale / N)).reshape(1)
    dx = torch.empty(N, D, device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(N, blk.block_m), triton.cdiv(D, tiling.block))
    _contrastive_bwd[grid](
        x, ids, stats[0], stats[1], g, dx, scale=LOG2E * inv_tau, coef=inv_tau,
        BD_O=tiling.block, BLOCK_M=blk.block_m, BLOCK_N=blk.block_n,
        num_warps=blk.num_warps, num_stages=blk.num_stages, **common,
    )
    return dx
