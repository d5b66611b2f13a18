"""ViTAD numbers: Table XIII's efficiency, the cost of the paper profile on this CPU, the smoke arrangement, and
the smoke targets.

    python benchmarks/vitad.py efficiency      # Tab. XIII parameters and FLOPs of the paper's architecture
    python benchmarks/vitad.py epoch-time      # DINO ViT-S/16 at 256 px (random weights: same cost) on this CPU
    python benchmarks/vitad.py arrangement     # how EfficientNet-Lite0 stages become ViTAD's columnar stages
    python benchmarks/vitad.py sizing          # the smoke decoder's width, depth and epochs against CPU time
    python benchmarks/vitad.py targets         # bottle one-class >= 95 pixel AUROC; multi-class vs PatchCore
    python benchmarks/vitad.py bottle-recipes  # smoke-recipe changes against the bottle target (3 seeds, all images)
    python benchmarks/vitad.py bottle          # bottle one-class at the smoke profile's real-data setting (256 px)
    python benchmarks/vitad.py bottle --image-size 128 192 256 --max-train 16 --epochs 3  # the plain recipe by size
    python benchmarks/vitad.py all

``targets`` and ``arrangement`` read the real MVTec AD bottle from ``$ADLIB_DATA/mvtec_ad`` and the embedded
``synthetic_multi`` set. Every fit is ``adlib.study.run_one`` (the notebooks' run path; training images capped
per category as the notebooks cap them, every test image); a fit the run cache holds is read (its times are those
it took; ``ADLIB_RUN_CACHE=0`` trains every one). Wall times on a shared 2-core machine are noisy: other jobs may
be running.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

PAPER_PARAMS_M, PAPER_FLOPS_G = 38.6, 10.7  # Table XIII, ViTAD row
BOTTLE_TARGET = 95.0  # pixel AUROC, one-class, mean of 3 seeds
MULTI_TARGET = 3.0  # points of mean pixel AUROC within PatchCore's, multi-class synthetic set


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def flops(model, image_size: int) -> dict[str, float]:
    """Multiply-adds of one ``predict`` on one image (FlopCounterMode counts 2 per multiply-add). On the CPU
    PyTorch runs attention as ``_scaled_dot_product_flash_attention_for_cpu``, which FlopCounterMode does not
    count; it is registered here with PyTorch's own attention formula."""
    import torch.utils.flop_counter as fc

    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if cpu_attention not in fc.flop_registry:
        fc.register_flop_formula(cpu_attention, get_raw=True)(fc.sdpa_flop)
    counter = fc.FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.predict(torch.rand(1, 3, image_size, image_size))
    by_op = {str(k): v / 2e9 for k, v in counter.get_flop_counts()["Global"].items()}
    return {"gmacs": counter.get_total_flops() / 2e9, **by_op}


def ader_module_params() -> dict[str, int]:
    """What ADer's ``vitad`` module holds (model/vitad.py: ``ViT_Encoder`` from timm's DINO ViT-S/16 built at
    img_size=256 without a head, ``Fusion`` = one Linear, ``ViT_Decoder`` = a whole timm VisionTransformer of
    depth 9 whose patch embedding, class token, final norm and 1000-class head are never used), built here with
    random weights. FLOPs and our model do not include the unused parts."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    encoder = timm.create_model("vit_small_patch16_224.dino", pretrained=False, img_size=256)
    fusion = torch.nn.Linear(384, 384)
    decoder = VisionTransformer(img_size=256, patch_size=16, embed_dim=384, depth=9, num_heads=6)
    decoder.pos_embed = torch.nn.Parameter(torch.zeros(1, 256, 384))  # ADer replaces it: no class-token slot
    unused = count(decoder.patch_embed) + decoder.cls_token.numel() + count(decoder.norm) + count(decoder.head)
    return {"encoder": count(encoder), "fusion": count(fusion), "decoder": count(decoder), "decoder_unused": unused}


def efficiency() -> dict:
    from adlib.models import create_model
    from adlib.models.vitad import parameter_groups

    torch.manual_seed(0)
    model = create_model("vitad", pretrained=False).eval()  # the paper's architecture, random weights
    ours = parameter_groups(model)
    total = sum(ours.values())
    ader = ader_module_params()
    ader_total = ader["encoder"] + ader["fusion"] + ader["decoder"]
    macs = flops(model, 256)
    print("Table XIII, ViTAD (DINO ViT-S/16, 256 px, random weights give exact counts)")
    print(f"  parameters, our model:          {total / 1e6:7.3f} M  (encoder {ours['encoder'] / 1e6:.3f} frozen, "
          f"fuser {ours['fuser'] / 1e6:.3f}, decoder {ours['decoder'] / 1e6:.3f}; trainable "
          f"{(ours['fuser'] + ours['decoder']) / 1e6:.3f})")
    print(f"  parameters, ADer's vitad module: {ader_total / 1e6:7.3f} M  (decoder parts never used: "
          f"{ader['decoder_unused'] / 1e6:.3f} M; encoder position embedding at 16x16: "
          f"{(ader['encoder'] - ours['encoder']) / 1e6:+.3f} M)   paper: {PAPER_PARAMS_M} M")
    print(f"  FLOPs (multiply-adds, fvcore's unit): {macs['gmacs']:.3f} G   paper: {PAPER_FLOPS_G} G")
    print("    by operation (G multiply-adds): " + ", ".join(f"{k} {v:.3f}" for k, v in macs.items() if k != "gmacs"))
    return {"params_m": total / 1e6, "ader_params_m": ader_total / 1e6, "flops_g": macs["gmacs"], "scales": scales()}


# Tab. IX's encoders (timm ids of the weights the paper's rows name; only the architecture matters here).
SCALES = {"ViT-T": "vit_tiny_patch16_224.augreg_in21k_ft_in1k", "ViT-S": "vit_small_patch16_224.augreg_in1k",
          "ViT-B": "vit_base_patch16_224.augreg_in1k", "ViT-L": "vit_large_patch16_224.augreg_in21k_ft_in1k",
          "ViT-H": "vit_huge_patch14_224.orig_in21k"}


def scales() -> dict:
    """Tab. IX: ViTAD's size per encoder scale (4 equal divisions, decoder width and heads following the encoder),
    built on the meta device: shapes without memory, so even ViT-H costs nothing. The paper prints no sizes."""
    import timm

    from adlib import backbones
    from adlib.models.vitad import ViTAD, ViTADConfig, parameter_groups

    out = {}
    print("Table IX scales at 256 px (the paper prints quality only; sizes computed here):")
    for name, timm_id in SCALES.items():
        with torch.device("meta"):
            net = timm.create_model(timm_id, pretrained=False, dynamic_img_size=True)
            taps = [len(net.blocks) // 4 * i for i in (1, 2, 3, 4)]
            encoder = backbones.FeatureExtractor(backbones.BackboneSpec(name, timm_id, "vit", tuple(taps)), net, taps)
            model = ViTAD(ViTADConfig(pretrained=False), encoder=encoder).eval()
            macs = flops(model, 256)["gmacs"]
        groups = parameter_groups(model)
        out[name] = {"params_m": sum(groups.values()) / 1e6, "trainable_m": (groups["fuser"] + groups["decoder"]) / 1e6,
                     "flops_g": macs}
        print(f"  {name}: taps {taps}, width {model.width}, {model.decoder.blocks[0].attn.heads} heads, "
              f"{model.grid[0]}x{model.grid[1]} tokens: {out[name]['params_m']:.1f} M parameters "
              f"({out[name]['trainable_m']:.1f} M trained), {macs:.1f} G multiply-adds")
    return out


def epoch_time(steps: int = 3, batch: int = 8) -> dict:
    """One training step of the paper recipe (DINO ViT-S/16 encoder forward without gradient, fuser and decoder
    forward and backward, AdamW, clip) timed on this CPU; the encoder's weights do not change the cost."""
    from adlib.models import create_model

    torch.manual_seed(0)
    model = create_model("vitad", pretrained=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    images = torch.rand(batch, 3, 256, 256)
    walls, cpus = [], []
    for i in range(steps + 1):
        start, cpu = time.perf_counter(), time.process_time()
        model.train()
        loss = model.loss(model.extract(images))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        if i:  # the first step warms up
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu)
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        model.predict(images)
    fps = batch / (time.perf_counter() - start)
    threads = torch.get_num_threads()
    step, step_cpu = statistics.median(walls), statistics.median(cpus)
    # CPU seconds / threads: the wall time the step would take with the cores to itself (others share them here)
    alone = step_cpu / threads
    print(f"DINO ViT-S/16 ViTAD at 256 px on this CPU ({threads} threads), batch {batch}: {step:.2f} s wall per "
          f"training step (median of {steps}; {step_cpu:.2f} CPU-s, i.e. {alone:.2f} s with {threads} free cores), "
          f"{fps:.1f} test images/s wall; load average {os.getloadavg()[0]:.1f}")
    out = {"step_s": step, "step_cpu_s": step_cpu, "step_alone_s": alone, "fps": fps}
    for name, images_per_epoch in (("MVTec AD", 3629), ("VisA", 8659)):
        epoch = alone * -(-images_per_epoch // batch)
        out[name] = epoch
        print(f"  {name} multi-class ({images_per_epoch} training images): {epoch / 60:.0f} min per epoch with "
              f"{threads} free cores, {epoch * 100 / 3600:.0f} h for the paper's 100 epochs "
              f"(paper: 1.1 h in all on one V100 for MVTec AD)")
    return out


# ----------------------------------------------------------------------------------------------- data


def _bottle(image_size: int = 256, max_train: int | None = 40) -> dict:
    """The real MVTec AD bottle (every test image), ``max_train`` training images spread evenly."""
    from adlib.study import DataSource

    root = Path(os.environ.get("ADLIB_DATA", "")) / "mvtec_ad"
    if not (root / "bottle").is_dir():
        raise SystemExit(f"MVTec AD bottle not found under {root}; set ADLIB_DATA (e.g. ADLIB_DATA=/work/shared/data)")
    return {"sources": [DataSource("MVTec AD", root, "bottle")], "image_size": image_size, "max_train": max_train}


def _multi(image_size: int = 256, max_train: int | None = None) -> dict:
    """The embedded ``synthetic_multi``, every category (one multi-class model), every test image."""
    from adlib.data import list_categories, synthetic_root
    from adlib.study import DataSource

    root = Path(synthetic_root()) / "synthetic_multi"
    return {"sources": [DataSource("synthetic_multi", root, c, synthetic=True) for c in list_categories(root)],
            "image_size": image_size, "max_train": max_train}


def _fit_eval(model_name: str, data: dict, seed: int, protocols=("exact",), recipe_profile: str = "smoke",
              fit_overrides: dict | None = None, **model_overrides) -> dict:
    """Fit ``model_name`` with its home recipe (``adlib.papers``) on ``data`` (``_bottle``/``_multi``) through
    ``adlib.study.run_one``, evaluate under ``protocols``."""
    from adlib.app.run import recipe_setting
    from adlib.study import run_one

    size = model_overrides.pop("image_size", None) or data["image_size"]
    sources = data["sources"]
    setting = recipe_setting(model_name, recipe_profile, image_size=size, max_train=data["max_train"],
                             class_setting="multi-class" if len(sources) > 1 else "one-class")
    run = run_one(setting, sources, model_name, seed=seed, protocols=protocols, **(fit_overrides or {}),
                  **model_overrides)
    fit = run.fit
    row = {"fit_s": fit.train_seconds, "fit_cpu_s": fit.cpu_seconds, "fit_alone_s": fit.cpu_seconds / torch.get_num_threads(),
           "eval_cpu_s": run.eval_cpu_seconds, "epochs": fit.epochs, "images": fit.train_images, "losses": fit.losses,
           "fit_from": run.fit_from, "test_images": len(run.evaluation.scores)}
    for p, ev in run.evaluations.items():
        row[p] = {"image_auroc": 100 * ev.image.get("auroc", float("nan")),
                  "pixel_auroc": 100 * ev.pixel.get("auroc", float("nan")),
                  "pixel_f1max": 100 * ev.pixel.get("f1max", float("nan")),
                  "pixel_aupro": 100 * ev.pixel.get("aupro", float("nan"))}
        if ev.categories:
            row[p]["per_category"] = {c: 100 * m.pixel.get("auroc", float("nan")) for c, m in ev.categories.items()}
    return row


def _cached(runs: list[dict]) -> str:
    """" (n of the fits read from the run cache)" when any was."""
    n = sum(r["fit_from"] == "cache" for r in runs)
    return f" ({n} of the fits read from the run cache)" if n else ""


# ---------------------------------------------------------------------------------------- arrangement

# How a pyramidal CNN (EfficientNet-Lite0 feature stages 0-4: strides 2/4/8/16/32, widths 16/24/40/112/320)
# becomes ViTAD's columnar encoder. Every candidate runs ViTAD's fuser, 9-block decoder, Cos_f loss and scoring.
ARRANGEMENTS = {
    "stages 1-3 <- 4 on the stride-16 grid (chosen)": {},
    "stages 1-3 <- 4 on the stride-8 grid": {"cnn_stride": 8},
    "stages 2-3 <- 4 on the stride-16 grid": {"restraint_stages": (2, 3), "decoder_divisions": (3, 3)},
    "stages 1-3 <- 4, decoder 3x2 (Tab. X)": {"decoder_divisions": (2, 2, 2)},
    "stages 1-3 <- 4, random CNN weights": {"pretrained": False},
    # The paper's own architecture with a random, frozen ViT-S/16 (Tab. I "Rand"), at 128 px (8 x 8 tokens).
    "random ViT-S/16 (Tab. I Rand), 128 px": {"backbone": "dino_vits16", "pretrained": False, "decoder_dim": None,
                                              "decoder_heads": None, "image_size": 128},
}


def arrangement(seeds=(0,)) -> dict:
    data = {256: _bottle()}
    rows = {}
    print("Columnar arrangement of EfficientNet-Lite0 for ViTAD, MVTec AD bottle one-class (40 training images, "
          "83 test images, 256 px unless stated, smoke recipe otherwise), exact protocol")
    for label, overrides in ARRANGEMENTS.items():
        size = overrides.get("image_size", 256)
        if size not in data:
            data[size] = _bottle(size)
        runs = [_fit_eval("vitad", data[size], seed, **overrides) for seed in seeds]
        px = statistics.mean(r["exact"]["pixel_auroc"] for r in runs)
        img = statistics.mean(r["exact"]["image_auroc"] for r in runs)
        pro = statistics.mean(r["exact"]["pixel_aupro"] for r in runs)
        fit_s = statistics.mean(r["fit_alone_s"] for r in runs)
        rows[label] = {"pixel_auroc": px, "image_auroc": img, "pixel_aupro": pro, "fit_alone_s": fit_s}
        print(f"  {label:50s} pixel AUROC {px:5.1f}  AU-PRO {pro:5.1f}  image AUROC {img:5.1f}  "
              f"fit {fit_s:5.0f} s with free cores{_cached(runs)}", flush=True)
    return rows


# --------------------------------------------------------------------------------------------- sizing

# The smoke decoder's size: what a CPU minute buys (multi-class synthetic_multi, 4 x 30 training images).
SIZES = {
    "width 192, 3 heads, 3x3 blocks, 5 epochs": {"decoder_dim": 192, "decoder_heads": 3},
    "width 128, 2 heads, 3x3 blocks, 5 epochs": {"decoder_dim": 128, "decoder_heads": 2},
    "width 128, 2 heads, 3x3 blocks, 3 epochs": {"decoder_dim": 128, "decoder_heads": 2, "epochs": 3},
    "width 192, 3 heads, 3x2 blocks, 5 epochs": {"decoder_dim": 192, "decoder_heads": 3, "decoder_divisions": (2, 2, 2)},
}


def sizing(seeds=(0,), sizes=None) -> dict:
    data = _multi()
    rows = {}
    print("Smoke decoder size, multi-class synthetic_multi (4 categories, 120 training images, 256 px), exact protocol")
    for label in sizes or SIZES:
        overrides = dict(SIZES[label])
        fit = {"epochs": overrides.pop("epochs")} if "epochs" in overrides else None
        runs = [_fit_eval("vitad", data, seed, fit_overrides=fit, **overrides) for seed in seeds]
        rows[label] = {k: statistics.mean(r["exact"][k] for r in runs) for k in ("pixel_auroc", "image_auroc", "pixel_aupro")}
        rows[label]["fit_alone_s"] = statistics.mean(r["fit_alone_s"] for r in runs)
        row = rows[label]
        print(f"  {label:45s} pixel AUROC {row['pixel_auroc']:5.1f}  AU-PRO {row['pixel_aupro']:5.1f}  image AUROC "
              f"{row['image_auroc']:5.1f}  fit {row['fit_alone_s']:4.0f} s with free cores", flush=True)
    return rows


# -------------------------------------------------------------------------------------------- targets


SUBSTITUTION = ("smoke recipe (adlib.papers.vitad): offline ImageNet EfficientNet-Lite0 stages 1-4 made columnar on "
                "the stride-16 grid stand in for the paper's DINO ViT-S/16 blocks 3/6/9/12")


def targets(seeds=(0, 1, 2)) -> dict:
    """The targets at the smoke profile's size and training-image cap (adlib.papers.vitad SMOKE), all test images;
    bottle at the profile's real-data setting."""
    from adlib import papers

    smoke = papers.get("vitad").profile("smoke")
    size, cap = smoke.image_size, smoke.max_train
    print(f"Smoke targets, {SUBSTITUTION}; {size} px, at most {cap} training images per category, all test images")
    out = {}
    data = _multi(size, cap)
    runs_by_method = {}
    for name, model_name in (("ViTAD", "vitad"), ("PatchCore", "patchcore")):
        runs_by_method[name] = []
        for seed in seeds:
            r = _fit_eval(model_name, data, seed, protocols=("exact", "ader"), image_size=size)
            runs_by_method[name].append(r)
            cats = ", ".join(f"{c} {v:.1f}" for c, v in r["exact"]["per_category"].items())
            print(f"  {name:9s} multi-class seed {seed}: mean pixel AUROC {r['exact']['pixel_auroc']:.1f} (ader "
                  f"{r['ader']['pixel_auroc']:.1f}; {cats}), image AUROC {r['exact']['image_auroc']:.1f}, "
                  f"fit {r['fit_s']:.0f} s wall / {r['fit_alone_s']:.0f} s with free cores ({r['epochs']} epochs x "
                  f"{r['images']} images){_cached([r])}", flush=True)
    vitad, patchcore = runs_by_method["ViTAD"], runs_by_method["PatchCore"]
    summary = {}
    for protocol in ("exact", "ader"):
        v = statistics.mean(r[protocol]["pixel_auroc"] for r in vitad)
        p = statistics.mean(r[protocol]["pixel_auroc"] for r in patchcore)
        summary[protocol] = {"vitad": v, "patchcore": p, "gap": v - p}
        print(f"multi-class synthetic_multi ({protocol}): ViTAD {v:.1f} vs PatchCore {p:.1f} mean pixel AUROC over "
              f"seeds {list(seeds)}, gap {v - p:+.1f} (target: within {MULTI_TARGET}): "
              f"{'met' if v >= p - MULTI_TARGET else 'NOT met'}", flush=True)
    out["multi"] = {"summary": summary, "vitad": vitad, "patchcore": patchcore}

    # the real category at the profile's real-data setting (grids["real_data"], as notebooks/vitad/01 runs it)
    real = dict(smoke.grids.get("real_data", {}))
    size, cap = real.get("image_size", size), real.get("max_train", cap)
    fit = {"epochs": real["epochs"]} if "epochs" in real else {}
    print(f"  bottle at the profile's real-data setting: {size} px, at most {cap} training images, all test images, "
          f"epochs {fit.get('epochs', 'of the recipe')}")
    data = _bottle(size, cap)
    runs = []
    for seed in seeds:
        runs.append(_fit_eval("vitad", data, seed, protocols=("exact", "ader"), fit_overrides=fit,
                              image_size=size))
        r = runs[-1]
        print(f"  bottle one-class seed {seed}: pixel AUROC {r['exact']['pixel_auroc']:.1f} (ader "
              f"{r['ader']['pixel_auroc']:.1f}), image AUROC {r['exact']['image_auroc']:.1f}, fit {r['fit_s']:.0f} s "
              f"wall / {r['fit_alone_s']:.0f} s with free cores ({r['epochs']} epochs x {r['images']} images)"
              f"{_cached([r])}", flush=True)
    mean = statistics.mean(r["exact"]["pixel_auroc"] for r in runs)
    out["bottle"] = {"pixel_auroc": mean, "runs": runs}
    print(f"ViTAD one-class on real bottle: mean pixel AUROC {mean:.1f} over seeds {list(seeds)} "
          f"(target >= {BOTTLE_TARGET}): {'met' if mean >= BOTTLE_TARGET else 'NOT met'}", flush=True)
    return out


# Smoke-recipe changes tried against the bottle target: (training-image cap, FitConfig overrides, model overrides).
BOTTLE_RECIPES = {
    "smoke recipe (3 epochs, batch 8)": (None, {}, {}),
    "batch 4": (None, {"batch_size": 4}, {}),
    "5 epochs": (None, {"epochs": 5}, {}),
    "batch 4, 5 epochs": (None, {"batch_size": 4, "epochs": 5}, {}),
    "batch 4, 10 epochs": (None, {"batch_size": 4, "epochs": 10}, {}),
    "2 epochs": (None, {"epochs": 2}, {}),
    "lr 1e-3": (None, {"lr": 1e-3}, {}),
    "lr 2e-4": (None, {"lr": 2e-4}, {}),
    "32 training images": (32, {}, {}),
    "32 training images, batch 4": (32, {"batch_size": 4}, {}),
    "stride-8 grid (16 x 16 tokens)": (None, {}, {"cnn_stride": 8}),
    "restraint stages 2+3": (None, {}, {"restraint_stages": (2, 3), "decoder_divisions": (3, 3)}),
    "CNN taps 0-3 (strides 2-16)": (None, {}, {"layers": (0, 1, 2, 3)}),
    "decoder 192 wide, 3 heads": (None, {}, {"decoder_dim": 192, "decoder_heads": 3}),
    "smoothing sigma 2": (None, {}, {"smoothing_sigma": 2.0}),
    "smoothing sigma 8": (None, {}, {"smoothing_sigma": 8.0}),
    "loss Cos_p": (None, {}, {"loss": "cos_pos"}),
    "40 training images": (40, {}, {}),
    "40 training images, 5 epochs": (40, {"epochs": 5}, {}),
    "40 training images, 5 epochs, decoder 192 wide": (40, {"epochs": 5}, {"decoder_dim": 192, "decoder_heads": 3}),
}


def bottle_recipes(seeds=(0, 1, 2), only=None, image_size: int | None = None) -> dict:
    """Each change of the smoke recipe on bottle one-class at the profile's size (or ``image_size``), all test
    images, exact protocol."""
    from adlib import papers

    smoke = papers.get("vitad").profile("smoke")
    size = image_size or smoke.image_size
    print(f"ViTAD bottle one-class, {size} px, all 83 test images, seeds {list(seeds)}; {SUBSTITUTION}")
    out, data = {}, {}
    for label, (cap, fit, model) in BOTTLE_RECIPES.items():
        if only and label not in only:
            continue
        cap = cap or smoke.max_train
        if cap not in data:
            data[cap] = _bottle(size, cap)
        runs = [_fit_eval("vitad", data[cap], seed, fit_overrides=fit, image_size=size, **model) for seed in seeds]
        px = [r["exact"]["pixel_auroc"] for r in runs]
        out[label] = {"pixel_auroc": statistics.mean(px), "per_seed": px,
                      "fit_alone_s": statistics.mean(r["fit_alone_s"] for r in runs)}
        print(f"  {label:46s} pixel AUROC {out[label]['pixel_auroc']:5.1f} (seeds {', '.join(f'{v:.1f}' for v in px)})"
              f"  fit {out[label]['fit_alone_s']:4.1f} s  target >= {BOTTLE_TARGET}: "
              f"{'met' if out[label]['pixel_auroc'] >= BOTTLE_TARGET else 'not met'}{_cached(runs)}", flush=True)
    return out


def bottle(sizes=None, seeds=(0, 1, 2), max_train: int | None = None, epochs: int | None = None) -> dict:
    """The smoke recipe (adlib.papers.vitad) on bottle one-class at each size, all test images, exact and ader
    protocols: pixel AUROC per seed and CPU seconds per fit and per evaluation (process CPU time; with
    OMP_NUM_THREADS=1 that is the wall time of one idle core). Defaults: the smoke profile's setting for real
    data (``grids["real_data"]``: what notebooks/vitad/01_main_results runs on bottle)."""
    from adlib import papers

    smoke = papers.get("vitad").profile("smoke")
    real = dict(smoke.grids.get("real_data", {}))
    sizes = sizes or (real.get("image_size", smoke.image_size),)
    cap = max_train or real.get("max_train", smoke.max_train)
    fit = {"epochs": epochs or real["epochs"]} if (epochs or "epochs" in real) else {}
    threads = torch.get_num_threads()
    epoch_note = f" with {fit['epochs']} epochs" if fit else ""
    print(f"ViTAD bottle one-class, smoke recipe{epoch_note}, "
          f"at most {cap} training images, all test images, seeds {list(seeds)}, {threads} torch thread(s); "
          f"{SUBSTITUTION}")
    out = {}
    for size in sizes:
        runs = [_fit_eval("vitad", _bottle(size, cap), seed, protocols=("exact", "ader"), fit_overrides=fit,
                          image_size=size) for seed in seeds]
        px = [r["exact"]["pixel_auroc"] for r in runs]
        ader = [r["ader"]["pixel_auroc"] for r in runs]
        grid = size // 16
        row = {"pixel_auroc": statistics.mean(px), "per_seed": px, "ader_pixel_auroc": statistics.mean(ader),
               "image_auroc": statistics.mean(r["exact"]["image_auroc"] for r in runs),
               "pixel_aupro": statistics.mean(r["exact"]["pixel_aupro"] for r in runs),
               "fit_cpu_s": statistics.mean(r["fit_cpu_s"] for r in runs),
               "eval_cpu_s": statistics.mean(r["eval_cpu_s"] for r in runs)}
        out[size] = row
        print(f"  {size:3d} px ({grid} x {grid} tokens, {runs[0]['test_images']} test images): pixel AUROC {row['pixel_auroc']:5.1f} "
              f"(seeds {', '.join(f'{v:.1f}' for v in px)}; ader {row['ader_pixel_auroc']:.1f}), AU-PRO "
              f"{row['pixel_aupro']:.1f}, image AUROC {row['image_auroc']:.1f}; {row['fit_cpu_s']:.1f} CPU-s per fit "
              f"({runs[0]['epochs']} epochs x {runs[0]['images']} images), {row['eval_cpu_s']:.1f} CPU-s per "
              f"evaluation; target >= {BOTTLE_TARGET}: {'met' if row['pixel_auroc'] >= BOTTLE_TARGET else 'NOT met'}"
              f"{_cached(runs)}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["efficiency", "epoch-time", "arrangement", "sizing", "targets", "bottle-recipes",
                                         "bottle", "all"])
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--image-size", type=int, nargs="+", default=None,
                        help="bottle: the sizes to run (default: the smoke profile's); bottle-recipes: the first one")
    parser.add_argument("--only", nargs="+", default=None, help="bottle-recipes: run only these labels")
    parser.add_argument("--max-train", type=int, default=None, help="bottle: training images (default: the profile's "
                                                                     "real-data cap)")
    parser.add_argument("--epochs", type=int, default=None, help="bottle: epochs (default: the profile's real-data epochs)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    # OMP_NUM_THREADS when set (the timing rule: 1), else up to 2 threads
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))
    out = {}
    if args.what in ("efficiency", "all"):
        out["efficiency"] = efficiency()
    if args.what in ("epoch-time", "all"):
        out["epoch_time"] = epoch_time()
    if args.what in ("arrangement", "all"):
        out["arrangement"] = arrangement(tuple(args.seeds or (0,)))
    if args.what in ("sizing", "all"):
        out["sizing"] = sizing(tuple(args.seeds or (0,)))
    if args.what in ("targets", "all"):
        out["targets"] = targets(tuple(args.seeds or (0, 1, 2)))
    if args.what == "bottle-recipes":
        out["bottle_recipes"] = bottle_recipes(tuple(args.seeds or (0, 1, 2)), only=args.only,
                                               image_size=(args.image_size or [None])[0])
    if args.what == "bottle":
        out["bottle"] = bottle(args.image_size, tuple(args.seeds or (0, 1, 2)), args.max_train, args.epochs)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
