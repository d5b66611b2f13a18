"""Issue 14 targets: smoke-profile LADMIM on the embedded logical-anomaly set, mean of 3 seeds, against PatchCore.

    python benchmarks/ladmim.py [--seeds 0 1 2] [--categories tray pins] [--set KEY=VALUE ...] [--jobs 2]
                                [--tokenizer-epochs N] [--mim-epochs N]

For every category of ``synthetic_loco`` (or ``--root``: any folder in the MVTec LOCO layout) and seed, LADMIM is
fitted with its smoke recipe (``adlib.papers.ladmim``: both stages) and standardised on the validation split's
normal images; PatchCore (its smoke recipe at the same image size, one fit per category: its only randomness is the
coreset's start point) runs on the same images. Printed: image AUROC on logical (LA) and structural (SA)
anomalies, Overall = (LA + SA) / 2 and the whole-test-set reading of Avg, per scorer (S'_HVQ + S'_MIM, S_HVQ,
S_MIM, and the sum z-scored on the test set as the released code does), mean +- std over seeds, then the two
targets: LADMIM's Overall >= 80 and its LA above PatchCore's. Every fit is ``adlib.study.run_one`` (the
notebooks' run path; LADMIM's per-epoch codebook usage is read through its ``callback``, so LADMIM always trains,
while PatchCore may be read from the run cache). Wall times are noisy on a shared machine: the
load average is printed with them. ``--jobs N`` fits N (category, seed) runs in parallel processes, each
with ``--threads`` torch threads (default 1 when N > 1).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

SCORERS = ("sum", "hvq", "mim", "sum_test_z")
TARGET_OVERALL = 0.80


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def _setting(image_size: int):
    """LADMIM's paper in the smoke profile at ``image_size``, every image of the data (``adlib.study``)."""
    from adlib import papers
    from adlib.study import resolve_setting

    return resolve_setting(papers.get("ladmim"), "smoke", synthetic=False, image_size=image_size, max_train=None,
                           max_test=None)


def _source(root: str, category: str):
    from adlib.study import DataSource

    return DataSource(Path(root).name, Path(root), category)


def fit_ladmim(root: str, category: str, seed: int, overrides: dict, threads: int | None) -> dict:
    """One smoke fit and the raw scores of the test set; returns plain data (picklable)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from adlib import loco
    from adlib.papers.ladmim import RECIPES
    from adlib.study import run_one

    size = int(overrides.get("image_size", RECIPES[("ladmim", "smoke")].model["image_size"]))
    load = os.getloadavg()[0]
    run = run_one(_setting(size), _source(root, category), "ladmim", seed=seed,
                  callback=lambda epoch, m: {"usage": m.codebook_usage(reset=True)},
                  **{k: v for k, v in overrides.items() if k != "image_size"})
    if run.calibration.startswith("held out"):
        raise SystemExit(f"{root}/{category} has no validation split: this benchmark standardises on it")
    result, model = run.evaluation, run.model
    tokenizer_epochs = run.fit_config.for_stage("tokenizer").epochs
    usage = run.fit.history[tokenizer_epochs - 1]["usage"]
    return {"category": category, "seed": seed, "fit_s": run.fit.train_seconds, "score_s": run.eval_seconds,
            "load": (load + os.getloadavg()[0]) / 2, "losses": run.fit.stage_losses,
            "perplexity": [round(u["perplexity"], 1) for u in usage],
            "stats": {k: float(getattr(model, k)) for k in ("hvq_mean", "hvq_std", "mim_mean", "mim_std")},
            "kinds": loco.anomaly_kinds(run.test), "s_hvq": result.parts["s_hvq"].tolist(),
            "s_mim": result.parts["s_mim"].tolist(), "labels": result.labels.tolist(), "groups": result.groups,
            "categories": result.image_categories}


def fit_patchcore(root: str, category: str, image_size: int, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from adlib import loco
    from adlib.study import run_one

    start = time.perf_counter()
    run = run_one(_setting(image_size), _source(root, category), "patchcore", seed=0)
    result = run.evaluation
    return {"category": category, "scores": result.scores.tolist(), "labels": result.labels.tolist(),
            "groups": result.groups, "kinds": loco.anomaly_kinds(run.test), "seconds": time.perf_counter() - start,
            "fit": run.fit_from}


def scorer_scores(run: dict, scorer: str) -> np.ndarray:
    import torch

    from adlib.models.ladmim import standardisation, standardised_sum

    h, m = np.asarray(run["s_hvq"]), np.asarray(run["s_mim"])
    if scorer == "hvq":
        return h
    if scorer == "mim":
        return m
    if scorer == "sum_test_z":  # the released code: mean and std of the category's whole test set
        return standardised_sum(h, m, standardisation(torch.as_tensor(h), torch.as_tensor(m)))
    return standardised_sum(h, m, run["stats"])


def summarise(runs: list[dict], scorer: str):
    """Per seed, a LocoSummary over the categories."""
    from adlib import loco

    out = {}
    for seed in sorted({r["seed"] for r in runs}):
        per = {r["category"]: loco.evaluate_groups(scorer_scores(r, scorer), r["labels"], r["groups"])
               for r in runs if r["seed"] == seed}
        out[seed] = loco.combine(per)
    return out


def print_kinds(label: str, runs: list[dict], scores_of) -> None:
    """Per category, the AUROC of each kind of anomaly alone (mean over the runs): which rules are seen."""
    from adlib import loco

    for category in dict.fromkeys(r["category"] for r in runs):
        mine = [r for r in runs if r["category"] == category and r.get("kinds")]
        if not mine:
            continue
        per = [loco.per_kind(scores_of(r), r["groups"], r["kinds"]) for r in mine]
        cells = ", ".join(f"{g[0].upper()}A {k} {100 * np.mean([p[(g, k)] for p in per]):.0f}" for g, k in per[0])
        print(f"  {label:<12} {category:<10} {cells}")


def _fmt(values) -> str:
    values = 100 * np.asarray(values, dtype=float)
    return f"{values.mean():5.1f} +- {values.std(ddof=1) if len(values) > 1 else 0.0:4.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="a folder in the MVTec LOCO layout (default: synthetic_loco)")
    parser.add_argument("--categories", nargs="+", default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="LADMIM config or FitConfig field (repeatable)")
    parser.add_argument("--tokenizer-epochs", type=int, default=None, help="HVQ-Trans epochs (default: the recipe's)")
    parser.add_argument("--mim-epochs", type=int, default=None, help="MIM ViT epochs (default: the recipe's)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel fits (processes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per fit (default: 1 with --jobs > 1)")
    parser.add_argument("--no-patchcore", action="store_true")
    parser.add_argument("--json", default=None, help="write every run's raw scores here")
    args = parser.parse_args(argv)

    from adlib import loco
    from adlib.data import list_categories, synth, synthetic_root
    from adlib.papers.ladmim import RECIPES

    root = Path(args.root) if args.root else Path(synthetic_root()) / "synthetic_loco"
    categories = args.categories or list_categories(root)
    overrides = _overrides(args.overrides)
    if args.tokenizer_epochs is not None or args.mim_epochs is not None:
        stages = {k: dict(v) for k, v in overrides.get("stages", RECIPES[("ladmim", "smoke")].fit.stages).items()}
        for stage, epochs in (("tokenizer", args.tokenizer_epochs), ("mim", args.mim_epochs)):
            if epochs is not None:
                stages[stage]["epochs"] = epochs
        overrides["stages"] = stages
    threads = args.threads or (1 if args.jobs > 1 else None)
    size = int(overrides.get("image_size", RECIPES[("ladmim", "smoke")].model["image_size"]))
    print(f"LADMIM smoke recipe on {root} (generator version {synth.GENERATOR_VERSION}), categories {categories}, "
          f"seeds {args.seeds}, overrides {overrides or 'none'}; {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}, jobs {args.jobs}, threads {threads or 'default'}", flush=True)
    start = time.perf_counter()
    jobs = [(str(root), c, s, overrides, threads) for c in categories for s in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(fit_ladmim, *job) for job in jobs]
        pc_futures = [] if args.no_patchcore else [pool.submit(fit_patchcore, str(root), c, size, threads)
                                                   for c in categories]
        runs = [f.result() for f in futures]
        patchcore = [f.result() for f in pc_futures]
    wall = time.perf_counter() - start
    for r in runs:
        print(f"  {r['category']:>8} seed {r['seed']}: fit {r['fit_s']:.0f} s, score {r['score_s']:.0f} s (load "
              f"{r['load']:.1f}); tokenizer loss {r['losses']['tokenizer'][0]:.3f} -> {r['losses']['tokenizer'][-1]:.3f}, "
              f"MIM loss {r['losses']['mim'][0]:.3f} -> {r['losses']['mim'][-1]:.3f}; code perplexity per level "
              f"{r['perplexity']}")
    print("\nimage AUROC, mean +- std over seeds (%):")
    print(f"  {'scorer':<12} {'category':<10} {'LA':>13} {'SA':>13} {'Overall':>13} {'Avg (whole)':>13}")
    results = {scorer: summarise(runs, scorer) for scorer in SCORERS}
    for scorer, per_seed in results.items():
        summaries = list(per_seed.values())
        for category in categories + ["mean"]:
            if category == "mean":
                la, sa = [s.logical for s in summaries], [s.structural for s in summaries]
                overall, whole = [s.overall for s in summaries], [s.avg_whole for s in summaries]
            else:
                cats = [s.categories[category] for s in summaries]
                la, sa = [c.logical for c in cats], [c.structural for c in cats]
                overall, whole = [(a + b) / 2 for a, b in zip(la, sa)], [c.whole for c in cats]
            print(f"  {scorer:<12} {category:<10} {_fmt(la):>13} {_fmt(sa):>13} {_fmt(overall):>13} {_fmt(whole):>13}")
    print("\nper kind of anomaly (LA: logical, SA: structural; image AUROC against the normal test images, mean "
          "over seeds, %):")
    for scorer in ("sum", "hvq", "mim"):
        print_kinds(scorer, runs, lambda r, scorer=scorer: scorer_scores(r, scorer))
    print_kinds("PatchCore", patchcore, lambda r: np.asarray(r["scores"]))
    ok = True
    sums = list(results["sum"].values())
    overall = float(np.mean([s.overall for s in sums]))
    ladmim_la = float(np.mean([s.logical for s in sums]))
    print(f"\ntarget 1: LADMIM Overall {100 * overall:.1f} >= {100 * TARGET_OVERALL:.0f}: "
          f"{'met' if overall >= TARGET_OVERALL else 'NOT met'}")
    ok &= overall >= TARGET_OVERALL
    if patchcore:
        pc = loco.combine({p["category"]: loco.evaluate_groups(p["scores"], p["labels"], p["groups"]) for p in patchcore})
        for category, c in pc.categories.items():
            print(f"  PatchCore {category:>8}: LA {100 * c.logical:5.1f}  SA {100 * c.structural:5.1f}")
        print(f"  PatchCore mean:     LA {100 * pc.logical:5.1f}  SA {100 * pc.structural:5.1f}  Overall "
              f"{100 * pc.overall:5.1f}")
        beats = ladmim_la > pc.logical
        print(f"target 2: LADMIM LA {100 * ladmim_la:.1f} > PatchCore LA {100 * pc.logical:.1f}: "
              f"{'met' if beats else 'NOT met'}")
        ok &= beats
    print(f"wall {wall:.0f} s for everything (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "patchcore": patchcore}, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
