"""Plots (PNG) and markdown tables from the benchmark CSVs of one machine.

    python benchmarks/plot.py                        # every machine found in benchmarks/results/
    python benchmarks/plot.py --machine cpu-intel-xeon-2core    # one machine
    python benchmarks/plot.py --dir /tmp/mlkd_fast_bench_quick   # e.g. the --quick outputs

Writes, next to the CSVs:
  <op>_<machine>.png          time (fwd, fwd+bwd) and peak memory vs L (or B) per backend
  heads_latency_<machine>.png latency vs number of heads, per batch size
  e2e_<machine>.png           training-step time per phase, reference vs fused
  recipe_<machine>.png        the whole recipe's step per phase, the authors' way vs the project's
  summary_<machine>.md        the tables quoted in the README
When a CSV holds several runs of the same shape, the latest row wins.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from collections import OrderedDict
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import resultfile  # noqa: E402

OPS = {  # op -> (sweep group, x column, x label)
    "relation_kl": ("L", "L", "sequence length L (B=2, Dt=768, Ds=312, 12 splits, masked)"),
    "sample_relation_kl": ("B", "B", "batch B (Dt=768, Ds=312)"),
    "sample_contrastive": ("B", "B", "batch B (D=768, 3 classes)"),
}
SHAPE_KEYS = ("group", "backend", "mode", "B", "L", "Dt", "Ds", "D", "splits", "dtype", "masked", "classes")
RECIPE_KEYS = ("kind", "pair", "L", "B", "way", "stage", "epochs")  # one row of recipe_<machine>.csv
STYLE = {"torch": ("tab:blue", "o"), "cpp": ("tab:green", "s"), "triton": ("tab:red", "^"), harness.COMPILE: ("tab:orange", "x")}


def latest(rows: List[Dict[str, str]], keys) -> List[Dict[str, str]]:
    """The last row for each distinct value of `keys` (CSV rows are appended in time order)."""
    out: "OrderedDict[tuple, Dict[str, str]]" = OrderedDict()
    for r in rows:
        k = tuple(r.get(c, "") for c in keys)
        out.pop(k, None)
        out[k] = r
    return list(out.values())


def ok(r) -> bool:
    return r.get("status", "").startswith("ok") and r.get("median_ms", "") != ""


def save(plt, fig, png: str, title=None) -> bool:
    """Title, lay out, write the PNG and free the figure; True (a plot was made)."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def plot_op(plt, op: str, rows, png: str, machine: str) -> bool:
    group, xcol, xlabel = OPS[op]
    rows = [r for r in latest(rows, SHAPE_KEYS) if r["group"] == group and r.get("dtype") == "fp32" and ok(r)]
    if not rows:
        return False
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for ax, mode, what in ((axes[0], "fwd", "time"), (axes[1], "fwd+bwd", "time"), (axes[2], "fwd+bwd", "mem")):
        for b in backends:
            pts = sorted(
                (int(r[xcol]), float(r["median_ms"] if what == "time" else r.get("peak_mem_mb") or "nan"),
                 float(r["q1_ms"]), float(r["q3_ms"]))
                for r in rows if r["backend"] == b and r["mode"] == mode
            )
            pts = [p for p in pts if p[1] == p[1] and (what == "time" or p[1] > 0)]
            if not pts:
                continue
            color, marker = STYLE.get(b, ("black", "."))
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(xs, ys, marker=marker, color=color, label=b)
            if what == "time":
                ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], color=color, alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("median time (ms), IQR shaded" if what == "time" else "peak memory growth (MiB)")
        ax.set_title(f"{op} {mode} {'time' if what == 'time' else 'peak memory'}")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_lines():
            ax.legend()
    return save(plt, fig, png, f"{op} on {machine}")


def plot_heads(plt, rows, png: str, machine: str) -> bool:
    """Latency relative to the 12-head model (same shape, attention, batch, run), linear scale: the effect is small."""
    rows = [r for r in latest(rows, ("model", "attn", "heads", "batch", "L")) if ok(r)]
    if not rows:
        return False
    panels = list(dict.fromkeys((r["model"], r["attn"]) for r in rows))
    cols = min(2, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 4 * nrows), squeeze=False)
    for ax, (model, attn) in zip(axes.flat, panels):
        sub = [r for r in rows if r["model"] == model and r["attn"] == attn]
        for batch in sorted({int(r["batch"]) for r in sub}):
            pts = sorted((int(r["heads"]), float(r["median_ms"])) for r in sub if int(r["batch"]) == batch)
            base = dict(pts).get(12)
            if base is None:
                continue
            ax.plot([p[0] for p in pts], [p[1] / base for p in pts], marker="o",
                    label=f"batch {batch} (12 heads: {base:.1f} ms)")
        heads = sorted({int(r["heads"]) for r in sub})
        ax.set_xscale("log", base=2)
        ax.set_xticks(heads)
        ax.set_xticklabels([str(h) for h in heads])
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xlabel("attention heads")
        ax.set_ylabel("median latency / 12-head latency")
        ax.set_title(f"{model}, {attn} attention, L={sub[0]['L']}", fontsize=9)
        ax.grid(True, alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8, loc="lower right")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return save(plt, fig, png, f"student inference latency vs heads on {machine}")


def plot_phases(plt, rows, png: str, phases, label_keys, title: str) -> bool:
    """One stacked bar of per-phase median times (`<phase>_ms` columns) per row, labelled by label_keys."""
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4.8))
    for i, r in enumerate(rows):
        bottom = 0.0
        for j, ph in enumerate(phases):
            v = float(r.get(f"{ph}_ms") or 0.0)
            ax.bar(i, v, bottom=bottom, color=f"C{j}", label=ph if i == 0 else None)
            bottom += v
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(["\n".join(f"{k}={r[k]}" if k in ("L", "stage") else r[k] for k in label_keys) for r in rows],
                       fontsize=7)
    ax.set_ylabel("median phase time (ms)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return save(plt, fig, png)


def plot_e2e(plt, rows, png: str, machine: str) -> bool:
    rows = [r for r in latest(rows, ("pair", "L", "B", "stage", "backend")) if ok(r)]
    return plot_phases(plt, rows, png, ("teacher_fwd", "student_fwd", "loss", "backward", "optimizer"),
                       ("pair", "L", "stage", "backend"), f"MLKD training step, reference vs fused backend, on {machine}")


def plot_recipe(plt, rows, png: str, machine: str) -> bool:
    rows = [r for r in latest(rows, RECIPE_KEYS) if r["kind"] == "step"
            and r["status"] == "ok"]
    return plot_phases(plt, rows, png, ("data", "teacher", "student", "loss", "backward", "optimizer"),
                       ("pair", "L", "stage", "way"), f"one step of the recipe, authors' way vs the project's, on {machine}")


# ----------------------------------------------------------------------------- tables

def _fmt(v, nd=1):
    try:
        return f"{float(v):.{nd}f}"
    except (TypeError, ValueError):
        return "-"


def headline_table(rows) -> List[str]:
    """relation_kl at the kernel issue's sizes: fwd+bwd time at B=32, L=128 and peak memory at B=4, L=1024 (fp32, 12 splits, masked)."""
    rows = [r for r in latest(rows, SHAPE_KEYS) if ok(r) and r["mode"] == "fwd+bwd" and r.get("dtype") == "fp32" and r.get("splits") == "12"]
    t = [r for r in rows if r["group"] == "batch" and (r["B"], r["L"]) == ("32", "128")]
    m = [r for r in rows if r["group"] == "mem" and (r["B"], r["L"]) == ("4", "1024")]
    if not t and not m:
        return []
    out = ["#### relation_kl at the kernel issue's sizes (Dt=768, Ds=312, 12 splits, fp32, masked, fwd+bwd)", "",
           "| shape | backend | median ms | IQR ms | speed-up vs torch | peak growth MiB | memory vs torch |", "|---|---|---|---|---|---|---|"]
    for r in t + m:
        out.append(f"| B={r['B']}, L={r['L']} | {r['backend']} | {_fmt(r['median_ms'], 2)} | {_fmt(r['iqr_ms'], 2)} | "
                   f"{_fmt(r.get('speedup_vs_torch'), 2)} | {_fmt(r.get('peak_mem_mb'))} | {_fmt(r.get('mem_ratio_vs_torch'), 3)} |")
    return out + [""]


def op_table(op: str, rows) -> List[str]:
    rows = [r for r in latest(rows, SHAPE_KEYS) if ok(r)]
    if not rows:
        return []
    cols = [c for c in ("B", "L", "Dt", "Ds", "D", "splits", "classes", "dtype") if any(c in r and r[c] != "" for r in rows)]
    out = [f"#### {op}", "", "| group | " + " | ".join(cols) + " | backend | mode | median ms | IQR ms | speed-up vs torch | peak MiB | memory vs torch |",
           "|" + "---|" * (len(cols) + 8)]
    for r in rows:
        out.append("| " + " | ".join([r["group"]] + [r.get(c, "") for c in cols] + [
            r["backend"], r["mode"], _fmt(r["median_ms"], 2), _fmt(r["iqr_ms"], 2), _fmt(r.get("speedup_vs_torch"), 2) + "x"
            if r.get("speedup_vs_torch") else "-", _fmt(r.get("peak_mem_mb")), _fmt(r.get("mem_ratio_vs_torch"), 3)]) + " |")
    return out + [""]


def heads_table(rows) -> List[str]:
    rows = [r for r in latest(rows, ("model", "attn", "heads", "batch", "L")) if ok(r)]
    if not rows:
        return []
    out = ["#### heads vs latency", "", "| student | attention | batch | " + " | ".join(f"{h} heads" for h in harness_heads(rows)) + " |",
           "|" + "---|" * (3 + len(harness_heads(rows)))]
    for model, attn, batch in dict.fromkeys((r["model"], r["attn"], r["batch"]) for r in rows):
        cells = []
        for h in harness_heads(rows):
            r = next((x for x in rows if (x["model"], x["attn"], x["batch"], x["heads"]) == (model, attn, batch, str(h))), None)
            cells.append("-" if r is None else f"{_fmt(r['median_ms'], 2)} ms ({_fmt(r.get('speedup_vs_12heads'), 2)}x)")
        out.append(f"| {model} | {attn} | {batch} | " + " | ".join(cells) + " |")
    return out + ["", "Median latency, L=128; in brackets the speed-up over the 12-head model (same run).", ""]


def harness_heads(rows):
    return sorted({int(r["heads"]) for r in rows}, reverse=True)


def e2e_table(rows) -> List[str]:
    rows = latest(rows, ("pair", "L", "B", "stage", "backend"))
    if not rows:
        return []
    out = ["#### end-to-end training step", "",
           "| pair (teacher -> student) | L | B | stage | backend | step ms (median) | IQR ms | loss ms | backward ms | step speed-up | loss speed-up | peak MiB | memory vs torch |",
           "|" + "---|" * 13]
    for r in rows:
        if not ok(r):
            out.append(f"| {r['pair']} ({r['teacher']} -> {r['student']}) | {r['L']} | {r['B']} | {r['stage']} | {r['backend']} | {r['status'][:60]} |" + " |" * 8)
            continue
        out.append(
            f"| {r['pair']} ({r['teacher']} -> {r['student']}) | {r['L']} | {r['B']} | {r['stage']} | {r['backend']} | "
            f"{_fmt(r['median_ms'])} | {_fmt(r['iqr_ms'])} | {_fmt(r.get('loss_ms'))} | {_fmt(r.get('backward_ms'))} | "
            f"{_fmt(r.get('speedup_vs_torch'), 2)} | {_fmt(r.get('loss_speedup_vs_torch'), 2)} | {_fmt(r.get('peak_mem_mb'))} | "
            f"{_fmt(r.get('mem_ratio_vs_torch'), 3)} |"
        )
    return out + [""]


def recipe_table(rows) -> List[str]:
    rows = [r for r in latest(rows, RECIPE_KEYS) if r["status"] == "ok"]
    steps = [r for r in rows if r["kind"] == "step"]
    recipes = [r for r in rows if r["kind"] == "recipe"]
    if not steps:
        return []
    phases = ("data", "teacher", "student", "loss", "backward", "optimizer")
    out = ["#### whole recipe: one step per phase (median ms)", "",
           "| pair | L | B | way | stage | " + " | ".join(phases) + " | step |", "|" + "---|" * (6 + len(phases))]
    for r in steps:
        out.append(f"| {r['pair']} | {r['L']} | {r['B']} | {r['way']} | {r['stage']} | "
                   + " | ".join(_fmt(r[f"{p}_ms"]) for p in phases) + f" | {_fmt(r['step_ms'])} |")
    out += ["", "#### whole recipe: data to distilled student (s, extrapolated from the step and cache-build times)", "",
            "| pair | L | epochs | authors' way | project way | of which cache build | speed-up |", "|---|---|---|---|---|---|---|"]
    for r in recipes:
        out.append(f"| {r['pair']} | {r['L']} | {r['epochs']} | {r['authors_s']} | {r['way']}: {r['project_s']} | "
                   f"{r['cache_build_s']} | {r['speedup']}x |")
    return out + [""]


def cache_reuse_table(rows) -> List[str]:
    rows = [r for r in latest(rows, ("objective", "cache", "seed", "teacher")) if r["status"] == "ok"]
    if not rows:
        return []
    r0 = rows[0]
    out = [f"#### distill() end to end with a filled teacher cache (teacher {r0['teacher']}, 1-layer student, "
           f"{r0['examples']} examples, L <= {r0['L']}, {r0['epochs']} epochs, median of {r0['repeats']})", "",
           "| objective | cache | seed | wall s | speed-up vs no cache |", "|---|---|---|---|---|"]
    out += [f"| {r['objective']} | {r['cache']} | {r['seed']} | {_fmt(r['wall_s'], 2)} | {_fmt(r['speedup_vs_no_cache'], 2)}x |"
            for r in rows]
    return out + [""]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=resultfile.RESULTS_DIR, help="folder with the CSVs (default benchmarks/results)")
    p.add_argument("--machine", default=None, help="machine label, e.g. cpu-intel-xeon-2core (default: every one found)")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csvs = sorted(glob.glob(os.path.join(args.dir, "*.csv")))
    names = [os.path.basename(c)[:-4] for c in csvs]
    kinds = sorted({n.rsplit("_", 1)[1] for n in names if "_" in n})
    machines = [args.machine] if args.machine else kinds
    if not machines or (args.machine and args.machine not in kinds):
        raise SystemExit(f"no benchmark CSVs for {args.machine or 'any machine'} in {args.dir} (found machines: {kinds})")
    for machine in machines:
        table: List[str] = []
        desc = ""
        for name in list(OPS) + ["heads_latency", "e2e", "recipe", "cache_reuse"]:
            path = os.path.join(args.dir, f"{name}_{machine}.csv")
            if not os.path.exists(path):
                continue
            rows = resultfile.read_csv(path)
            if rows and not desc:
                r = rows[-1]
                desc = (f"{machine}: {r['cpu_model']}, {r['cores']} cores, {r['threads']} threads, "
                        f"OMP_WAIT_POLICY={r.get('omp_wait_policy') or 'unset'}"
                        + (f", {r['gpu']}" if r.get("gpu") else "") + f"; torch {r['torch']}, commit {r['commit']}")
            png = os.path.join(args.dir, f"{name}_{machine}.png")
            if name in OPS:
                made = plot_op(plt, name, rows, png, machine)
                if name == "relation_kl":
                    table += headline_table(rows)
                table += op_table(name, rows)
            elif name == "heads_latency":
                made = plot_heads(plt, rows, png, machine)
                table += heads_table(rows)
            elif name == "e2e":
                made = plot_e2e(plt, rows, png, machine)
                table += e2e_table(rows)
            elif name == "recipe":
                made = plot_recipe(plt, rows, png, machine)
                table += recipe_table(rows)
            else:
                made = False
                table += cache_reuse_table(rows)
            if made:
                print(f"wrote {png}")
        md = os.path.join(args.dir, f"summary_{machine}.md")
        with open(md, "w") as f:
            f.write(f"### Benchmark results on {desc}\n\n" + "\n".join(table))
        print(f"wrote {md}")


if __name__ == "__main__":
    main()
