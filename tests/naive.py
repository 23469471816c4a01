"""Python-loop implementations of the ops, written independently of the
vectorised reference, for tiny float64 inputs. Only math and plain tensors
indexing: no matmul, no softmax helper, so a shared bug is unlikely."""
import math


def _softmax_row(logits):
    m = max(logits)
    e = [math.exp(x - m) for x in logits]
    z = sum(e)
    return [v / z for v in e]


def relation_kl(teacher, student, splits, mask=None):
    B, L, Dt = teacher.shape
    Ds = student.shape[2]
    dt, ds = Dt // splits, Ds // splits
    total, rows = 0.0, 0
    for b in range(B):
        valid = [True] * L if mask is None else [bool(mask[b, j]) for j in range(L)]
        for a in range(splits):
            for i in range(L):
                if not valid[i]:
                    continue
                keys = [j for j in range(L) if valid[j]]
                t = [sum(float(teacher[b, i, a * dt + k]) * float(teacher[b, j, a * dt + k]) for k in range(dt)) / math.sqrt(dt) for j in keys]
                s = [sum(float(student[b, i, a * ds + k]) * float(student[b, j, a * ds + k]) for k in range(ds)) / math.sqrt(ds) for j in keys]
                p, q = _softmax_row(t), _softmax_row(s)
                total += sum(pj * (math.log(pj) - math.log(qj)) for pj, qj in zip(p, q) if pj > 0)
                rows += 1
    return total / rows if rows else 0.0


def sample_contrastive(teacher, student, labels, temperature, base_temperature):
    B, D = teacher.shape

    def normed(v):
        n = math.sqrt(sum(float(x) ** 2 for x in v))
        return [float(x) / n for x in v]

    x = [normed(student[i]) for i in range(B)] + [normed(teacher[i]) for i in range(B)]
    ids = list(range(B)) if labels is None else [int(v) for v in labels]
    ids = ids + ids
    losses = []
    for i in range(2 * B):
        others = [j for j in range(2 * B) if j != i]
        logit = {j: sum(a * c for a, c in zip(x[i], x[j])) / temperature for j in others}
        m = max(logit.values())
        lse = m + math.log(sum(math.exp(v - m) for v in logit.values()))
        pos = [j for j in others if ids[j] == ids[i]]
        losses.append(-sum(logit[p] - lse for p in pos) / len(pos))
    return (temperature / base_temperature) * sum(losses) / len(losses)


def soft_cross_entropy(t_logits, s_logits, temperature, reduction):
    B, C = t_logits.shape
    per = []
    for b in range(B):
        p = _softmax_row([float(v) / temperature for v in t_logits[b]])
        s = [float(v) / temperature for v in s_logits[b]]
        m = max(s)
        lse = m + math.log(sum(math.exp(v - m) for v in s))
        per.append(-sum(pc * (sc - lse) for pc, sc in zip(p, s)))
    if reduction == "none":
        return per
    if reduction == "batchmean":
        return sum(per) / B
    return sum(per) / (B * C)
