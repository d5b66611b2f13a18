"""MambaAD (He et al., NeurIPS 2024): state space models for multi-class unsupervised anomaly detection.

The paper's spec for the notebooks in ``notebooks/mambaad/``: profiles, recipes, tables, figures and the claims
the notebooks decide over seeds. The model is ``adlib/models/mambaad.py``; the printed numbers are
``results/paper/mambaad/table1.csv`` ... ``table5.csv``, ``tableA1.csv`` ... ``tableA12.csv``
(``benchmarks/mambaad_paper_tables.py``).

The paper trains one model per dataset (multi-class) and evaluates with ADer's evaluator (protocol "ader");
both profiles keep that. The smoke profile swaps ResNet34 (no ImageNet weights offline) for the offline
EfficientNet-Lite0 tapped at the same strides 4/8/16 (stages 1-3: 24/40/112 channels, which size the H-FPN
and the decoder) and runs at 128 px with the decoder depths 2-2-2-2 (Tab. 2's smallest) and the HSS inner
width at 1x the channels (release: 3-4-6-3 and 2x), so that one multi-class fit takes about 40 s of CPU;
every output names the substitution (``paper_backbone``).

Variant grids (``ProfileSpec.grids``) map the label a table row carries (the ``setting`` column of the paper's
CSVs) to config overrides; ``<table>_not_run`` says why a row cannot run in that profile. Table 2's rows all
get parameter and FLOP counts with random weights (``table2_cost``), whatever can be trained.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from adlib.engine import FitConfig
from adlib.papers import peers
from adlib.study.spec import Claim, Floor, NotebookRuns, PaperSpec, ProfileSpec, Recipe, Side, TableSpec, TrainTime

if TYPE_CHECKING:
    import pandas as pd

# ------------------------------------------------------------------------------------------- variant grids

# Tab. 2: backbone x decoder depth, labelled backbone=<adlib name>,depths=a-b-c-d.
_TABLE2_ROWS = (("resnet18", (2, 2, 2, 2)), ("resnet18", (3, 4, 6, 3)), ("resnet34", (2, 2, 2, 2)),
                ("resnet34", (2, 9, 2, 2)), ("resnet34", (3, 4, 6, 3)), ("resnet50", (3, 4, 6, 3)),
                ("wide_resnet50", (3, 4, 6, 3)))


def _tab2_label(backbone: str, depths: tuple[int, ...]) -> str:
    return f"backbone={backbone},depths={'-'.join(map(str, depths))}"


_TABLE2_COST = {_tab2_label(b, d): {"backbone": b, "depths": d, "pretrained": False, "image_size": 256}
                for b, d in _TABLE2_ROWS}
# On the smoke profile the depth rows run on the substitute encoder; the other backbones need hub weights.
_TABLE2_SMOKE = {_tab2_label("resnet34", d): {"depths": d} for b, d in _TABLE2_ROWS if b == "resnet34"}
_TABLE2_SMOKE_NOT_RUN = {_tab2_label(b, d): f"ImageNet {b} weights need the timm hub (no network here); its "
                                            f"parameters and FLOPs are counted with random weights"
                         for b, d in _TABLE2_ROWS if b != "resnet34"}
_TABLE2_PAPER = {_tab2_label(b, d): {"backbone": b, "depths": d} for b, d in _TABLE2_ROWS}

# Tab. 3: scan methods and directions, labelled scan=<methods>,dirs=<total> (the config values themselves).
_TABLE3_ROWS = (("sweep", 8), ("scan", 8), ("zorder", 8), ("zigzag", 8), ("hilbert", 2), ("hilbert", 4),
                ("hilbert", 8), ("zigzag+hilbert", 8), ("zorder+hilbert", 8), ("scan+hilbert", 8),
                ("sweep+hilbert", 8), ("scan+zorder+zigzag+hilbert", 8))
_TABLE3 = {f"scan={s},dirs={n}": {"scan": s, "directions": n} for s, n in _TABLE3_ROWS}
# Not a printed row: the eight distinct directions the printed Fig. 3(a) draws (the release repeats two).
_FIGURE_DIRECTIONS = {"scan=hilbert,dirs=8,set=figure": {"direction_set": "figure"}}

# Tab. 4: LSS designs, labelled hss=<M_i>,skip=<residual>,local=<dw|dw+1x1>,k=<kernels>.
_TABLE4_ROWS = (
    ("1", "yes", "dw", (1, 3)), ("1", "yes", "dw", (3, 5)), ("1", "yes", "dw", (5, 7)), ("1", "yes", "dw", (1, 3, 5)),
    ("1", "yes", "dw", (3, 5, 7)), ("1", "yes", "dw", (1, 3, 5, 7)), ("1", "yes", "dw+1x1", (3, 5)),
    ("1", "yes", "dw+1x1", (5, 7)), ("1", "yes", "dw+1x1", (3, 5, 7)),
    ("1", "no", "dw", (3, 5)), ("1", "no", "dw", (5, 7)), ("1", "no", "dw", (3, 5, 7)),
    ("1", "no", "dw+1x1", (3, 5)), ("1", "no", "dw+1x1", (5, 7)), ("1", "no", "dw+1x1", (3, 5, 7)),
    ("2/3", "yes", "dw", (3, 5)), ("2/3", "yes", "dw", (5, 7)), ("2/3", "yes", "dw", (3, 5, 7)),
    ("2/3", "yes", "dw+1x1", (3, 5)), ("2/3", "yes", "dw+1x1", (5, 7)), ("2/3", "yes", "dw+1x1", (3, 5, 7)),
)


def _tab4_label(hss: str, skip: str, local: str, kernels: tuple[int, ...]) -> str:
    return f"hss={hss},skip={skip},local={local},k={'+'.join(map(str, kernels))}"


_TABLE4 = {_tab4_label(h, s, l, k): {"hss_per_lss": 1 if h == "1" else None, "residual": s == "yes",
                                     "local_conv": l, "kernel_sizes": k} for h, s, l, k in _TABLE4_ROWS}
DEFAULT_SETTINGS = {"table2": _tab2_label("resnet34", (3, 4, 6, 3)), "table3": "scan=hilbert,dirs=8",
                    "table4": _tab4_label("2/3", "yes", "dw+1x1", (5, 7))}

SMOKE = ProfileSpec(
    description="2-core CPU in minutes: one multi-class model over the embedded synthetic_multi categories (+ real "
                "MVTec AD bottle when present), the offline ImageNet EfficientNet-Lite0 at strides 4/8/16 for "
                "ResNet34, 128 px, decoder depths 2-2-2-2, HSS inner width 1x, <= 20 training and <= 40 test "
                "images per category, ADer's evaluator",
    image_size=128,
    backbone="efficientnet_lite0",
    paper_backbone="resnet34",
    max_train=20,
    max_test=40,
    seeds=(0, 1, 2),
    synthetic=("synthetic_multi",),
    synthetic_categories=None,
    real_datasets=("mvtec_ad",),
    real_categories=("bottle",),
    class_setting="multi-class",
    protocol="ader",
    shared_backbone=True,
    grids={
        "table2": _TABLE2_SMOKE, "table2_not_run": _TABLE2_SMOKE_NOT_RUN, "table2_cost": _TABLE2_COST,
        "table3": {**_TABLE3, **_FIGURE_DIRECTIONS}, "table4": _TABLE4,
        "defaults": DEFAULT_SETTINGS,
        # Tables 2-4 have 40 rows: on a CPU a subset runs one-class on one embedded category (its images decode
        # in a fraction of bottle's 900 px PNGs, and its image AUROC is not saturated as bottle's is), over the
        # profile's seeds, 2 epochs at batch 2 (20 optimiser steps; one such fit is about 5 s of CPU); the rest
        # is recorded as not run.
        "ablation": {"dataset": "synthetic_multi", "categories": ("pill",), "class_setting": "one-class",
                     "max_train": 20, "max_test": None, "epochs": 2, "batch_size": 2, "image_size": 128},
        # The linear-complexity claim: decoder time against the token count (finest map) at these sizes.
        "complexity_sizes": (128, 192, 256, 320),
        "non_power_of_two_size": 224,  # 56/28/14/7 maps: the release's scan index cannot be built there
    },
)

PAPER_PROFILE = ProfileSpec(
    description="the paper's settings on one GPU (Sec. 4.1): ResNet34 layers 1-3 at 256 px, decoder [3,4,6,3], "
                "Hilbert scan with 8 directions, AdamW lr 0.005 wd 1e-4, batch 16, 500 epochs, multi-class on all "
                "categories of each dataset, ADer's evaluator",
    image_size=256,
    backbone="resnet34",
    paper_backbone="resnet34",
    max_train=None,
    max_test=None,
    seeds=(0, 1, 2),
    synthetic=("synthetic_multi",),
    synthetic_categories=None,
    real_datasets=("mvtec_ad", "visa", "real_iad", "uni_medical", "mvtec_3d", "coco_ad"),
    real_categories=None,
    class_setting="multi-class",
    protocol="ader",
    shared_backbone=False,
    grids={
        "table2": _TABLE2_PAPER, "table2_cost": _TABLE2_COST,
        "table3": {**_TABLE3, **_FIGURE_DIRECTIONS}, "table4": _TABLE4,
        "defaults": DEFAULT_SETTINGS,
        "ablation": {"categories": None, "class_setting": "multi-class", "max_train": None, "max_test": None,
                     "epochs": None, "batch_size": None, "image_size": 256},
        "complexity_sizes": (128, 256, 384, 512),
        "non_power_of_two_size": 224,
    },
)

# The paper's own training times (for `adlib reproduce --plan`): Sec. 4.1 states 500 epochs on one V100 32GB and no
# duration; it prints no training time for any method.
TRAIN_TIMES = {model: TrainTime(None, "dataset", "one V100 32GB", "Sec. 4.1", "not stated: 500 epochs on one V100, "
                                "no duration given") for model in ("mambaad", "patchcore", "rd4ad", "uniad")}
NOTEBOOK_RUNS = {
    "00_method": NotebookRuns(note="architecture, parameters and decoder timing on random inputs: no fit"),
    "01_main_results": NotebookRuns(("mambaad", "patchcore", "rd4ad", "uniad")),
    "02_ablations": NotebookRuns(("mambaad",), ("table3", "table4", "table2_cost"),
                                 weights=("resnet18", "resnet50", "wide_resnet50")),
}

# ------------------------------------------------------------------------------------------------ recipes

RECIPES = {
    # Sized so that all MambaAD notebooks fit 6 minutes on 2 idle cores (measured single-threaded CPU, 128 px: a
    # training image costs 0.16 s at depths 3-4-6-3 and 0.09 s at 2-2-2-2; one multi-class fit of 100 images x 3
    # epochs is about 40 s of CPU, pixel AUROC 97.3 on synthetic_multi, 97.9 on bottle); expand 1 halves the HSS
    # width (the selective scan is most of the cost).
    ("mambaad", "smoke"): Recipe(
        model={"backbone": "efficientnet_lite0", "layers": (1, 2, 3), "image_size": 128, "expand": 1,
               "depths": (2, 2, 2, 2)},
        fit=FitConfig(epochs=3, batch_size=4, lr=0.005, weight_decay=1e-4, betas=(0.9, 0.999), schedule="step",
                      step_at=0.8, step_gamma=0.1),
        notes={"backbone": "offline ImageNet EfficientNet-Lite0 stages 1-3 (strides 4/8/16, 24/40/112 channels) "
                           "instead of ResNet34 layers 1-3 (no hub weights offline); the H-FPN and decoder widths "
                           "follow the encoder (224 -> 112/40/24 instead of 512 -> 256/128/64)",
               "image_size": "128 px instead of 256 (CPU): maps 32/16/8, bottleneck 4 x 4",
               "depths": "2-2-2-2 (Tab. 2's smallest decoder, one LSS of 2 HSS per stage) instead of 3-4-6-3: "
                         "half the decoder's cost per image (CPU)",
               "expand": "HSS inner width 1x the channels instead of 2x (CPU)",
               "epochs": "3 instead of 500 (CPU)", "batch_size": "4 instead of 16: more steps in few epochs"},
    ),
    # Sec. 4.1 and the release's configs/mambaad/mambaad_mvtec.py: AdamW lr 0.005, wd 1e-4, betas 0.9/0.999,
    # batch 16 (release; paper silent), lr x 0.1 after 80% of the steps (release; paper silent).
    ("mambaad", "paper"): Recipe(
        model={"backbone": "resnet34", "layers": (1, 2, 3), "image_size": 256},
        fit=FitConfig(epochs=500, batch_size=16, lr=0.005, weight_decay=1e-4, betas=(0.9, 0.999), schedule="step",
                      step_at=0.8, step_gamma=0.1),
        notes={"epochs": "500 as the paper states (Sec. 4.1); the released config trains 1000 (repro_spec §2.8.1). "
                         "The paper's number is the one its tables claim; 1000 is the variant 'epochs=1000'",
               "batch_size": "16, the release's (the paper is silent)",
               "schedule": "x0.1 at 80% of the steps, the release's (the paper is silent)",
               "evaluation": "the last epoch (the release evaluates at the end; the paper does not say it "
                             "selected an epoch)",
               "seed": "the claims use seeds 0, 1, 2; the paper reports one run"},
    ),
    **peers.RECIPES,
}

# -------------------------------------------------------------------------------------------------- tables

# The compared methods' own encoders (the paper copies their numbers; repro_spec §2.8.12).
_BACKBONES = {"MambaAD": "resnet34", "RD4AD": "wide_resnet50", "UniAD": "efficientnet_b4",
              "SimpleNet": "wide_resnet50", "DeSTSeg": "resnet18", "PatchCore": "wide_resnet50"}
_MUAD = dict(image_size=256, protocol="ader", class_setting="multi-class")
_PER_CATEGORY = dict(_MUAD, backbones=_BACKBONES, rows=("dataset",), columns=("method", "metric"))
_ABLATION = dict(_MUAD, backbones={"MambaAD": "resnet34"}, rows=("setting",), columns=("level", "metric"))

TABLES = {
    "table1": TableSpec("Table 1: multi-class results on MVTec AD, VisA, Uni-Medical and Real-IAD (7 metrics, mAD)",
                        **_MUAD, backbones=_BACKBONES, rows=("dataset", "method"), columns=("level", "metric"),
                        note="Table 1's VisA UniAD row is ViTAD's (the appendix Mean differs) and its Uni-Medical "
                             "DiAD row is not the appendix Mean (repro_spec §2.8.5-6)"),
    "table2": TableSpec("Table 2: pre-trained backbone and Mamba decoder depth (MVTec AD), with parameters and FLOPs",
                        **{**_ABLATION, "backbones": {}},
                        note="the backbone is the row's own; parameters count the whole model (the frozen encoder "
                             "to layer 3, the H-FPN, the decoder) and the release's scan indices; FLOPs are "
                             "multiply-adds plus norms as fvcore counts them, the selective scan not counted"),
    "table3": TableSpec("Table 3: scanning methods and directions (MVTec AD)", **_ABLATION,
                        note="the paper does not say which directions each method gives in the mixed rows 8-12; "
                             "adlib takes the first ones of its list"),
    "table4": TableSpec("Table 4: LSS designs: HSS blocks per LSS, local convolutions, kernel sizes, residual "
                        "(MVTec AD)", **_ABLATION),
    "table5": TableSpec("Table 5: efficiency: parameters, FLOPs and mAD of the compared methods", image_size=256,
                        backbones=_BACKBONES, rows=("method",), columns=("level", "metric"),
                        note="DeSTSeg's and SimpleNet's mAD are swapped against Table 1 (repro_spec §2.8.4); "
                             "costs of the other methods are ViTAD's Tab. XIII"),
    "tableA1": TableSpec("Table A1: MVTec AD, image level per category", **_PER_CATEGORY),
    "tableA2": TableSpec("Table A2: MVTec AD, pixel level per category", **_PER_CATEGORY,
                         note="SimpleNet Capsule AP 5.4 is a typo for 35.4; RD4AD's and UniAD's Grid and Metal Nut "
                              "rows do not fit their Means (repro_spec §2.8.7)"),
    "tableA3": TableSpec("Table A3: VisA, image level per category", **_PER_CATEGORY,
                         note="RD4AD macaroni1 AP 1.5 does not fit its Mean (about 61.5)"),
    "tableA4": TableSpec("Table A4: VisA, pixel level per category", **_PER_CATEGORY,
                         note="DeSTSeg capsules F1 9.1 does not fit its Mean (about 39.1)"),
    "tableA5": TableSpec("Table A5: MVTec 3D-AD, image level per category", **_PER_CATEGORY,
                         note="whether depth is used is not stated"),
    "tableA6": TableSpec("Table A6: MVTec 3D-AD, pixel level per category (printed caption: 'detection')",
                         **_PER_CATEGORY, note="RD4AD tire AP 3.2 does not fit its Mean (about 23.2)"),
    "tableA7": TableSpec("Table A7: Uni-Medical, image level per category (printed caption: 'localization')",
                         **_PER_CATEGORY, note="DiAD's rows are SimpleNet's; UniAD's liver row is RD4AD's"),
    "tableA8": TableSpec("Table A8: Uni-Medical, pixel level per category", **_PER_CATEGORY,
                         note="DiAD's Mean is SimpleNet's Mean"),
    "tableA9": TableSpec("Table A9: COCO-AD, image level per subset", **_PER_CATEGORY),
    "tableA10": TableSpec("Table A10: COCO-AD, pixel level per subset", **_PER_CATEGORY),
    "tableA11": TableSpec("Table A11: Real-IAD, image level per category", **_PER_CATEGORY),
    "tableA12": TableSpec("Table A12: Real-IAD, pixel level per category", **_PER_CATEGORY),
    "complexity": TableSpec("Decoder time against the number of tokens (the linear-complexity claim; not a printed "
                            "table)", rows=("method", "setting"), columns=("metric",),
                            note="wall times on the machine that ran them: exponents are compared, never seconds"),
}

FIGURES = {
    "fig1": "Fig. 1: RD4AD (local CNN), UniAD (global Transformer) and MambaAD (schematic)",
    "fig2": "Fig. 2: the MambaAD framework, LSS module, HSS block and ConvB (schematic, drawn from the model)",
    "fig3": "Fig. 3: hybrid scanning: (a) Hilbert in 8 directions, (b) Sweep, Scan, Z-order, Zigzag (8 x 8 grid)",
    "fig4": "Fig. 4: anomaly maps of the compared methods on MVTec AD (and VisA) test images",
}

# -------------------------------------------------------------------------------------------------- claims


def _side(label: str, **where) -> Side:
    return Side(label, where)


_PEERS = (_side("RD4AD", method="RD4AD"), _side("UniAD", method="UniAD"), _side("PatchCore", method="PatchCore"))
_T4_DEFAULT = DEFAULT_SETTINGS["table4"]
# When MambaAD counts as working (adlib.study.spec.Floor): above chance against the peers; for its scan and LSS
# ablations also half the best other method's value on the same images where one ran.
_WORKS = Floor(why="MambaAD must detect something on these images: above chance")
_WORKS_LIKE_A_PEER = Floor(of_best_peer=0.5, why="an ablation is read only where MambaAD works: above chance and at "
                                                 "half the best other method's value")

CLAIMS = (
    Claim("beats_peers_multiclass", "MambaAD outperforms the compared methods in the multi-class setting "
          "(Table 1: mAD 86.0 on MVTec AD against RD4AD 82.3 and UniAD 81.7).", "Sec. 4.2, Table 1", table="table1",
          metric="mad", level="summary", favoured=_side("MambaAD", method="MambaAD"), against=_PEERS,
          note="PatchCore is not in the paper; it is adlib's reference peer", floor=_WORKS),
    Claim("pixel_auroc_beats_peers", "MambaAD's pixel mAU-ROC is above the compared methods' (Table 1).",
          "Sec. 4.2, Table 1", table="table1", metric="auroc", level="pixel",
          favoured=_side("MambaAD", method="MambaAD"), against=_PEERS, floor=_WORKS),
    Claim("hilbert_8_best_scan", "Hilbert scanning with 8 directions is the best scan (Table 3): the other methods "
          "are 'marginally inferior at the image level', and mixing methods lowers performance.",
          "Sec. 4.3, Table 3", table="table3", metric="auroc", level="image",
          favoured=_side("Hilbert, 8 directions", setting="scan=hilbert,dirs=8"),
          against=tuple(_side(label, setting=label) for label in _TABLE3 if label != "scan=hilbert,dirs=8"),
          note="the printed spread is at most 1.8 image AU-ROC: expect inconclusive on a CPU",
          floor=_WORKS_LIKE_A_PEER),
    Claim("more_directions_help", "Image-level metrics improve as the number of scan directions grows (Table 3, "
          "rows 5-7: 2, 4, 8 Hilbert directions).", "Sec. 4.3, Table 3", table="table3", metric="auroc",
          level="image", favoured=_side("8 directions", setting="scan=hilbert,dirs=8"),
          against=(_side("2 directions", setting="scan=hilbert,dirs=2"),
                   _side("4 directions", setting="scan=hilbert,dirs=4")), floor=_WORKS_LIKE_A_PEER),
    Claim("cascaded_hss_help", "LSS modules of 2-3 cascaded HSS blocks beat one HSS block per LSS (Table 4).",
          "Sec. 4.3, Table 4", table="table4", metric="auroc", level="image",
          favoured=_side("M_i = 2/3", setting=_T4_DEFAULT),
          against=(_side("M_i = 1", setting=_tab4_label("1", "yes", "dw+1x1", (5, 7))),), floor=_WORKS_LIKE_A_PEER),
    Claim("pointwise_convs_help", "With M_i = 2/3, depthwise branches flanked by 1x1 convolutions beat depthwise "
          "convolutions alone (Table 4).", "Sec. 4.3, Table 4", table="table4", metric="auroc", level="image",
          favoured=_side("DWConv + 1x1", setting=_T4_DEFAULT),
          against=(_side("only DWConv", setting=_tab4_label("2/3", "yes", "dw", (5, 7))),), floor=_WORKS_LIKE_A_PEER),
    Claim("kernels_5_7_best", "Kernel sizes 5 and 7 suit the local branches best (Table 4, M_i = 2/3 with 1x1 "
          "convolutions).", "Sec. 4.3, Table 4", table="table4", metric="auroc", level="image",
          favoured=_side("k = 5, 7", setting=_T4_DEFAULT),
          against=(_side("k = 3, 5", setting=_tab4_label("2/3", "yes", "dw+1x1", (3, 5))),
                   _side("k = 3, 5, 7", setting=_tab4_label("2/3", "yes", "dw+1x1", (3, 5, 7)))),
                   floor=_WORKS_LIKE_A_PEER),
    Claim("residual_helps", "The residual connection of the LSS module helps (Table 4, M_i = 1 with 1x1 "
          "convolutions, k = 5, 7; the paper notes that without it some metrics are higher but training is longer "
          "and harder to converge).", "Sec. 4.3, Table 4", table="table4", metric="auroc", level="image",
          favoured=_side("with residual", setting=_tab4_label("1", "yes", "dw+1x1", (5, 7))),
          against=(_side("no residual", setting=_tab4_label("1", "no", "dw+1x1", (5, 7))),),
          floor=_WORKS_LIKE_A_PEER),
    Claim("linear_complexity", "MambaAD's decoder has linear complexity in the number of tokens (Sec. 1, Fig. 1): "
          "its time grows with a fitted exponent near 1, below a same-width self-attention block's.",
          "Sec. 1 and 3, Fig. 1", table="complexity", metric="exponent", level="model", higher_is_better=False,
          favoured=_side("MambaAD decoder", method="MambaAD"), against=(_side("self-attention", method="attention"),),
          note="the exponent of time ~ tokens^p fitted over 4 input sizes; the value is reported beside the verdict"),
)

PAPER = PaperSpec(
    name="mambaad",
    title="MambaAD: exploring state space models for multi-class unsupervised anomaly detection",
    method="mambaad",
    profiles={"smoke": SMOKE, "paper": PAPER_PROFILE},
    recipes=RECIPES,
    methods={"mambaad": "MambaAD", "rd4ad": "RD4AD", "uniad": "UniAD", "patchcore": "PatchCore"},
    claims=CLAIMS,
    tables=TABLES,
    figures=FIGURES,
    datasets={"mvtec_ad": "MVTec AD", "visa": "VisA", "real_iad": "Real-IAD", "uni_medical": "Uni-Medical",
              "mvtec_3d": "MVTec 3D-AD", "coco_ad": "COCO-AD"},
    train_times=TRAIN_TIMES,
    notebook_runs=NOTEBOOK_RUNS,
    reference_code=("The authors' code is their release (lewandofskee/MambaAD, commit 0434452: model, trainer, "
                    "configs) run inside the ADer toolbox (zhangzjn/ADer, commit 902937a), whose evaluator it uses."),
)

# ------------------------------------------------------------------------------------------- measurements
# What the notebooks measure beyond fit/evaluate: the architecture's parameters and FLOPs (Tables 2 and 5, random
# weights) and the decoder's time against the number of tokens (the linear-complexity claim). benchmarks/mambaad.py
# prints the same numbers from the command line.


def count_flops(model, size: int) -> dict[str, float]:
    """fvcore's count of one forward (encoder, H-FPN, decoder) at ``size`` px, in G: multiply-adds of convolutions
    and matrix products (``FlopCounterMode`` counts 2 per multiply-add), plus its norm estimates (BatchNorm in eval 2
    per element with affine, LayerNorm 5, InstanceNorm without affine 4). The selective scan is a custom op fvcore
    skips; its own multiply-adds (state update and read-out, 2 per state element and position) are given apart."""
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    from adlib.models.mambaad import SS2D

    norms = {"batch_norm": 0, "layer_norm": 0, "instance_norm": 0}
    rule = {nn.BatchNorm2d: ("batch_norm", 2), nn.LayerNorm: ("layer_norm", 5), nn.InstanceNorm2d: ("instance_norm", 4)}
    scan = [0]

    def norm_hook(kind, per):
        return lambda mod, inp, out: norms.__setitem__(kind, norms[kind] + inp[0].numel() * per)

    def scan_hook(mod, inp, out):
        b, h, w, _ = inp[0].shape
        scan[0] += 2 * b * mod.count * mod.d_inner * h * w * mod.d_state

    hooks = []
    for mod in model.modules():
        for cls, (kind, per) in rule.items():
            if type(mod) is cls:
                hooks.append(mod.register_forward_hook(norm_hook(kind, per)))
        if isinstance(mod, SS2D):
            hooks.append(mod.register_forward_hook(scan_hook))
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model.reconstruct(model.extract(torch.rand(1, 3, size, size)))
    finally:
        for h in hooks:
            h.remove()
    macs = counter.get_total_flops() / 2e9
    norm_g = sum(norms.values()) / 1e9
    return {"fvcore_g": macs + norm_g, "conv_matmul_gmacs": macs, "norms_g": norm_g, "scan_gmacs": scan[0] / 1e9}


def parameter_counts(model, size: int = 256) -> dict[str, float]:
    """Parameters in M: encoder (to the last tap), H-FPN, decoder, and the release's scan indices (two LongTensors
    of H*W entries per HSS block, registered as nn.Parameter in its HSCANS, so counted by fvcore's
    parameter_count; ``total_as_release`` is what the paper prints)."""
    count = lambda mod: sum(p.numel() for p in mod.parameters())
    index = 0
    grid = size // 32  # the bottleneck map; the stages double it
    for i, stage in enumerate(model.decoder.stages):
        side = grid * 2**i
        index += 2 * side * side * sum(len(lss.hss) for lss in stage)
    parts = {"encoder": count(model.tokenizer), "hfpn": count(model.bottleneck), "decoder": count(model.decoder)}
    total = sum(parts.values())
    return {**{k: v / 1e6 for k, v in parts.items()}, "total": total / 1e6, "release_index": index / 1e6,
            "total_as_release": (total + index) / 1e6}


def cost_rows(variants: dict[str, dict]) -> pd.DataFrame:
    """Long rows (level "model": params_m, flops_g, and the parts apart) of each variant's architecture, built with
    random weights (counts do not depend on them). ``variants`` maps a Table 2 label to config overrides (the
    profiles' ``table2_cost`` grid)."""
    import pandas as pd
    import torch

    from adlib.models import create_model

    rows = []
    for label, overrides in variants.items():
        torch.manual_seed(0)
        model = create_model("mambaad", **overrides).eval()
        size = int(overrides.get("image_size", 256))
        params, flops = parameter_counts(model, size), count_flops(model, size)
        base = {"dataset": "MVTec AD", "method": "MambaAD", "setting": label, "level": "model",
                "backbone": model.config.backbone, "data": f"architecture only (random weights), {size}px",
                "seed": 0, "protocol": "", "image_size": size, "note": ""}
        values = {"params_m": params["total_as_release"], "flops_g": flops["fvcore_g"],
                  "params_m_encoder": params["encoder"], "params_m_hfpn": params["hfpn"],
                  "params_m_decoder": params["decoder"], "params_m_scan_index": params["release_index"],
                  "scan_gmacs": flops["scan_gmacs"]}
        rows += [{**base, "metric": metric, "value": value} for metric, value in values.items()]
        del model
    return pd.DataFrame(rows)


def fit_exponent(tokens, seconds) -> float:
    """Least-squares slope p of log(seconds) against log(tokens): time ~ tokens^p."""
    import numpy as np

    return float(np.polyfit(np.log(np.asarray(tokens, float)), np.log(np.asarray(seconds, float)), 1)[0])


def _attention_block(dim: int):
    """A pre-norm self-attention block (one head per 32 channels): the quadratic reference."""
    import torch

    class Attention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.LayerNorm(dim)
            self.attn = torch.nn.MultiheadAttention(dim, max(1, dim // 32), batch_first=True)

        def forward(self, x):
            y = self.norm(x)
            return x + self.attn(y, y, y, need_weights=False)[0]

    return Attention()


def _median_seconds(fn, repeats: int) -> float:
    """Median CPU seconds of ``fn`` (this process's, single-threaded: other processes on a shared machine do not
    count, as they would in wall time)."""
    import statistics
    import time

    fn()  # warm-up (scan orders are built and cached on the first call at a size)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def decoder_timing(sizes, seeds, repeats: int = 1, **overrides) -> pd.DataFrame:
    """Forward CPU time (one thread) of MambaAD's decoder at each input size (batch 1, no gradient; the paper's
    widths by default: ResNet34's H-FPN output, [3, 4, 6, 3], 8 Hilbert directions) beside a same-width
    self-attention block over the finest stage's tokens, once per seed (fresh random weights and inputs: each
    seed is one repetition of the whole measurement). Long rows (no image_size column: the input size is in the
    label): per (seed, size) ``seconds`` and ``tokens`` (setting "size=<px>"), and per seed the fitted
    ``exponent`` of time ~ tokens^p (setting "default"), which the linear-complexity claim compares. Decoder
    tokens are summed over its four stages; attention's are the finest stage's. Timed on one thread by CPU
    time, so that neither thread scheduling nor other processes on the machine bend the fit."""
    import pandas as pd
    import torch

    config = {"backbone": "resnet34", "pretrained": False, **overrides}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = _timing_rows(config, sizes, seeds, repeats)
    finally:
        torch.set_num_threads(threads)
    return pd.DataFrame(rows)


def _timing_rows(config: dict, sizes, seeds, repeats: int) -> list[dict]:
    import torch

    from adlib.models import create_model

    rows = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = create_model("mambaad", **config).eval()
        attention = _attention_block(model.dims[-1]).eval()
        label = f"{config['backbone']} widths {model.dims}, depths {list(model.config.depths)}, batch 1, CPU"
        base = {"dataset": "decoder timing", "level": "model", "backbone": config["backbone"], "data": label,
                "seed": seed, "protocol": "", "note": ""}
        measured = {"MambaAD": ([], []), "attention": ([], [])}
        for size in sizes:
            g = -(-int(size) // 32)
            bottleneck = torch.randn(1, model.dims[0], g, g)
            targets = [(2 * g, 2 * g), (4 * g, 4 * g), (8 * g, 8 * g)]
            finest = torch.randn(1, 64 * g * g, model.dims[-1])
            with torch.no_grad():
                t_dec = _median_seconds(lambda: model.decoder(bottleneck, targets), repeats)
                t_att = _median_seconds(lambda: attention(finest), repeats)
            for method, tokens, seconds in (("MambaAD", g * g + sum(h * w for h, w in targets), t_dec),
                                            ("attention", finest.shape[1], t_att)):
                measured[method][0].append(tokens)
                measured[method][1].append(seconds)
                rows += [{**base, "method": method, "setting": f"size={size}", "metric": m, "value": float(v)}
                         for m, v in (("seconds", seconds), ("tokens", tokens))]
        for method, (tokens, seconds) in measured.items():
            rows.append({**base, "method": method, "setting": "default", "metric": "exponent",
                         "value": fit_exponent(tokens, seconds)})
    return rows

# ------------------------------------------------------------------------------------------- appendix tables
# Tables A1-A12 print one dataset each, per category, at one level. They are filled from the runs of the main
# table (01_main_results), never from new fits. A printed cell with no run behind it gets a NaN row whose note
# says why (the dataset or category is not on this machine, the profile does not run it, or the method was not
# run), so that the written table carries the paper's cells beside a plain statement instead of leaving them out.

APPENDIX = {"tableA1": ("mvtec_ad", "image"), "tableA2": ("mvtec_ad", "pixel"), "tableA3": ("visa", "image"),
            "tableA4": ("visa", "pixel"), "tableA5": ("mvtec_3d", "image"), "tableA6": ("mvtec_3d", "pixel"),
            "tableA7": ("uni_medical", "image"), "tableA8": ("uni_medical", "pixel"),
            "tableA9": ("coco_ad", "image"), "tableA10": ("coco_ad", "pixel"),
            "tableA11": ("real_iad", "image"), "tableA12": ("real_iad", "pixel")}
# The embedded multi-class set is in MVTec AD's layout and stands in for it: its per-category rows go with A1/A2
# (marked synthetic, so never set against a printed cell).
_APPENDIX_SYNTHETIC = ("mvtec_ad",)


def _absent_reason(setting, folder: str, dataset: str, printed: str, ran: list[str], count: int) -> str:
    """Why nothing of ours stands beside the printed row ``printed`` (a category, or ``dataset``'s mean over its
    ``count`` printed categories) when ``ran`` (our categories of ``dataset`` with values) does not hold it. The
    words name the dataset, not the row, so that one statement covers all the rows it explains."""
    from adlib.data import list_categories
    from adlib.data.standins import missing_reason

    root, standin = setting.dataset_root(folder)  # a path check's stand-in counts as here
    if root is None:
        where = missing_reason(folder, setting.real_root)  # where it was looked for and how to get it
    elif "/" not in printed:  # the dataset's mean row
        where = (f"the mean over the paper's {count} {dataset} categories: only {', '.join(ran)} ran here" if ran
                 else f"no {dataset} category ran here")
    else:
        present = list_categories(root)
        if printed.split("/", 1)[1] not in present:
            where = (f"not on this machine (its {folder}/ holds only {', '.join(present)}"
                     + (", a path check's stand-in)" if standin else ")"))
        else:
            runs = setting.spec.real_categories
            where = (f"on this machine, but the {setting.profile} profile runs only "
                     f"{', '.join(runs) if runs else 'other datasets'} (CPU budget)")
    return where + ": the paper's number only"


def appendix_tables(setting, runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Tables A1-A12 (long rows, ready for ``setting.write_table``) from the main table's runs ``runs`` (rows of
    ``study.run_grid``, every scope): per table, our category and dataset-mean rows of its dataset at its level
    (both protocols), plus, for every printed row (category or mean) of a method we implement that has no row
    of ours, NaN rows whose ``note`` says why (under the protocols of the table's own values; with none, the
    paper's only). Methods the paper prints but adlib does not implement get no rows:
    the report and ``study.paper_vs_ours`` show their printed cells as they are."""
    import pandas as pd

    from adlib import results
    from adlib.study.grid import model_backbone

    keys = {display: key for key, display in setting.paper.methods.items()}
    runs = runs[runs["scope"].astype(str).isin(["category", "mean"])]
    quality = runs["level"].isin(["image", "pixel"])
    protocols = [p for p in dict.fromkeys(runs.loc[quality, "protocol"].astype(str)) if p] or [setting.protocol]
    valued = runs[runs["value"].notna()]
    out = {}
    for name, (folder, level) in APPENDIX.items():
        dataset = setting.dataset_name(folder)
        paper = results.paper_table(setting.paper.name, name)
        metrics = list(dict.fromkeys(paper.loc[paper["level"] == level, "metric"]))
        names = runs["dataset"].astype(str)
        mine = (names == dataset) | names.str.startswith(dataset + "/")
        if folder in _APPENDIX_SYNTHETIC:
            mine |= names.str.startswith("synthetic") & (runs["scope"] == "category")
        ours = runs[mine & (runs["level"] == level) & runs["metric"].isin(metrics)]
        ran = [d for d in dict.fromkeys(valued["dataset"].astype(str)) if d.startswith(dataset + "/")]
        fill = [m for m in dict.fromkeys(runs["method"]) if m in set(paper["method"]) and m in keys]
        # the empty rows carry the protocols our rows of this table have; with none, only the paper's
        present = [p for p in protocols if (ours.loc[ours["value"].notna(), "protocol"].astype(str) == p).any()]
        present = present or [setting.protocol]
        count = sum("/" in d for d in dict.fromkeys(paper["dataset"]))
        rows = []
        for printed in dict.fromkeys(paper["dataset"]):
            for method in fill:
                if len(ours[(ours["dataset"] == printed) & (ours["method"] == method)]):
                    continue
                if printed in ran:  # the data ran here, this method did not: its own recorded reason
                    notes = runs.loc[(runs["dataset"] == printed) & (runs["method"] == method), "note"]
                    reason = next((n for n in notes.astype(str) if n), f"{method} was not run in this notebook")
                else:
                    reason = _absent_reason(setting, folder, dataset, printed, ran, count)
                rows += [{"dataset": printed, "method": method, "setting": "default", "level": level, "metric": m,
                          "value": float("nan"), "backbone": model_backbone(setting, keys[method]), "data": printed,
                          "seed": setting.seed, "protocol": p, "class_setting": setting.class_setting,
                          "image_size": setting.image_size, "scope": "category" if "/" in printed else "mean",
                          "note": reason}
                         for p in present for m in metrics]
        out[name] = pd.concat([ours, pd.DataFrame(rows, columns=ours.columns)], ignore_index=True) if rows \
            else ours.reset_index(drop=True)
    return out


def appendix_coverage(setting, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One line per appendix table: its dataset, the printed rows (categories and the mean), which of them have
    a value of ours, and why the others are the paper's only (the notes of ``appendix_tables``' NaN rows)."""
    import pandas as pd

    from adlib import results

    lines = []
    for name, df in tables.items():
        folder, level = APPENDIX[name]
        printed = list(dict.fromkeys(results.paper_table(setting.paper.name, name)["dataset"]))
        valued = df[df["value"].notna()]
        ours = [d for d in printed if d in set(valued["dataset"])]
        other = sorted({d for d in valued["dataset"] if d not in printed})
        reasons = dict.fromkeys(n for n in df.loc[df["value"].isna(), "note"].astype(str) if n)
        lines.append({"table": name, "dataset": setting.dataset_name(folder), "level": level,
                      "printed rows": len(printed), "with ours": ", ".join(ours) or "none",
                      "paper only": len(printed) - len(ours),
                      "ours, not printed": ", ".join(other) or "",
                      "why paper only": " / ".join(reasons) if len(reasons) <= 3 else
                      " / ".join(list(reasons)[:2]) + f" / ... ({len(reasons)} reasons, one per row, in the CSV)"})
    return pd.DataFrame(lines)

# ---------------------------------------------------------------------------------------- Figs. 1 and 2
# The paper's Figs. 1 and 2 are schematics. They are redrawn here from built models: every label (module
# names, block counts, kernel sizes, channels, map sizes, token counts) is read from the modules or from a
# forward pass, none is typed, so that the drawing shows what adlib runs.


def _box(ax, x, y, w, h, text, color, size=7):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.005,rounding_size=0.01", fc=color, ec="0.25",
                                lw=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def _arrow(ax, a, b, style="-|>", color="0.2", ls="-"):
    ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle=style, color=color, lw=0.8, ls=ls))


def _blank(ax, title):
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    ax.set_title(title, fontsize=9, loc="left")


_LOCAL, _GLOBAL, _BOTH, _FROZEN = "#cfe2f3", "#f9cb9c", "#b6d7a8", "#eeeeee"


def mambaad_structure(model, size: int) -> dict:
    """What Fig. 2 draws, read from a built MambaAD and one forward pass at ``size`` px (random input): encoder
    taps, H-FPN output, per decoder stage its map, channels and LSS modules, and the parts of one LSS and one
    HSS block (names and sizes from the modules)."""
    import torch
    from torch import nn

    with torch.no_grad():
        out = model.explain(torch.rand(1, 3, size, size))
    stages = []
    grid = out["bottleneck"].shape[-1]
    for i, stage in enumerate(model.decoder.stages):
        stages.append({"index": i, "channels": model.dims[i], "map": grid * 2 ** i,
                       "hss": [len(lss.hss) for lss in stage],
                       "upsample": type(model.decoder.upsample[i]).__name__})
    lss = model.decoder.stages[-1][0]
    ss2d = lss.hss[0].self_attention

    def layers(seq):
        names = []
        for block in seq if isinstance(seq[0], nn.Sequential) else [seq]:
            conv = block[0]
            kind = "DWConv" if conv.groups > 1 else "Conv"
            names.append(f"{kind}{conv.kernel_size[0]}x{conv.kernel_size[1]}+{type(block[1]).__name__}+"
                         f"{type(block[2]).__name__}")
        return names

    return {"size": size, "backbone": model.config.backbone,
            "encoder": [tuple(f.shape[1:]) for f in out["features"]], "bottleneck": tuple(out["bottleneck"].shape[1:]),
            "reconstructions": [tuple(r.shape[1:]) for r in out["reconstructions"]], "stages": stages,
            "lss": {"dim": lss.fuse.out_channels, "fuse_in": lss.fuse.in_channels, "residual": lss.residual,
                    "branches": [layers(b) for b in lss.local], "kernels": list(model.config.kernel_sizes)},
            "hss": {"dim": ss2d.in_proj.in_features, "d_inner": ss2d.d_inner, "d_state": ss2d.d_state,
                    "dt_rank": ss2d.dt_rank, "directions": ss2d.count, "scan": ss2d.scan,
                    "d_conv": ss2d.conv2d.kernel_size[0], "ln_eps": lss.hss[0].ln_1.eps,
                    "drop_path": [round(blk.drop_path.p, 3) for st in model.decoder.stages for l in st for blk in l.hss]},
            "sigma": model.config.smoothing_sigma, "score": model.config.score_rule,
            "loss_weight": model.config.loss_weight}


def figure2(structure: dict):
    """Fig. 2 redrawn from ``mambaad_structure``: (a) the framework, (b) an LSS module, (c) an HSS block,
    (d) ConvB."""
    from adlib import plots

    plt = plots._pyplot()
    s = structure
    fig = plt.figure(figsize=(13, 7.2))
    grid = fig.add_gridspec(2, 3, height_ratios=[1.25, 1], width_ratios=[1.3, 1, 1])
    ax = fig.add_subplot(grid[0, :])
    _blank(ax, f"(a) MambaAD framework ({s['backbone']}, {s['size']} px; shapes C x H x W from a forward pass)")
    n = len(s["encoder"])
    for i, shape in enumerate(s["encoder"]):  # encoder taps, shallow (top) to deep
        y = 0.78 - i * 0.22
        _box(ax, 0.01, y, 0.16, 0.14, f"encoder tap {i + 1} (frozen)\n{'x'.join(map(str, shape))}", _FROZEN)
        _arrow(ax, (0.17, y + 0.07), (0.25, 0.45))
    _box(ax, 0.25, 0.36, 0.12, 0.18, f"H-FPN\n(HalfFPN)\n{'x'.join(map(str, s['bottleneck']))}", _LOCAL)
    x = 0.40
    for st in s["stages"]:
        lss = " + ".join(f"LSS({k} HSS)" for k in st["hss"])
        head = "" if st["index"] == 0 else f"{st['upsample']}\n"
        _box(ax, x, 0.36, 0.125, 0.18, f"stage {st['index']}\n{head}{lss}\n{st['channels']}x{st['map']}x{st['map']}",
             _BOTH, size=6.5)
        _arrow(ax, (x - 0.03, 0.45), (x, 0.45))
        x += 0.145
    for j, shape in enumerate(s["reconstructions"]):  # decoder stage j+1 reconstructs tap j+1 (stride 4 first)
        sx = 0.40 + 0.145 * (3 - j) + 0.06
        ty = 0.78 - j * 0.22 + 0.07
        _arrow(ax, (sx, 0.54), (sx, 0.64 + 0.02 * j), color="#a61c00", ls="--")
        ax.text(sx + 0.005, 0.60 + 0.02 * j, f"1 - cos vs tap {j + 1}", fontsize=6, color="#a61c00")
    ax.text(0.40, 0.12, f"anomaly map = sum over the {n} scales of (1 - cos), upsampled to {s['size']} px, "
                        f"Gaussian sigma {s['sigma']:g}; image score = {s['score']} of the map.  Training loss: "
                        f"{s['loss_weight']:g} x sum of per-scale MSE.", fontsize=7)
    ax.text(0.40, 0.04, "drop path over the HSS blocks (stage 0 first): "
            + ", ".join(f"{p:.2f}" for p in s["hss"]["drop_path"]), fontsize=6.5, color="0.3")

    ax = fig.add_subplot(grid[1, 0])
    l = s["lss"]
    _blank(ax, f"(b) LSS module (last stage: C = {l['dim']})")
    _box(ax, 0.02, 0.42, 0.12, 0.16, "X_i", _FROZEN)
    _box(ax, 0.18, 0.74, 0.38, 0.16, "HSS x M_i (cascaded)", _BOTH)
    for i, (k, branch) in enumerate(zip(l["kernels"], l["branches"])):
        y = 0.50 - i * 0.24
        _box(ax, 0.18, y, 0.38, 0.16, "\n".join(b.split("+")[0] for b in branch), _LOCAL, size=6)
        _arrow(ax, (0.14, 0.5), (0.18, y + 0.08))
        _arrow(ax, (0.56, y + 0.08), (0.60, 0.5))
    _arrow(ax, (0.14, 0.5), (0.18, 0.82))
    _arrow(ax, (0.56, 0.82), (0.60, 0.5))
    _box(ax, 0.60, 0.40, 0.18, 0.20, f"Concat\nConv1x1\n{l['fuse_in']} -> {l['dim']}", _LOCAL, size=6.5)
    _box(ax, 0.84, 0.42, 0.14, 0.16, "+ X_i -> X_o" if l["residual"] else "X_o (no residual)", _FROZEN, size=6.5)
    _arrow(ax, (0.78, 0.5), (0.84, 0.5))

    ax = fig.add_subplot(grid[1, 1])
    h = s["hss"]
    _blank(ax, f"(c) HSS block (C = {h['dim']}, d_inner = {h['d_inner']})")
    steps = [f"LN (eps {h['ln_eps']:g})", f"Linear {h['dim']} -> 2x{h['d_inner']}: x, z",
             f"DWConv{h['d_conv']}x{h['d_conv']} + SiLU (x)",
             f"HS encoder: {h['directions']} {h['scan']} orders",
             f"selective scan: {h['directions']}x{h['d_inner']} ch.,\nN = {h['d_state']}, dt rank {h['dt_rank']}",
             f"HS decoder: inverse orders, sum", f"LN x SiLU(z), Linear -> {h['dim']}", "+ input (DropPath)"]
    for i, text in enumerate(steps):
        y = 0.90 - i * 0.118
        _box(ax, 0.12, y - 0.036, 0.76, 0.072, text, _BOTH if 3 <= i <= 5 else _LOCAL, size=6.5)
        if i:
            _arrow(ax, (0.5, y + 0.082), (0.5, y + 0.036))

    ax = fig.add_subplot(grid[1, 2])
    _blank(ax, "(d) ConvB (the local branches' unit)")
    parts = l["branches"][0][0].split("+") if l["branches"] else []
    for i, part in enumerate(parts):
        _box(ax, 0.2, 0.72 - i * 0.22, 0.6, 0.14, part if i else "Conv2d (1x1, or depthwise k x k)", _LOCAL)
        if i:
            _arrow(ax, (0.5, 0.72 - (i - 1) * 0.22), (0.5, 0.86 - i * 0.22))
    ax.text(0.05, 0.05, "branches: " + "; ".join(f"k = {k}: " + " -> ".join(b) for k, b in zip(l["kernels"], l["branches"])),
            fontsize=5.5, wrap=True)
    fig.tight_layout()
    return fig


def peer_structures(models: dict, size: int) -> dict:
    """What Fig. 1 draws, read from built models (``{"RD4AD": ..., "UniAD": ..., "MambaAD": ...}``): per method
    the maps its decoder works on (side, tokens), the operator there, and the global operator's pair or state
    count at ``size`` px."""
    import torch
    from torch import nn

    out = {}
    rd = models.get("RD4AD")
    if rd is not None:
        kernels = sorted({m.kernel_size[0] for st in rd.decoder.stages for m in st.modules() if isinstance(m, nn.Conv2d)})
        out["RD4AD"] = {"maps": [(h, len(st)) for (h, _), st in zip(rd.grids[::-1], rd.decoder.stages)],
                        "operator": f"residual conv blocks (k = {', '.join(map(str, kernels))}): local",
                        "global": "none (receptive field grows with depth only)"}
    uni = models.get("UniAD")
    if uni is not None:
        h, w = uni.grid
        out["UniAD"] = {"maps": [(h, len(uni.encoder) + len(uni.decoder))],
                        "operator": f"{len(uni.encoder)} + {len(uni.decoder)} attention layers on the stride-"
                                    f"{uni.config.feature_stride} map only: global",
                        "global": f"attention: L^2 = {(h * w) ** 2:,} pairs per layer (L = {h * w})"}
    mam = models.get("MambaAD")
    if mam is not None:
        with torch.no_grad():
            grid = mam.bottleneck(mam.extract(torch.rand(1, 3, size, size))).shape[-1]
        ss2d = mam.decoder.stages[-1][0].hss[0].self_attention
        finest = (grid * 2 ** (len(mam.decoder.stages) - 1)) ** 2
        out["MambaAD"] = {"maps": [(grid * 2 ** i, sum(len(l.hss) for l in st)) for i, st in enumerate(mam.decoder.stages)],
                          "operator": f"LSS: HSS ({ss2d.count} scan directions) + DWConv k = "
                                      f"{', '.join(map(str, mam.config.kernel_sizes))}: global + local",
                          "global": f"selective scan: K x L = {ss2d.count} x {finest:,} steps on the finest map: "
                                    f"linear in L"}
    return out


def figure1(structures: dict, timing: pd.DataFrame | None = None, size: int = 256):
    """Fig. 1 redrawn: one panel per method (``peer_structures``: the maps each decoder works on, coloured by
    operator: local conv, global attention, global SSM + local conv), and, when ``timing`` is given
    (``decoder_timing`` rows), the measured time against tokens of MambaAD's decoder and of self-attention."""
    import math

    from adlib import plots

    plt = plots._pyplot()
    panels = [m for m in ("RD4AD", "UniAD", "MambaAD") if m in structures]
    fig, axes = plt.subplots(1, len(panels) + (timing is not None), figsize=(4 * len(panels) + 4 * (timing is not None), 3.8))
    colors = {"RD4AD": _LOCAL, "UniAD": _GLOBAL, "MambaAD": _BOTH}
    letters = "abcd"
    for i, (ax, method) in enumerate(zip(axes, panels)):
        s = structures[method]
        _blank(ax, f"({letters[i]}) {method}")
        sides = [side for side, _ in s["maps"]]
        for side in sorted({size // 4, size // 8, size // 16, size // 32} | set(sides), reverse=True):
            if side < size // 32:
                continue
            y = 0.80 - 0.18 * int(round(math.log2(size // 4 / side)))
            used = [blocks for sd, blocks in s["maps"] if sd == side]
            text = f"{side} x {side} map, {side * side:,} tokens" + (f"\n{used[0]} blocks" if used else "\nnot decoded")
            _box(ax, 0.08, y, 0.84, 0.13, text, colors[method] if used else "white", size=6.5)
        ax.text(0.02, 0.06, s["operator"] + "\n" + s["global"], fontsize=6, wrap=True)
    if timing is not None:
        ax = axes[-1]
        rows = timing[timing["metric"].isin(["seconds", "tokens"])].pivot_table(
            index=["method", "seed", "setting"], columns="metric", values="value").reset_index()
        for method, part in rows.groupby("method"):
            mean = part.groupby("tokens")["seconds"].mean()
            ax.loglog(mean.index, mean.values, "o-", label=method if method != "attention" else "self-attention")
        exps = timing[timing["metric"] == "exponent"].groupby("method")["value"].mean()
        ax.set_title(f"({letters[len(panels)]}) measured: time ~ tokens^p\n"
                     + ", ".join(f"{m} p = {v:.2f}" for m, v in exps.items()), fontsize=9, loc="left")
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("tokens")
        ax.set_ylabel("CPU s per forward (one thread)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
