"""The distributed objective itself, on 2 gloo processes with fixed features: with global relations every term
and the gradient of every student feature equal one process on the whole batch (ranks hold different
numbers of real tokens); with local relations L_SS/L_SC are the mean of each rank's own relation."""

import dist_worker
import pytest
import torch
import torch.multiprocessing as mp

from mlkd_fast.train.distributed import SINGLE


def test_global_and_local_relations_over_two_ranks(tmp_path):
    out = tmp_path / "results.pt"
    mp.spawn(dist_worker.run, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    got = torch.load(out)
    t, s, mask, labels = dist_worker.features()
    whole_terms, whole_grads = dist_worker.loss_and_grads(t, s, mask, labels, SINGLE, "global")
    terms, grads = got["global"]
    for k, v in whole_terms.items():
        assert terms[k] == pytest.approx(v, rel=1e-5), k
    # each rank's feature gradient over W (what averaging the parameter gradients over ranks makes of it) is
    # its rows of the whole batch's gradient: gathered back, the whole gradient
    for g, w in zip(grads, whole_grads):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-7)
    local_terms, _ = got["local"]
    shards = [dist_worker.loss_and_grads(t, s, mask, labels, SINGLE, "global", slice(r * 4, (r + 1) * 4))[0]
              for r in range(2)]
    for k in ("ss", "sc"):
        assert local_terms[k] == pytest.approx((shards[0][k] + shards[1][k]) / 2, rel=1e-5), k
        assert local_terms[k] != pytest.approx(whole_terms[k], rel=1e-3)
    for k in ("emb", "mha", "ffn", "kd"):  # relations do not touch them
        assert local_terms[k] == pytest.approx(whole_terms[k], rel=1e-5), k
