"""MambaAD (He et al., NeurIPS 2024): state space models for multi-class unsupervised anomaly detection.

The paper's spec for the notebooks in ``notebooks/mambaad/``: profiles, recipes, tables, figures and the claims
the notebooks decide over seeds. The model is ``adlib/models/mambaad.py``; the printed numbers are
``results/paper/mambaad/table1.csv`` ... ``table5.csv``, ``tableA1.csv`` ... ``tableA12.csv``
(``benchmarks/mambaad_paper_tables.py``).

The paper trains one model per dataset (multi-class) and evaluates with ADer's evaluator (protocol "ader");
both profiles keep that. The smoke profile swaps ResNet34 (no ImageNet weights offline) for the offline
EfficientNet-Lite0 tapped at the same strides 4/8/16 (stages 1-3: 24/40/112 channels, which size the H-FPN
and the decoder) and runs at 128 px with the decoder depths 2-2-2-2 (Tab. 2's smallest) and the HSS inner
width at 1x the channels (release: 3-4-6-3 and 2x), so that the chapter fits the smoke budget on two cores;
every output names the substitution (``paper_backbone``).

Variant grids (``ProfileSpec.grids``) map the label a table row carries (the ``setting`` column of the paper's
CSVs) to config overrides; ``<table>_not_run`` says why a row cannot run in that profile. Table 2's rows all
get parameter and FLOP counts with random weights (``table2_cost``), whatever can be trained.

This file declares; the notebooks measure and draw with the shared layers: parameters, FLOPs and the decoder's
time against tokens with ``adlib.study.cost`` (``variant_cost_rows``, ``decoder_timing``), the appendix tables
with ``adlib.study.tables.appendix_tables``, Figs. 1 and 2 with ``adlib.plots`` (``decoder_diagram``,
``mambaad_diagram``).
"""
from __future__ import annotations

from adlib.engine import FitConfig
from adlib.papers import peers
from adlib.study.spec import Claim, ExplorerAxis, Floor, NotebookRuns, PaperSpec, ProfileSpec, Recipe, Side, TableSpec, TrainTime

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

# The explorer's axes (notebooks/mambaad/03_explorer): the decoder ablations of Tables 3 and 4.
EXPLORER = (
    ExplorerAxis("scan", "table3", "the scan methods and how many directions the HSS blocks read the feature map "
                 "in (Tab. 3; the paper's Hilbert scan, 8 directions)", default=DEFAULT_SETTINGS["table3"]),
    ExplorerAxis("lss", "table4", "the LSS block's design: HSS cascade, residual, local convolutions and their "
                 "kernels (Tab. 4)", default=DEFAULT_SETTINGS["table4"]),
)

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
    grids={"explorer": EXPLORER, 
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
    grids={"explorer": EXPLORER, 
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
    "03_explorer": NotebookRuns(("mambaad",), (2,), datasets=("mvtec_ad",), seeds=False,
                                note="the default and one contrast (02_ablations' runs: read from the run cache)"),
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
    "table5": TableSpec("Table 5: efficiency: parameters, FLOPs and mAD of the compared methods (the mAD is "
                        "Table 1's: multi-class, ADer's evaluator)", **_MUAD, backbones=_BACKBONES, rows=("method",),
                        columns=("level", "metric"),
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
                            note="CPU times (one thread) on the machine that ran them: exponents are compared, never seconds"),
}

FIGURES = {
    "fig1": "Fig. 1: RD4AD (local CNN), UniAD (global Transformer) and MambaAD (schematic)",
    "fig2": "Fig. 2: the MambaAD framework, LSS module, HSS block and ConvB (schematic, drawn from the model)",
    "fig3": "Fig. 3: hybrid scanning: (a) Hilbert in 8 directions, (b) Sweep, Scan, Z-order, Zigzag (8 x 8 grid)",
    "fig4": "Fig. 4: anomaly maps of the compared methods on MVTec AD (and VisA) test images",
}

# -------------------------------------------------------------------------------------------------- claims


# The paper's compared methods that adlib implements. PatchCore, adlib's reference, runs beside them in
# 01_main_results but is not in Table 1, so it does not decide the paper's claims.
_PEERS = tuple(Side(name, {"method": name}) for name in ("RD4AD", "UniAD"))
_T4_DEFAULT = DEFAULT_SETTINGS["table4"]
# When MambaAD counts as working (adlib.study.spec.Floor): above chance against the peers; for its scan and LSS
# ablations also half the best other method's value on the same images where one ran.
_WORKS = Floor(why="MambaAD must detect something on these images: above chance")
_WORKS_LIKE_A_PEER = Floor(of_best_peer=0.5, why="an ablation is read only where MambaAD works: above chance and at "
                                                 "half the best other method's value")

CLAIMS = (
    Claim("beats_peers_multiclass", "MambaAD outperforms the compared methods in the multi-class setting "
          "(Table 1: mAD 86.0 on MVTec AD against RD4AD 82.3 and UniAD 81.7).", "Sec. 4.2, Table 1", table="table1",
          metric="mad", level="summary", favoured=Side("MambaAD", {"method": "MambaAD"}), against=_PEERS,
          floor=_WORKS),
    Claim("pixel_auroc_beats_peers", "MambaAD's pixel mAU-ROC is above the compared methods' (Table 1).",
          "Sec. 4.2, Table 1", table="table1", metric="auroc", level="pixel",
          favoured=Side("MambaAD", {"method": "MambaAD"}), against=_PEERS, floor=_WORKS),
    Claim("hilbert_8_best_scan", "Hilbert scanning with 8 directions is the best scan (Table 3): the other methods "
          "are 'marginally inferior at the image level', and mixing methods lowers performance.",
          "Sec. 4.3, Table 3", table="table3", metric="auroc", level="image",
          favoured=Side("Hilbert, 8 directions", {"setting": "scan=hilbert,dirs=8"}),
          against=tuple(Side(label, {"setting": label}) for label in _TABLE3 if label != "scan=hilbert,dirs=8"),
          note="the printed spread is at most 1.8 image AU-ROC: expect inconclusive on a CPU",
          floor=_WORKS_LIKE_A_PEER),
    Claim("more_directions_help", "Image-level metrics improve as the number of scan directions grows (Table 3, "
          "rows 5-7: 2, 4, 8 Hilbert directions).", "Sec. 4.3, Table 3", table="table3", metric="auroc",
          level="image", favoured=Side("8 directions", {"setting": "scan=hilbert,dirs=8"}),
          against=(Side("2 directions", {"setting": "scan=hilbert,dirs=2"}),
                   Side("4 directions", {"setting": "scan=hilbert,dirs=4"})), floor=_WORKS_LIKE_A_PEER),
    Claim("cascaded_hss_help", "LSS modules of 2-3 cascaded HSS blocks beat one HSS block per LSS (Table 4).",
          "Sec. 4.3, Table 4", table="table4", metric="auroc", level="image",
          favoured=Side("M_i = 2/3", {"setting": _T4_DEFAULT}),
          against=(Side("M_i = 1", {"setting": _tab4_label("1", "yes", "dw+1x1", (5, 7))}),), floor=_WORKS_LIKE_A_PEER),
    Claim("pointwise_convs_help", "With M_i = 2/3, depthwise branches flanked by 1x1 convolutions beat depthwise "
          "convolutions alone (Table 4).", "Sec. 4.3, Table 4", table="table4", metric="auroc", level="image",
          favoured=Side("DWConv + 1x1", {"setting": _T4_DEFAULT}),
          against=(Side("only DWConv", {"setting": _tab4_label("2/3", "yes", "dw", (5, 7))}),),
          floor=_WORKS_LIKE_A_PEER),
    Claim("kernels_5_7_best", "Kernel sizes 5 and 7 suit the local branches best (Table 4, M_i = 2/3 with 1x1 "
          "convolutions).", "Sec. 4.3, Table 4", table="table4", metric="auroc", level="image",
          favoured=Side("k = 5, 7", {"setting": _T4_DEFAULT}),
          against=(Side("k = 3, 5", {"setting": _tab4_label("2/3", "yes", "dw+1x1", (3, 5))}),
                   Side("k = 3, 5, 7", {"setting": _tab4_label("2/3", "yes", "dw+1x1", (3, 5, 7))})),
                   floor=_WORKS_LIKE_A_PEER),
    Claim("residual_helps", "The residual connection of the LSS module helps (Table 4, M_i = 1 with 1x1 "
          "convolutions, k = 5, 7; the paper notes that without it some metrics are higher but training is longer "
          "and harder to converge).", "Sec. 4.3, Table 4", table="table4", metric="auroc", level="image",
          favoured=Side("with residual", {"setting": _tab4_label("1", "yes", "dw+1x1", (5, 7))}),
          against=(Side("no residual", {"setting": _tab4_label("1", "no", "dw+1x1", (5, 7))}),),
          floor=_WORKS_LIKE_A_PEER),
    Claim("linear_complexity", "MambaAD's decoder has linear complexity in the number of tokens (Sec. 1, Fig. 1): "
          "its time grows with a fitted exponent near 1, below a same-width self-attention block's.",
          "Sec. 1 and 3, Fig. 1", table="complexity", metric="exponent", level="model", higher_is_better=False,
          favoured=Side("MambaAD decoder", {"method": "MambaAD"}),
          against=(Side("self-attention", {"method": "attention"}),),
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

# ------------------------------------------------------------------------------------------- appendix tables
# Tables A1-A12 print one dataset each, per category, at one level: table -> (dataset folder, level). 01_main_results
# fills them from the runs of Table 1 (``adlib.study.tables.appendix_tables``), never from new fits.

APPENDIX = {"tableA1": ("mvtec_ad", "image"), "tableA2": ("mvtec_ad", "pixel"), "tableA3": ("visa", "image"),
            "tableA4": ("visa", "pixel"), "tableA5": ("mvtec_3d", "image"), "tableA6": ("mvtec_3d", "pixel"),
            "tableA7": ("uni_medical", "image"), "tableA8": ("uni_medical", "pixel"),
            "tableA9": ("coco_ad", "image"), "tableA10": ("coco_ad", "pixel"),
            "tableA11": ("real_iad", "image"), "tableA12": ("real_iad", "pixel")}
# The embedded multi-class set is in MVTec AD's layout and stands in for it: its per-category rows go with A1/A2
# (marked synthetic, so never set against a printed cell).
APPENDIX_SYNTHETIC = ("mvtec_ad",)
