"""LADMIM against PatchCore on real logical anomalies: the derived MVTec LOCO subset (juice_bottle), smoke profile.

    ADLIB_DATA=/work/shared/data OMP_NUM_THREADS=1 python benchmarks/ladmim_loco.py [targets|context]
        [--seeds 0 1 2] [--image-size N] [--max-train N] [--tokenizer-epochs N] [--mim-epochs N]
        [--set KEY=VALUE ...] [--no-patchcore] [--json FILE]

The data is ``$ADLIB_DATA/mvtec_loco_subset`` (read its SOURCE.md: a derived split, not the official one; its
numbers are never the paper's official-split cells). Every number comes from ``adlib.study.run_grid``: LADMIM
with the smoke profile's setting for the subset (``adlib.papers.ladmim.loco_subset_setting``: image size,
training-image cap, epochs per stage), standardised on the subset's validation split, and PatchCore (its smoke
recipe at the same image size) on the same images, over the seeds. Printed, mean +- std over seeds:

- the logical-anomaly image AUROC (normal test images against the logical anomalies, ``adlib.loco``) per scorer
  of LADMIM (S'_HVQ + S'_MIM standardised on the validation split, S_HVQ alone, S_MIM alone) and PatchCore;
- the same per kind of logical anomaly (``adlib.loco.anomaly_kinds``; where the kinds come from is printed);
- the validation split's mean S_HVQ and S_MIM (the standardisation's statistics: how well the fitted model
  reconstructs and predicts held-out normal images, which needs no anomaly: the criterion settings are chosen
  by), the training losses, and wall and CPU seconds per fit.

``context`` (LADMIM only) asks where S_MIM's logical signal is lost. On each fitted model it compares the ViT's
Eq. 12 error (S_MIM) with two predictors of the masked region's code histogram that need no ViT, under the same
fixed test masks: "position only" (the mean histogram of the training images under that mask: what a ViT that
ignores the visible context can do) and "5 nearest by visible codes" (the histograms of the five training images
whose codes outside the mask agree most: a plain use of the context). Printed: their mean error on the
validation split's normal images and their logical AUROC, overall and per kind. Then whether the codes keep what
tells the fruit types apart: the training images' juice type (three colour clusters) predicted (5-fold logistic
regression) from the codes of each level, and from the features, at the tokens where the fruit icon lies (the
masks of the test images annotated ``missing_fruit_icon``).

The options override the profile's setting (to measure training length and image size); without them it is the
setting the LADMIM chapter runs. The measurements behind the chapter's reading of its verdict:

    python benchmarks/ladmim_loco.py                                        # 3 seeds, per scorer and kind
    python benchmarks/ladmim_loco.py context --seeds 0                      # S_MIM against the no-ViT predictors
    python benchmarks/ladmim_loco.py context --seeds 0 --mim-epochs 60      # ten times the MIM epochs
    python benchmarks/ladmim_loco.py --seeds 0 --image-size 192 --set grid=24  # the paper's grid, 3x the CPU
    python benchmarks/ladmim_loco.py --seeds 0 --max-train 279              # every training image On a shared machine wall times are upper bounds; the CPU seconds of this process
(one thread) are the budget's measure.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

# (method, setting label) -> column name: LADMIM's scorers read from one fit (paper.scorers), PatchCore's score
COLUMNS = {("LADMIM", "scorer=sum"): "S'_HVQ + S'_MIM", ("LADMIM", "scorer=hvq"): "S_HVQ",
           ("LADMIM", "scorer=mim"): "S_MIM", ("PatchCore", "default"): "PatchCore"}


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def _fmt(values) -> str:
    values = np.asarray(values, dtype=float)
    if len(values) == 0 or np.isnan(values).all():
        return "–"
    return f"{values.mean():5.1f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:4.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="targets", choices=("targets", "context"))
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the profile's (0 1 2)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the profile's subset setting")
    parser.add_argument("--max-train", type=int, default=None, help="training images (spread evenly); default: "
                                                                     "the profile's subset setting")
    parser.add_argument("--tokenizer-epochs", type=int, default=None, help="HVQ-Trans epochs")
    parser.add_argument("--mim-epochs", type=int, default=None, help="MIM ViT epochs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a LADMIM config or FitConfig field (repeatable)")
    parser.add_argument("--no-patchcore", action="store_true")
    parser.add_argument("--json", default=None, help="write the LOCO rows and per-kind rows here")
    args = parser.parse_args(argv)
    setting, runs, seconds, wall = fit(args)
    if args.mode == "context":
        for run in runs.values():
            context(setting, run)
    else:
        targets(runs, args.json)
    by_model: dict[str, list[float]] = {}
    for spent, run in zip(seconds, runs.values()):  # run_grid fits in the order it keeps the runs
        by_model.setdefault(run.method, []).append(spent)
    print("\nCPU seconds per fit: " + ", ".join(f"{m} {np.mean(v):.0f} (x{len(v)})" for m, v in by_model.items())
          + f"; all {sum(seconds):.0f} CPU-s, wall {wall:.0f} s (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return 0


def fit(args):
    """The runs: LADMIM (and PatchCore unless left out) over the seeds, through run_grid."""
    from adlib import papers, study
    from adlib.papers import ladmim as paper

    if not os.environ.get("ADLIB_DATA"):
        raise SystemExit("ADLIB_DATA is not set; expected the folder holding mvtec_loco_subset/")
    base = study.resolve_setting(papers.get("ladmim"), "smoke", synthetic=False, seeds=args.seeds)
    setting, overrides = paper.loco_subset_setting(base, image_size=args.image_size, max_train=args.max_train)
    sources = setting.real_sources([paper.LOCO_SUBSET_FOLDER])
    if not sources:
        raise SystemExit(f"no {paper.LOCO_SUBSET_FOLDER}/ under ADLIB_DATA={os.environ['ADLIB_DATA']}")
    if args.tokenizer_epochs is not None or args.mim_epochs is not None:  # "stages" replaces the recipe's: start from it
        stages = {k: dict(v) for k, v in overrides.get("stages", setting.paper.recipe("ladmim", "smoke").fit.stages).items()}
        for stage, epochs in (("tokenizer", args.tokenizer_epochs), ("mim", args.mim_epochs)):
            if epochs is not None:
                stages[stage]["epochs"] = epochs
        overrides = {**overrides, "stages": stages}
    overrides = {**overrides, **_overrides(args.overrides)}
    print(f"{paper.LOCO_SUBSET}: {', '.join(s.name for s in sources)}, {setting.image_size} px, "
          f"{setting.caps}, seeds {list(setting.seeds)}; LADMIM overrides {overrides or 'none'}; "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, torch threads "
          f"{__import__('torch').get_num_threads()}", flush=True)

    cpu = {"last": time.process_time()}
    seconds = []

    def log(line: str) -> None:  # run_grid logs once per run: the CPU seconds since the last line are that fit's
        now = time.process_time()
        spent, cpu["last"] = now - cpu["last"], now
        if "image AUROC" in line:  # a fitted run (not a run recorded as not run)
            seconds.append(spent)
        print(f"  {line} [{spent:.0f} CPU-s]", flush=True)

    start = time.perf_counter()
    runs: dict = {}
    study.run_grid(setting, {"default": overrides}, sources, models=("ladmim",), seeds=setting.seeds, keep=runs, log=log)
    if not args.no_patchcore and args.mode == "targets":  # its own recipe, same image size, same (capped) images
        study.run_grid(setting, {"default": {}}, sources, models=("patchcore",), seeds=setting.seeds, keep=runs, log=log)
    if not runs:
        raise SystemExit("no run finished (see the log above)")
    return setting, runs, seconds, time.perf_counter() - start


def targets(runs, json_path) -> None:
    """LA per scorer and per kind, mean ± std over seeds, and each LADMIM fit's validation errors."""
    from adlib import loco
    from adlib.papers import ladmim as paper

    labels = {label for _, label in COLUMNS}
    scorers = lambda run: {k: v for k, v in paper.scorers(run).items() if k in labels}
    table = loco.runs_table(runs, scorers)
    kinds = loco.runs_kinds_table(runs, scorers)
    logical = table[(table["metric"] == "auroc_logical") & (table["scope"] == "mean")]
    shown = [(key, name) for key, name in COLUMNS.items()
             if ((logical["method"] == key[0]) & (logical["setting"] == key[1])).any()]

    def cells(rows, key):
        return rows[(rows["method"] == key[0]) & (rows["setting"] == key[1])].sort_values("seed")["value"]

    print("\nlogical-anomaly image AUROC, mean ± std over seeds (%):")
    for key, name in shown:
        print(f"  {name:<16} {_fmt(cells(logical, key))}   per seed {[round(v, 1) for v in cells(logical, key)]}")
    if len(kinds):
        test = next(iter(runs.values())).test
        counts = dict(zip(*np.unique(loco.anomaly_kinds(test), return_counts=True)))
        print(f"\nper kind of logical anomaly: image AUROC against the {counts.get('good', 0)} normal test images, "
              f"mean ± std over seeds (%); {kinds['note'].iloc[0]}")
        print(f"  {'kind (images)':<46}" + "".join(f"{name:>18}" for _, name in shown))
        for metric in dict.fromkeys(kinds["metric"]):
            kind = metric.removeprefix("auroc_logical_")
            part = kinds[kinds["metric"] == metric]
            print(f"  {kind + f' ({counts.get(kind, 0)})':<46}" + "".join(f"{_fmt(cells(part, key)):>18}"
                                                                        for key, _ in shown))

    print("\nper LADMIM fit: validation (normal) mean S_HVQ / S_MIM, final training losses")
    for run in runs.values():
        if run.model_name != "ladmim":
            continue
        losses = {stage: round(values[-1], 3) for stage, values in run.fit.stage_losses.items()}
        print(f"  seed {run.seed}: S_HVQ {float(run.model.hvq_mean):.4f}  S_MIM {float(run.model.mim_mean):.4f}  "
              f"losses {losses}  train {run.fit.train_seconds:.0f} s wall, {run.train_images} images")
    if json_path:
        Path(json_path).write_text(json.dumps({"loco": table.to_dict("records"), "kinds": kinds.to_dict("records")},
                                              default=str))


def _codes(model, dataset, batch: int = 16):
    """HVQ-Trans' code maps of the MIM's target levels (B, levels, N) for every image of ``dataset`` (Eq. 10)."""
    import torch

    out = []
    with torch.no_grad():
        for first in range(0, len(dataset), batch):
            images = torch.stack([dataset[i]["image"] for i in range(first, min(first + batch, len(dataset)))])
            out.append(model.hvq.codes(model.tokens_of(model.extract(images)))[:, model.levels])
    return torch.cat(out)


def _features(model, dataset, batch: int = 16):
    """The tokens HVQ-Trans and the ViT read (B, N, d_0)."""
    import torch

    with torch.no_grad():
        return torch.cat([model.tokens_of(model.extract(torch.stack([dataset[i]["image"] for i in
                                                                     range(first, min(first + batch, len(dataset)))])))
                          for first in range(0, len(dataset), batch)])


def no_vit_errors(train_codes, codes, masks, size: int, neighbours: int = 5) -> dict:
    """Eq. 12's error per image (mean over ``masks``) of two predictors of the masked region's code histogram that
    need no ViT: the mean training histogram under the mask ("position only") and the mean histogram of the
    ``neighbours`` training images whose codes outside the mask agree most ("5 nearest by visible codes")."""
    import torch

    from adlib.models.ladmim import histogram

    def hists(c, mask):
        return torch.stack([histogram(c[:, level], mask.expand(len(c), -1), size) for level in range(c.shape[1])], 1)

    position, nearest = [], []
    for mask in masks:
        train_h, h = hists(train_codes, mask), hists(codes, mask)
        position.append((train_h.mean(0, keepdim=True) - h).abs().sum((1, 2)))
        visible_train = train_codes[:, :, ~mask]
        distance = torch.stack([(c[None, :, ~mask] != visible_train).float().mean((1, 2)) for c in codes])
        near = distance.topk(neighbours, dim=1, largest=False).indices
        nearest.append((train_h[near].mean(1) - h).abs().sum((1, 2)))
    return {"position only": torch.stack(position, 1).mean(1).numpy(),
            f"{neighbours} nearest by visible codes": torch.stack(nearest, 1).mean(1).numpy()}


def context(setting, run) -> None:
    """S_MIM against the no-ViT predictors, then what the codes keep of the fruit icon (see the docstring)."""
    import torch
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.preprocessing import OneHotEncoder

    from adlib import loco, study
    from adlib.data import AnomalyDataset
    from adlib.models.ladmim import score_components

    model, source = run.model.eval(), run.source
    train = study.datasets_for(source, setting, run.image_size)[0]  # the run's (capped) training images
    validation = AnomalyDataset(source.root, source.category, "validation", image_size=run.image_size)
    train_codes, val_codes, test_codes = _codes(model, train), _codes(model, validation), _codes(model, run.test)
    masks = model.test_masks()
    size = model.config.codebook_size
    errors = {"ViT (S_MIM)": (score_components(model, validation)["s_mim"], run.evaluation.parts["s_mim"])}
    val, test = no_vit_errors(train_codes, val_codes, masks, size), no_vit_errors(train_codes, test_codes, masks, size)
    errors.update({name: (val[name], test[name]) for name in val})
    groups, kinds = run.evaluation.groups, loco.anomaly_kinds(run.test)
    names = list(dict.fromkeys(k for k in kinds if k != loco.NORMAL))
    print(f"\nseed {run.seed}: Eq. 12's error under the model's {len(masks)} fixed test masks, on the validation "
          f"split's normal images and as the logical AUROC on the test set (%), overall and per kind")
    print(f"  {'predictor':<28}{'val error':>10}{'LA':>7}" + "".join(f"{n[:12]:>13}" for n in names))
    for name, (val_err, test_err) in errors.items():
        per = loco.per_kind(test_err, groups, kinds)
        la = loco.evaluate_groups(test_err, run.evaluation.labels, groups).logical
        print(f"  {name:<28}{np.mean(val_err):10.3f}{100 * la:7.1f}"
              + "".join(f"{100 * per[('logical', n)]:13.1f}" for n in names))

    # where the icon lies: the masks of the test images annotated missing_fruit_icon, on the token grid
    icon = [i for i, k in enumerate(kinds) if k == "missing_fruit_icon"]
    if not icon:
        print("  (no test image annotated missing_fruit_icon: the icon test is skipped)")
        return
    grid = model.config.grid
    region = torch.stack([run.test[i]["mask"] for i in icon]).amax(0)[None]
    cover = torch.nn.functional.adaptive_avg_pool2d(region, grid)[0, 0].flatten()
    tokens = cover >= 0.5 * cover.max()  # the tokens at least half as covered as the most covered one
    images = torch.stack([train[i]["image"] for i in range(len(train))])
    colour = images.mean((2, 3)).numpy()
    juice = KMeans(3, n_init=10, random_state=0).fit_predict(colour)
    counts = np.bincount(juice)
    print(f"  juice types of the {len(train)} training images (mean colour clusters): "
          + ", ".join(f"{n} images at RGB {np.round(colour[juice == t].mean(0), 2).tolist()}" for t, n in enumerate(counts)))
    accuracy = lambda x: cross_val_score(LogisticRegression(max_iter=3000), x, juice, cv=5).mean()
    codes = [OneHotEncoder(handle_unknown="ignore").fit_transform(train_codes[:, level, tokens].numpy())
             for level in range(train_codes.shape[1])]
    features = _features(model, train)[:, tokens].flatten(1).numpy()
    print(f"  juice type from the {int(tokens.sum())} icon tokens (5-fold logistic regression, chance "
          f"{counts.max() / counts.sum():.2f}): codes per level "
          f"{[round(float(accuracy(c)), 2) for c in codes]}, features {accuracy(features):.2f}")


if __name__ == "__main__":
    sys.exit(main())
