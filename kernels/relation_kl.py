"""Fused relation KL on GPUs (backend="triton"): L_EMB, L_MHA and L_SS without any L x L buffer.

    forward(teacher (B, L, Dt), student (B, L, Ds), splits, mask (B, L) bool | None) -> (loss, stats)
        loss = mean over valid (b, a, i) rows of KL(rel(teacher, A)_bai || rel(student, A)_bai), 0-dim fp32
        stats = (KL, lse_t, lse_s) per row, (3, B, A, L) fp32
    backward(teacher, student, splits, mask, stats, grad, teacher_grad) -> (d teacher | empty, d student)
The op mlkd_fast::relation_kl_fused (mlkd_fast/ops/relation_kl.py) calls these as its "triton" backend.

Forward, one program per (b, split a, block of query rows), ONE pass over the
key tiles: the teacher tile T = Qt Kt^T c_t and the student tile S = Qs Ks^T c_s
come from tl.dot; online max/sum for both softmaxes and the running
acc = sum_j exp(t_j - m_t)(t_j - s_j), rescaled whenever m_t grows. At the end
KL_i = acc/l_t - lse_t + lse_s (acc kept relative to the running maxima,
which keeps small KLs accurate in fp32). Saved for the backward: the two log-sum-exps
and KL_i per row, O(B A L).

Backward, one program per (b, a, block of rows R, chunk of output columns),
one pass over key tiles C. The scores are symmetric (X X^T), so the tile
computed as X_R X_C^T serves both shares of dX = c (G + G^T) X: the rows'
share G[R, C] (normalised by the LSEs of R) and the columns' share G[C, R]^T
(normalised by the LSEs of C). Each program owns its output rows: no atomics,
deterministic, and half the matrix products of separate row/column kernels.
    student: G_ij = (q_ij - p_ij) g_i
    teacher: H_ij = g_i p_ij (log p_ij - log q_ij - KL_i)      (only when it requires grad)
with g_i = gamma w_i, w_i = mask_i (0 or 1) and gamma = upstream grad / n_valid_rows.
The tiles use w and the scalar gamma multiplies the result: G itself goes to
tl.dot in the input dtype, where gamma (~1e-6 at B=32, L=512, A=12) times a
probability difference would underflow fp16.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from mlkd_fast.kernels._common import LN2, LOG2E, NEG_INIT, check_dtypes, device_function, dot_flags
from mlkd_fast.kernels._common import head_tiling, load_rows, relation_blocks, tile_scores


@device_function
def split_bases(t_ptr, s_ptr, pid_ba, A, dt, ds, st_b, st_d, ss_b, ss_d):
    """Program (b, split a) of a (B * A)-wide grid: b, a and the addresses of its split in both inputs."""
    b = pid_ba // A
    a = pid_ba % A
    t_base = t_ptr + b.to(tl.int64) * st_b + (a * dt).to(tl.int64) * st_d
    s_base = s_ptr + b.to(tl.int64) * ss_b + (a * ds).to(tl.int64) * ss_d
    return b, a, t_base, s_base


@triton.jit
def _relation_kl_fwd(
    t_ptr, s_ptr, valid_ptr, kl_ptr, lse_t_ptr, lse_s_ptr,
    L, A, dt, ds,
    st_b, st_l, st_d, ss_b, ss_l, ss_d,
    scale_t, scale_s,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BD_T: tl.constexpr, DT_CHUNKS: tl.constexpr, BD_S: tl.constexpr, DS_CHUNKS: tl.constexpr,
    DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_ba = tl.program_id(0)
    pid_m = tl.program_id(1)
    b, a, t_base, s_base = split_bases(t_ptr, s_ptr, pid_ba, A, dt, ds, st_b, st_d, ss_b, ss_d)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < L
    qt = load_rows(t_base, rows, row_ok, st_l, st_d, dt, BD_T, DT_CHUNKS)
    qs = load_rows(s_base, rows, row_ok, ss_l, ss_d, ds, BD_S, DS_CHUNKS)

    m_t = tl.full((BLOCK_M,), NEG_INIT, dtype=tl.float32)
    m_s = tl.full((BLOCK_M,), NEG_INIT, dtype=tl.float32)
    l_t = tl.zeros((BLOCK_M,), dtype=tl.float32)
    l_s = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, L, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < L
        key_ok = col_ok
        if HAS_MASK:
            key_ok = key_ok & (tl.load(valid_ptr + b * L + cols, mask=col_ok, other=0) != 0)
        t = tile_scores(t_base, t_base, rows, cols, row_ok, col_ok, st_l, st_d, dt, qt,
                        BLOCK_M, BLOCK_N, BD_T, DT_CHUNKS, DOT_F32, PRECISION) * scale_t
        s = tile_scores(s_base, s_base, rows, cols, row_ok, col_ok, ss_l, ss_d, ds, qs,
                        BLOCK_M, BLOCK_N, BD_S, DS_CHUNKS, DOT_F32, PRECISION) * scale_s
        tm = tl.where(key_ok[None, :], t, float("-inf"))  # masked keys leave the softmaxes
        sm = tl.where(key_ok[None, :], s, float("-inf"))

        m_t_new = tl.maximum(m_t, tl.max(tm, axis=1))
        m_s_new = tl.maximum(m_s, tl.max(sm, axis=1))
        alpha = tl.exp2(m_t - m_t_new)
        p = tl.exp2(tm - m_t_new[:, None])
        # acc holds sum_j p_j ((t_j - m_t) - (s_j - m_s)): relative to the running maxima, so
        # that KL (often tiny) is not the difference of two large log-sum-exps. When the maxima
        # move, every earlier term shifts by -(dm_t - dm_s).
        diff = tl.where(key_ok[None, :], (t - s) - (m_t_new - m_s_new)[:, None], 0.0)
        acc = alpha * (acc - ((m_t_new - m_t) - (m_s_new - m_s)) * l_t) + tl.sum(p * diff, axis=1)
        l_t = l_t * alpha + tl.sum(p, axis=1)
        l_s = l_s * tl.exp2(m_s - m_s_new) + tl.sum(tl.exp2(sm - m_s_new[:, None]), axis=1)
        m_t = m_t_new
        m_s = m_s_new

    lse_t = m_t + tl.log2(l_t)
    lse_s = m_s + tl.log2(l_s)
    kl = (acc / l_t - tl.log2(l_t) + tl.log2(l_s)) * LN2  # base-2 units -> nats
    out = pid_ba.to(tl.int64) * L + rows
    tl.store(kl_ptr + out, kl, mask=row_ok)
    tl.store(lse_t_ptr + out, lse_t, mask=row_ok)
    tl.store(lse_s_ptr + out, lse_s, mask=row_ok)


@triton.jit
def _relation_kl_bwd(
    t_ptr, s_ptr, valid_ptr, w_ptr, gamma_ptr, kl_ptr, lse_t_ptr, lse_s_ptr, out_ptr,
    L, A, dt, ds, d_out,
    st_b, st_l, st_d, ss_b, ss_l, ss_d,
    scale_t, scale_s, coef_out,
    HAS_MASK: tl.constexpr, OUT_TEACHER: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BD_T: tl.constexpr, DT_CHUNKS: tl.constexpr, BD_S: tl.constexpr, DS_CHUNKS: tl.constexpr,
    BD_O: tl.constexpr,
    DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_ba = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_o = tl.program_id(2)
    b, a, t_base, s_base = split_bases(t_ptr, s_ptr, pid_ba, A, dt, ds, st_b, st_d, ss_b, ss_d)
    if OUT_TEACHER:
        o_base = t_base
        so_l = st_l
        so_d = st_d
    else:
        o_base = s_base
        so_l = ss_l
        so_d = ss_d
    od = pid_o * BD_O + tl.arange(0, BD_O)
    od_ok = od < d_out

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < L
    row_key = row_ok
    if HAS_MASK:
        row_key = row_key & (tl.load(valid_ptr + b * L + rows, mask=row_ok, other=0) != 0)
    stat = pid_ba.to(tl.int64) * L
    w_r = tl.load(w_ptr + b * L + rows, mask=row_ok, other=0.0)
    lse_t_r = tl.load(lse_t_ptr + stat + rows, mask=row_ok, other=0.0)
    lse_s_r = tl.load(lse_s_ptr + stat + rows, mask=row_ok, other=0.0)
    if OUT_TEACHER:
        kl_r = tl.load(kl_ptr + stat + rows, mask=row_ok, other=0.0)
    qt = load_rows(t_base, rows, row_ok, st_l, st_d, dt, BD_T, DT_CHUNKS)
    qs = load_rows(s_base, rows, row_ok, ss_l, ss_d, ds, BD_S, DS_CHUNKS)

    acc = tl.zeros((BLOCK_M, BD_O), dtype=tl.float32)
    for n0 in range(0, L, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < L
        col_key = col_ok
        if HAS_MASK:
            col_key = col_key & (tl.load(valid_ptr + b * L + cols, mask=col_ok, other=0) != 0)
        w_c = tl.load(w_ptr + b * L + cols, mask=col_ok, other=0.0)
        lse_t_c = tl.load(lse_t_ptr + stat + cols, mask=col_ok, other=0.0)
        lse_s_c = tl.load(lse_s_ptr + stat + cols, mask=col_ok, other=0.0)
        t = tile_scores(t_base, t_base, rows, cols, row_ok, col_ok, st_l, st_d, dt, qt,
                        BLOCK_M, BLOCK_N, BD_T, DT_CHUNKS, DOT_F32, PRECISION) * scale_t
        s = tile_scores(s_base, s_base, rows, cols, row_ok, col_ok, ss_l, ss_d, ds, qs,
                        BLOCK_M, BLOCK_N, BD_S, DS_CHUNKS, DOT_F32, PRECISION) * scale_s
        # Rows' share: query i in R, key j in C (log-probabilities in base-2 units).
        lp1 = t - lse_t_r[:, None]
        lq1 = s - lse_s_r[:, None]
        # Columns' share, transposed: query j in C, key i in R (same symmetric scores).
        lp2 = t - lse_t_c[None, :]
        lq2 = s - lse_s_c[None, :]
        p1 = tl.exp2(lp1)
        p2 = tl.exp2(lp2)
        if OUT_TEACHER:
            kl_c = tl.load(kl_ptr + stat + cols, mask=col_ok, other=0.0)
            h1 = w_r[:, None] * p1 * ((lp1 - lq1) * LN2 - kl_r[:, None])
            h2 = w_c[None, :] * p2 * ((lp2 - lq2) * LN2 - kl_c[None, :])
        else:
            h1 = (tl.exp2(lq1) - p1) * w_r[:, None]
            h2 = (tl.exp2(lq2) - p2) * w_c[None, :]
        # Masked keys carry no probability (their exps may even overflow: select, never multiply).
        gm = tl.where(col_key[None, :], h1, 0.0) + tl.where(row_key[:, None], h2, 0.0)

        xo = tl.load(o_base + cols[:, None] * so_l + od[None, :] * so_d,
                     mask=col_ok[:, None] & od_ok[None, :], other=0.0)
        if DOT_F32:
            xo = xo.to(tl.float32)
        acc = tl.dot(gm.to(xo.dtype), xo, acc, input_precision=PRECISION)

    acc = acc * (tl.load(gamma_ptr) * coef_out)
    o_off = (b.to(tl.int64) * L + rows[:, None]) * (A * d_out) + a * d_out + od[None, :]
    tl.store(out_ptr + o_off, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & od_ok[None, :])


def _launch_common(teacher, student, splits):
    B, L, Dt = teacher.shape
    Ds = student.shape[2]
    dt, ds = Dt // splits, Ds // splits
    tt, ts = head_tiling(dt), head_tiling(ds)
    dot_f32, precision = dot_flags(teacher, student)
    common = dict(
        L=L, A=splits, dt=dt, ds=ds,
        st_b=teacher.stride(0), st_l=teacher.stride(1), st_d=teacher.stride(2),
        ss_b=student.stride(0), ss_l=student.stride(1), ss_d=student.stride(2),
        scale_t=LOG2E / math.sqrt(dt), scale_s=LOG2E / math.sqrt(ds),
        BD_T=tt.block, DT_CHUNKS=tt.chunks, BD_S=ts.block, DS_CHUNKS=ts.chunks,
        DOT_F32=dot_f32, PRECISION=precision,
    )
    itemsize = max(teacher.element_size(), student.element_size())
    return common, (tt.block, ts.block), itemsize, max(tt.chunks, ts.chunks) > 1


def relation_kl_forward(teacher, student, splits, valid):
    """Per-row KL (nats) and the two per-row log-sum-exps (base 2), each (B, A, L) fp32."""
    B, L, _ = teacher.shape
    common, widths, itemsize, chunked = _launch_common(teacher, student, splits)
    blk = relation_blocks(L, widths, itemsize, backward=False, chunked=chunked)
    kl = torch.empty(B, splits, L, device=teacher.device, dtype=torch.float32)
    lse_t = torch.empty_like(kl)
    lse_s = torch.empty_like(kl)
    grid = (B * splits, triton.cdiv(L, blk.block_m))
    _relation_kl_fwd[grid](
        teacher, student, valid if valid is not None else kl, kl, lse_t, lse_s,
        HAS_MASK=valid is not None, BLOCK_M=blk.block_m, BLOCK_N=blk.block_n,
        num_warps=blk.num_warps, num_stages=blk.num_stages, **common,
    )
    return kl, lse_t, lse_s


def relation_kl_backward(teacher, student, splits, valid, weights, gamma, kl, lse_t, lse_s, wrt_teacher: bool):
    """d loss / d teacher (wrt_teacher) or d loss / d student, where d loss / d KL_bai = gamma * weights[b, i].

    weights (B, L) fp32 (1 for a valid row, 0 for padding), gamma a 1-element fp32 tensor.
    """
    B, L, _ = teacher.shape
    common, widths, itemsize, chunked = _launch_common(teacher, student, splits)
    x = teacher if wrt_teacher else student
    d_out = x.shape[2] // splits
    bd_o = head_tiling(d_out).block
    blk = relation_blocks(L, widths + (bd_o,), itemsize, backward=True, chunked=chunked)
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    grid = (B * splits, triton.cdiv(L, blk.block_m), triton.cdiv(d_out, bd_o))
    _relation_kl_bwd[grid](
        teacher, student, valid if valid is not None else weights, weights, gamma, kl, lse_t, lse_s, out,
        d_out=d_out, coef_out=1.0 / math.sqrt(d_out),
        HAS_MASK=valid is not None, OUT_TEACHER=wrt_teacher, BD_O=bd_o,
        BLOCK_M=blk.block_m, BLOCK_N=blk.block_n,
        num_warps=blk.num_warps, num_stages=blk.num_stages, **common,
    )
    return out


def _rows(teacher, mask):
    """The key-validity mask the kernels read (None: every key valid, the mask loads skipped), each query row's
    weight (1 valid, 0 padding) and their count. A fully padded sequence keeps all keys valid (finite, unused
    softmaxes), as the reference does."""
    B, L, _ = teacher.shape
    if mask is None:
        return None, torch.ones(B, L, device=teacher.device, dtype=torch.float32)
    return (mask | ~mask.any(dim=1, keepdim=True)).to(torch.int8).contiguous(), mask.to(torch.float32)


def forward(teacher, student, splits: int, mask):
    """The "triton" backend of mlkd_fast::relation_kl_fused (inputs validated, padded positions zeroed by the
    op): the 0-dim fp32 loss and the per-row statistics the backward reads, (3, B, A, L) fp32: KL, lse_t, lse_s."""
    check_dtypes(teacher=teacher, student=student)
    valid, weights = _rows(teacher, mask)
    kl, lse_t, lse_s = relation_kl_forward(teacher, student, splits, valid)
    loss = (kl * weights[:, None, :]).sum() / (weights.sum() * splits).clamp_min(1.0)
    return loss, torch.stack([kl, lse_t, lse_s])


def backward(teacher, student, splits: int, mask, stats, grad, teacher_grad: bool):
    """d loss / d teacher (when teacher_grad; else an empty tensor) and d loss / d student."""
    valid, weights = _rows(teacher, mask)
    gamma = (grad.to(torch.float32) / (weights.sum() * splits).clamp_min(1.0)).reshape(1)  # on the device: no sync
    kl, lse_t, lse_s = stats[0], stats[1], stats[2]
    d_student = relation_kl_backward(teacher, student, splits, valid, weights, gamma, kl, lse_t, lse_s, False)
    d_teacher = (relation_kl_backward(teacher, student, splits, valid, weights, gamma, kl, lse_t, lse_s, True)
                 if teacher_grad else teacher.new_empty(0))
    return d_teacher, d_student
