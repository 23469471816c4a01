"""The body of tests/train/test_distributed_losses.py's ranks (spawned processes import it by name)."""

import torch
import torch.distributed as dist


def features(B=8, L=6, D=12, seed=0):
    """One global batch of teacher/student features, the same on every rank (the rank takes its rows)."""
    from mlkd_fast.train.features import Features

    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 4:] = mask[5, 2:] = mask[6, 5:] = False  # ranks hold different numbers of real tokens
    # a 2-layer teacher and a 1-layer student (layer map: student layer 1 <- teacher layer 2)
    t = Features(hidden=[torch.randn(B, L, D, generator=g) for _ in range(3)],
                 mha=[torch.randn(B, L, D, generator=g) for _ in range(2)],
                 token_embeddings=torch.randn(B, L, D, generator=g), logits=torch.randn(B, 3, generator=g))
    s = Features(hidden=[torch.randn(B, L, D, generator=g) for _ in range(2)], mha=[torch.randn(B, L, D, generator=g)],
                 token_embeddings=torch.randn(B, L, D, generator=g), logits=torch.randn(B, 3, generator=g))
    labels = torch.randint(0, 3, (B,), generator=g)
    return t, s, mask, labels


def loss_and_grads(t, s, mask, labels, dist_, relations, rows=slice(None)):
    """The stage-1 + stage-2 objective on rows of the batch; the gradient w.r.t. the student features."""
    from mlkd_fast.train.features import Features
    from mlkd_fast.train.objectives import DistillProjections, LossContext, stage_loss

    torch.manual_seed(0)
    proj = DistillProjections(12, 12, 1)
    leaves = [x[rows].clone().requires_grad_() for x in s.hidden + s.mha + [s.token_embeddings, s.logits]]
    sf = Features(hidden=leaves[:2], mha=[leaves[2]], token_embeddings=leaves[3], logits=leaves[4])
    tf = Features(hidden=[x[rows] for x in t.hidden], mha=[x[rows] for x in t.mha],
                  token_embeddings=t.token_embeddings[rows], logits=t.logits[rows])
    m = mask[rows]
    shares = dist_.shares({"token": int(m.sum()), "sample": m.shape[0]})
    ctx = LossContext(mask=m, layer_map=(2,), projections=proj, labels=labels[rows], splits=2, backend="torch",
                      dist=dist_, shares=shares, relations=relations)
    weights = {"emb": 1.0, "mha": 1.0, "ffn": 1.0, "ss": 1.0, "sc": 1.0, "kd": 1.0}
    loss, terms = stage_loss(weights, tf, sf, ctx)
    terms = {k: float(v) for k, v in terms.items()}
    loss.backward()
    return terms, [x.grad for x in leaves]


def run(rank, world, init_file, out_file):
    from mlkd_fast.train.distributed import Dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    d = Dist.from_env(torch.device("cpu"))  # the group this process already joined (no env:// variables here)
    assert (d.rank, d.world) == (rank, world)
    t, s, mask, labels = features()
    per = t.logits.shape[0] // world
    rows = slice(rank * per, (rank + 1) * per)
    results = {}
    for relations in ("global", "local"):
        terms, grads = loss_and_grads(t, s, mask, labels, d, relations, rows)
        terms, _ = d.mean(terms)
        # what gradient averaging over ranks makes of each rank's gradient (rows of the global batch's gradient)
        results[relations] = (terms, [d.gather_rows(g * 1.0, differentiable=False) / world for g in grads])
    if rank == 0:
        torch.save(results, out_file)
    dist.barrier()  # no rank tears the group down while another still uses it (gloo aborts then)
    dist.destroy_process_group()
