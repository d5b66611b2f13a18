"""ViTAD (Zhang et al.): plain-ViT feature reconstruction for multi-class anomaly detection.

The paper's spec for the notebooks in ``notebooks/vitad/``: profiles, recipes, tables, figures and the claims
the notebooks decide over seeds. The model is ``adlib/models/vitad.py``; the printed numbers are
``results/paper/vitad/table1.csv`` ... ``table13.csv`` (``benchmarks/vitad_paper_tables.py``).

The paper evaluates with ADer's evaluator (protocol "ader") in the multi-class setting: one model for all
categories of a dataset. The smoke profile keeps both; it swaps the DINO ViT-S/16 encoder, whose weights cannot
be had offline, for the offline ImageNet EfficientNet-Lite0 made columnar (every stage resampled to the
stride-16 grid, see the model docs), and runs the random ViT-S/16 (Tab. I "Rand") where the paper's own
architecture matters more than the weights.

Variant grids (``ProfileSpec.grids``) map the label a table row carries (the ``setting`` column of the paper's
CSVs) to config or engine overrides; ``<table>_not_run`` says why a row cannot run in that profile.
"""
from __future__ import annotations

from adlib.engine import FitConfig
from adlib.papers import peers
from adlib.study.cost import StructureProbe, augments_in_training
from adlib.study.spec import (Claim, ExplorerAxis, Floor, NotebookRuns, PaperSpec, ProfileSpec, Recipe, Side, TableSpec,
                              TrainTime, side)

# ------------------------------------------------------------------------------------------- variant grids

# The paper's encoder, as a config override (the decoder width then follows the encoder, as in the paper).
_DINO = {"backbone": "dino_vits16", "decoder_dim": None}
# The random, frozen ViT-S/16 (Tab. I "Rand"); on a CPU at 128 px (8 x 8 tokens), as repro_spec's smoke plan.
_RAND_VIT = {"backbone": "dino_vits16", "pretrained": False, "decoder_dim": None, "image_size": 128}


def _over(base: dict, variants: dict[str, dict]) -> dict[str, dict]:
    return {label: {**base, **overrides} for label, overrides in variants.items()}


# Tab. I: the encoder's pre-training. Rows whose weights have no adlib.backbones entry are not run.
_TABLE1 = {
    "encoder=DINO": _DINO,
    "encoder=DINO*": {"backbone": "dino_vits8", "decoder_dim": None},  # ViT-S/8 at 256 px (repro_spec §1.11.4)
    "encoder=CLIP": {"backbone": "clip_vitb16", "decoder_dim": None},  # ADer's CLIP row is a ViT-B/16 too
    "encoder=MAE": {"backbone": "mae_vitb16", "decoder_dim": None},  # ADer's MAE row is a ViT-B/16 too
    "encoder=IN22K": {"backbone": "vit_b16", "decoder_dim": None},  # timm's IN-21k -> 1k ViT-B/16 (augreg2)
}
_TABLE1_NOT_RUN = {
    "encoder=IN1K": "no adlib.backbones entry for ViT-S/16 IN-1k (timm vit_small_patch16_224.augreg_in1k)",
    "encoder=DeiT": "no adlib.backbones entry for DeiT-S (timm deit_small_distilled_patch16_224.fb_in1k)",
    "encoder=MoCo": "MoCo v3 ViT-S weights are not on the timm hub (ADer downloads them from fbaipublicfiles)",
    "encoder=DINO†": "the paper does not state DINO†'s resolution (repro_spec §1.11.4)",
}
# Tab. II: restraint stages. The decoder mirrors the encoder: stage s is rebuilt after 4 - s divisions of 3 blocks
# (the paper does not say how it changed the decoder; this keeps the reversed pairing of the final model).
_TABLE2 = {
    "stages=3": {"restraint_stages": (3,), "decoder_divisions": (3,)},
    "stages=2+3": {"restraint_stages": (2, 3), "decoder_divisions": (3, 3)},
    "stages=1+2+3": {},
    "stages=0+1+2+3": {"restraint_stages": (0, 1, 2, 3), "decoder_divisions": (3, 3, 3, 3)},
}
# Tab. III: the four micro factors; labels name the factors switched off ("default": all four on).
_FACTORS = {"before_norm": {"before_norm": False}, "add_linear": {"fuser_linear": False},
            "pos_embed": {"pos_embed": False}, "remove_cls": {"remove_cls": False}}
_TABLE3 = {}
for _off in [(), ("before_norm", "add_linear", "pos_embed", "remove_cls"), ("add_linear", "pos_embed", "remove_cls"),
             ("before_norm", "pos_embed", "remove_cls"), ("before_norm", "add_linear", "remove_cls"),
             ("before_norm", "add_linear", "pos_embed"), ("before_norm",), ("add_linear",), ("pos_embed",),
             ("remove_cls",)]:
    _TABLE3[",".join(f"{f}=no" for f in _off) or "default"] = {k: v for f in _off for k, v in _FACTORS[f].items()}
# Tab. VIII: fuser structures (Fig. 7).
_TABLE8 = {"fuser=linear": {}}
for _kind in ("cat", "add"):
    for _layers in ((0, 1, 2, 3, 4), (1, 2, 3, 4), (2, 3, 4), (3, 4)):
        _TABLE8[f"fuser={_kind},layers={'+'.join(map(str, _layers))}"] = {
            "fuser": "linear" if _kind == "cat" else "add", "fuser_stages": _layers}
for _kind in ("vit", "conv"):
    for _depth in (1, 3, 5):
        _TABLE8[f"fuser={_kind},depth={_depth}"] = {"fuser": _kind, "fuser_depth": _depth}
# Tab. IX: scale (the decoder follows the encoder's width and heads).
_TABLE9 = {"init=DINO,scale=ViT-S": _DINO}
_TABLE9_NOT_RUN = {
    **{f"init=IN1K,scale=ViT-{s}": f"no adlib.backbones entry for the IN-1k ViT-{s} the paper used"
       for s in ("T", "S", "B", "L", "H")},
    "init=DINO,scale=ViT-B": "no adlib.backbones entry for DINO ViT-B/16 (timm vit_base_patch16_224.dino)",
}
# Tab. X: encoder divisions x blocks | decoder divisions x blocks (or blocks per division).
_TABLE10 = {
    "encoder=1x3,decoder=1x3": {"layers": (3,), "restraint_stages": (1,), "decoder_divisions": (3,)},
    "encoder=2x3,decoder=1x3": {"layers": (3, 6), "restraint_stages": (1,), "decoder_divisions": (3,)},
    "encoder=3x3,decoder=2x3": {"layers": (3, 6, 9), "restraint_stages": (1, 2), "decoder_divisions": (3, 3)},
    "encoder=4x3,decoder=3x2": {"decoder_divisions": (2, 2, 2)},
    "encoder=4x3,decoder=3x4": {"decoder_divisions": (4, 4, 4)},
    "encoder=4x3,decoder=2-3-4": {"decoder_divisions": (2, 3, 4)},
    "encoder=4x3,decoder=4-3-2": {"decoder_divisions": (4, 3, 2)},
    "encoder=6x2,decoder=5x2": {"layers": (2, 4, 6, 8, 10, 12), "restraint_stages": (1, 2, 3, 4, 5),
                                "decoder_divisions": (2, 2, 2, 2, 2)},
    "encoder=3x4,decoder=2x4": {"layers": (4, 8, 12), "restraint_stages": (1, 2), "decoder_divisions": (4, 4)},
    "encoder=4x3,decoder=3x3": {},
}
# Tab. XI: the loss (ViTAD's rows; RD's and UniAD's are the peers' business).
_TABLE11 = {"loss=L1": {"loss": "l1"}, "loss=MSE": {"loss": "mse"}, "loss=Cosp": {"loss": "cos_pos"}, "loss=Cosf": {}}
# Tab. XII: schedule and augmentation; epochs are given as fractions of the recipe's (paper: 100 epochs).
_TABLE12 = {"scheduler=Step": {}, "scheduler=Cosine": {"schedule": "cosine"}, "augmentation=None": {},
            "augmentation=CC+CJ": {"augmentation": "cc+cj"}, "augmentation=CC+RHF": {"augmentation": "cc+rhf"},
            "augmentation=CC+RR": {"augmentation": "cc+rr"}, "augmentation=RRC": {"augmentation": "rrc"},
            "augmentation=All": {"augmentation": "all"}}
_EPOCH_FRACTIONS = {"epochs=30": 0.3, "epochs=50": 0.5, "epochs=100": 1.0, "epochs=200": 2.0, "epochs=300": 3.0}

# The explorer's axes (notebooks/vitad/03_explorer): the ablation tables a smoke fit can run.
EXPLORER = (
    ExplorerAxis("stages", "table2", "which encoder stages the decoder restores and the loss compares (Tab. II; "
                 "the paper's 1+2+3)", default="stages=1+2+3"),
    ExplorerAxis("fuser", "table8", "how the encoder's stages are fused into the decoder's input (Tab. VIII; the "
                 "paper's one Linear on the last stage)", default="fuser=linear"),
    ExplorerAxis("loss", "table11", "the distance between encoder and decoder features that training minimises "
                 "(Tab. XI; the paper's cosine over features, Cosf)", default="loss=Cosf"),
)

SMOKE = ProfileSpec(
    description="2-core CPU in minutes: the embedded multi-class set (+ real MVTec AD bottle when present), the "
                "offline ImageNet EfficientNet-Lite0 made columnar (stride-16 grid, 8 x 8 tokens) for DINO "
                "ViT-S/16, 128 px, at most 16 training images per category, multi-class, ADer's evaluator",
    # 128 px and 16 training images per category keep every ViTAD notebook's claims (3 seeds each) inside the
    # smoke budget; measured in notebooks/vitad/01_main_results (multi-class against PatchCore on the same
    # images) and benchmarks/vitad.py.
    image_size=128,
    backbone="efficientnet_lite0",
    paper_backbone="dino_vits16",
    max_train=16,
    max_test=24,
    seeds=(0, 1, 2),
    synthetic=("synthetic_multi", "synthetic_ad"),
    synthetic_categories=None,
    real_datasets=("mvtec_ad",),
    real_categories=("bottle",),
    class_setting="multi-class",
    protocol="ader",
    shared_backbone=True,
    grids={"explorer": EXPLORER, 
        # Tab. I on a CPU: the random ViT-S/16 (the paper's "Rand" row) and the substitute CNN with and without
        # its ImageNet weights (an analogue of "pre-training matters", labelled as the CNN variant).
        "table1": {"encoder=Rand": _RAND_VIT, "cnn=ImageNet": {}, "cnn=Rand": {"pretrained": False}},
        "table1_not_run": {**{k: "its weights need the timm hub (no network here)" for k in _TABLE1},
                           **_TABLE1_NOT_RUN},
        "table2": _TABLE2,
        # Before-norm and the class token exist only in a ViT: Tab. III runs on the random ViT-S/16 at 128 px.
        "table3": _over(_RAND_VIT, _TABLE3),
        "table8": _TABLE8,
        "table9": {},
        "table9_not_run": {"init=DINO,scale=ViT-S": "its weights need the timm hub (no network here)",
                           **_TABLE9_NOT_RUN},
        # Tab. X changes ViT block taps: on the random ViT-S/16 at 128 px.
        "table10": _over(_RAND_VIT, _TABLE10),
        "table11": _TABLE11,
        "table12": _TABLE12,
        "table12_epochs": _EPOCH_FRACTIONS,
        "resolutions": (64, 128, 256),  # Fig. 9 (paper: 64 to 512 in steps of 32, and 768)
        # The real MVTec AD categories (bottle here) run at the paper's 256 px, 40 training images, all test
        # images and 5 epochs (study.setting.real_data_setting): at 128 px the stride-16 token grid is 8 x 8, too
        # coarse for bottle's small defects (benchmarks/vitad.py bottle and bottle-recipes print the measurements).
        # "epochs" replaces every gradient-trained model's recipe epochs on the real data (PatchCore: one pass).
        "real_data": {"image_size": 256, "max_train": 40, "max_test": None, "epochs": 5},
    },
)

PAPER_PROFILE = ProfileSpec(
    description="the paper's settings on one GPU: DINO ViT-S/16 at 256 px, multi-class on all categories of "
                "MVTec AD and VisA, 100 epochs, ADer's evaluator",
    image_size=256,
    backbone="dino_vits16",
    paper_backbone="dino_vits16",
    max_train=None,
    max_test=None,
    seeds=(0, 1, 2),
    synthetic=("synthetic_multi", "synthetic_ad"),
    synthetic_categories=None,
    real_datasets=("mvtec_ad", "visa"),
    real_categories=None,
    class_setting="multi-class",
    protocol="ader",
    shared_backbone=False,
    grids={"explorer": EXPLORER, 
        "table1": {"encoder=Rand": {**_DINO, "pretrained": False}, **_TABLE1},
        "table1_not_run": _TABLE1_NOT_RUN,
        "table2": _TABLE2, "table3": _TABLE3, "table8": _TABLE8,
        "table9": _TABLE9, "table9_not_run": _TABLE9_NOT_RUN,
        "table10": _TABLE10, "table11": _TABLE11, "table12": _TABLE12, "table12_epochs": _EPOCH_FRACTIONS,
        "resolutions": tuple(range(64, 513, 32)) + (768,),
    },
)

# The paper's own training times (for `adlib reproduce --plan`): Table XIII, one V100, batch 8, MVTec AD multi-class.
_TAB13 = "Table XIII (train time on MVTec AD, one V100, batch 8)"
TRAIN_TIMES = {
    "vitad": TrainTime(1.1, "dataset", "one V100", _TAB13 + "; Sec. 1: '1.1 hours'"),
    "rd4ad": TrainTime(4.1, "dataset", "one V100", _TAB13),
    "uniad": TrainTime(13.4, "dataset", "one V100", _TAB13),
    "patchcore": TrainTime(None, "dataset", note="not stated (Table XIII has no PatchCore row)"),
}
NOTEBOOK_RUNS = {
    "00_method": NotebookRuns(("vitad",), datasets=("mvtec_ad",), seeds=False, weights=("efficientnet_lite0",),
                              note="one one-class fit, plus random-weight encoders for the figures"),
    "01_main_results": NotebookRuns(("vitad", "patchcore", "rd4ad", "uniad")),
    "02_ablations": NotebookRuns(("vitad",), ("table1", "table2", "table3", "table8", "table9", "table10", "table11",
                                              "table12", "resolutions", 1), datasets=("mvtec_ad",),
                                 weights=("dino_vits8", "clip_vitb16", "mae_vitb16", "vit_b16")),
    "03_explorer": NotebookRuns(("vitad",), (2,), datasets=("mvtec_ad",), seeds=False,
                                note="the default and one contrast (02_ablations' runs: read from the run cache)"),
}

# ------------------------------------------------------------------------------------------------ recipes

RECIPES = {
    # CPU-sized decoder (width 128, 2 heads, the paper's 3 x 3 blocks) on the columnar EfficientNet-Lite0 stages;
    # lr 5e-4 because a few dozen steps replace the paper's 45,000; sized so that the notebooks' 3-seed claims fit
    # the smoke budget (benchmarks/vitad.py sizing). At 128 px no cheap recipe change makes bottle's small defects
    # visible on the 8 x 8 token grid (benchmarks/vitad.py bottle-recipes prints each change); the real category
    # runs at the profile's real-data setting instead (SMOKE.grids["real_data"]; benchmarks/vitad.py bottle).
    ("vitad", "smoke"): Recipe(
        model={"backbone": "efficientnet_lite0", "decoder_dim": 128, "decoder_heads": 2},
        fit=FitConfig(epochs=3, batch_size=8, lr=5e-4, weight_decay=1e-4, schedule="step", step_at=0.8,
                      step_gamma=0.1, grad_clip=5.0),
        notes={"backbone": "offline ImageNet EfficientNet-Lite0 stages 1-4 resampled to the stride-16 grid "
                           "instead of DINO ViT-S/16 blocks 3/6/9/12 (no hub weights offline)",
               "decoder_dim": "128 wide, 2 heads instead of the encoder's 384 / 6 (CPU); a Linear read-out per stage",
               "epochs": "3 instead of 100 (CPU); the real MVTec AD category gets 5 (the profile's real-data "
                         "setting: 40 training images at 256 px)",
               "lr": "5e-4 instead of 1e-4: far fewer steps",
               "image_size": "128 px instead of 256 on the synthetic sets (CPU budget); the real MVTec AD category "
                             "runs at the paper's 256 px: at 128 px the 8 x 8 stride-16 token grid is too coarse for "
                             "bottle's defects (benchmarks/vitad.py bottle --image-size 128 256 measures both)"},
    ),
    # The paper (Sec. 4.1) and ADer's configs/vitad/vitad_mvtec.py: AdamW lr 1e-4 (x batch / 8), wd 1e-4,
    # betas 0.9 / 0.999, batch 8, 100 epochs, lr x 0.1 after 80% of the steps, gradient norm clipped at 5.
    ("vitad", "paper"): Recipe(
        model={"backbone": "dino_vits16", "image_size": 256},
        fit=FitConfig(epochs=100, batch_size=8, lr=1e-4, weight_decay=1e-4, betas=(0.9, 0.999), schedule="step",
                      step_at=0.8, step_gamma=0.1, grad_clip=5.0),
        notes={"seed": "ADer uses seed 42 once; the claims use seeds 0, 1, 2",
               "evaluation": "the last epoch is reported; the paper's best-of-ten by pixel mAU-ROC is a second "
                             "column (repro_spec §1.6)"},
    ),
    **peers.RECIPES,
}


# -------------------------------------------------------------------------------------------------- tables

_BACKBONES = {"ViTAD": "dino_vits16", "RD": "wide_resnet50", "UniAD": "efficientnet_b4", "PatchCore": "wide_resnet50",
              "DRAEM": "its own U-Nets", "DeSTSeg": "resnet18", "SimpleNet": "wide_resnet50"}
_MUAD = dict(image_size=256, protocol="ader", class_setting="multi-class")
_ABLATION = dict(_MUAD, backbones={"ViTAD": "dino_vits16"}, rows=("setting",), columns=("level", "metric"))

TABLES = {
    "table1": TableSpec("Table I: the encoder's pre-trained weights (ViT-S, MVTec AD, multi-class)", **_ABLATION,
                        note="MoCo and MAE rows are identical as printed (repro_spec §1.11.5)"),
    "table2": TableSpec("Table II: which encoder stages are restrained (0 = stem)", **_ABLATION),
    "table3": TableSpec("Table III: micro design factors (before norm, fuser linear, position embedding, class token)",
                        **_ABLATION, note="the text says before-norm slightly lowers image metrics; the table says "
                                          "the opposite (repro_spec §1.11.3)"),
    "table4": TableSpec("Table IV: properties of the compared methods (1 = yes)", rows=("method",), columns=("metric",),
                        note="no numbers in the paper; partly garbled in the extraction (repro_spec §1.7)"),
    "table5": TableSpec("Table V: MVTec AD, multi-class, image level per category", **_MUAD, backbones=_BACKBONES,
                        rows=("dataset",), columns=("method", "metric")),
    "table6": TableSpec("Table VI: MVTec AD, multi-class, pixel level per category and mAD", **_MUAD,
                        backbones=_BACKBONES, rows=("dataset",), columns=("method", "metric")),
    "table7": TableSpec("Table VII: VisA, multi-class, image and pixel level per category and mAD", **_MUAD,
                        backbones=_BACKBONES, rows=("dataset",), columns=("method", "metric")),
    "table8": TableSpec("Table VIII: fuser structures (Fig. 7)", **_ABLATION),
    "table9": TableSpec("Table IX: encoder scale (IN-1k ViT-T/S/B/L/H, DINO ViT-S/B)", **{**_ABLATION, "backbones": {}},
                        note="the backbone is the row's own"),
    "table10": TableSpec("Table X: encoder and decoder depth and division", **_ABLATION),
    "table11": TableSpec("Table XI: training loss for RD, UniAD and ViTAD",
                         **{**_ABLATION, "backbones": _BACKBONES, "rows": ("method", "setting")},
                         note="each method's own loss (dagger): RD Cos_f, UniAD MSE, ViTAD Cos_f"),
    "table12": TableSpec("Table XII: epochs, learning-rate schedule and augmentation", **_ABLATION,
                         note="augmentation parameters are not given; ours are in adlib.models.vitad"),
    "table13": TableSpec("Table XIII: efficiency (one V100, batch 8): parameters, FLOPs, training memory and time",
                         image_size=256, backbones=_BACKBONES, rows=("method",), columns=("metric",),
                         note="FLOPs are multiply-adds (fvcore's count); times are for each method's own epochs "
                              "(ViTAD 100, UniAD 1000, DRAEM 300) and a GPU: never compared with a CPU"),
    "fig9": TableSpec("Fig. 9: metrics against input resolution (no numbers printed)", **_MUAD,
                      backbones={"ViTAD": "dino_vits16"}, rows=("setting",), columns=("level", "metric")),
}

FIGURES = {
    "fig1": "Fig. 1: the four encoder-decoder families; ViTAD against the state of the art on the eight metrics",
    "fig2": "Fig. 2: single-class against multi-class anomaly detection (schematic)",
    "fig3": "Fig. 3: the Meta-AD framework E -> F -> D (schematic, drawn from the model's structure)",
    "fig4": "Fig. 4: per-stage features of a CNN and a ViT on normal and abnormal images",
    "fig5": "Fig. 5: the design path from the naive ViT to ViTAD (macro and micro steps)",
    "fig6": "Fig. 6: anomaly maps of the compared methods on MVTec AD and VisA",
    "fig7": "Fig. 7: fuser structures (schematic)",
    "fig8": "Fig. 8: metrics over training epochs",
    "fig9": "Fig. 9: metrics against input resolution",
    "fig10": "Fig. 10: high- and low-frequency parts of an anomalous image and each method's maps",
}

# ---------------------------------------------------------------------------------------------- efficiency
# Table XIII's metrics that are GPU measurements (benchmarks/gpu_vitad.py on a lent GPU), with the reason they are
# not run here; parameters and multiply-adds are counted by adlib.study.cost.architecture_rows.
GPU_MEASURED = {m: "a GPU measurement (benchmarks/gpu_vitad.py on a lent GPU); not run on this CPU"
                for m in ("train_memory_mb", "train_h")}


# -------------------------------------------------------------------------------------------------- claims

# When ViTAD counts as working (adlib.study.spec.Floor): above chance on the same images against the peers; for its
# ablations also half the best other method's mAD on the same images where one ran.
_WORKS = Floor(why="ViTAD must detect something on these images: above chance")
_WORKS_LIKE_A_PEER = Floor(of_best_peer=0.5, why="an ablation is read only where ViTAD works: above chance and at half "
                                                 "the best other method's value")


def _settings(table: dict, default: str) -> tuple[Side, ...]:
    return tuple(side(label, setting=label) for label in table if label != default)


CLAIMS = (
    Claim("plain_vit_matches_pyramidal",
          "A plain, columnar ViT matches or beats the pyramidal reconstruction methods in the multi-class setting "
          "(ViTAD pixel mAU-ROC 97.7 against RD 96.1 and UniAD 97.0).", "Sec. 4.2, Tables V-VI", table="table6",
          metric="auroc", favoured=side("ViTAD", method="ViTAD"),
          against=(side("RD", method="RD"), side("UniAD", method="UniAD"), side("PatchCore", method="PatchCore")),
          note="'matches' is the paper's word: held means ViTAD is higher, inconclusive is consistent with matching",
          floor=_WORKS),
    Claim("dino_weights_best", "DINO pre-training gives the best encoder: it leads every column of Table I's "
          "first eight rows.", "Sec. 4.3, Table I", table="table1", metric="mad", level="summary",
          favoured=side("DINO", setting="encoder=DINO"),
          against=tuple(side(k.split("=")[1], setting=k) for k in
                        ("encoder=Rand", "encoder=IN1K", "encoder=IN22K", "encoder=DeiT", "encoder=CLIP",
                         "encoder=MoCo", "encoder=MAE")),
          note="needs hub weights; offline only the random encoder runs", floor=_WORKS_LIKE_A_PEER),
    Claim("restraint_stages_123", "Restraining stages 1, 2 and 3 is best (Table II: mAD 85.4 against 82.4 for "
          "stage 3 alone, 84.0 for 2+3, 83.9 with the stem).", "Sec. 4.3, Table II", table="table2", metric="mad",
          level="summary", favoured=side("1+2+3", setting="stages=1+2+3"),
          against=_settings(_TABLE2, "stages=1+2+3"), floor=_WORKS_LIKE_A_PEER),
    Claim("single_linear_fuser", "A single linear layer on the last stage suffices as the fuser: fusing several "
          "stages (Cat or Add) does not do better (Table VIII).", "Sec. 4.3, Table VIII", table="table8", metric="mad",
          level="summary", favoured=side("one Linear", setting="fuser=linear"),
          against=tuple(side(k, setting=k) for k in _TABLE8 if k.startswith(("fuser=cat", "fuser=add"))),
          note="Table VIII's Conv-1 fuser is 0.8 mAD higher; the paper keeps the Linear for simplicity",
          floor=_WORKS_LIKE_A_PEER),
    *(Claim(f"{factor}_helps", f"Micro factor '{factor}' (Table III): the final model with it beats the model "
            f"without it.", "Sec. 4.3, Table III", table="table3", metric="mad", level="summary",
            favoured=side("all four factors", setting="default"),
            against=(side(f"without {factor}", setting=f"{factor}=no"),),
            note="the paper's differences are 0.1-0.2 mAD; " + (
                "its text says the opposite sign for before-norm (repro_spec §1.11.3)" if factor == "before_norm"
                else "expect inconclusive on a CPU"), floor=_WORKS_LIKE_A_PEER)
      for factor in _FACTORS),
    Claim("resolution_up_to_256", "Results rise with the input resolution up to 256 px (Fig. 9).", "Sec. 4.4, Fig. 9",
          table="fig9", metric="mad", level="summary", favoured=side("256 px", setting="res=256"),
          against=(side("64 px", setting="res=64"), side("128 px", setting="res=128")),
          note="the plateau after 256 and the decline at 768 are not decided here", floor=_WORKS_LIKE_A_PEER),
    Claim("no_augmentation", "Every data augmentation tried hurts: no augmentation is best (Table XII).",
          "Sec. 4.3, Table XII", table="table12", metric="mad", level="summary",
          favoured=side("none", setting="augmentation=None"),
          against=tuple(side(k.split("=")[1], setting=k) for k in _TABLE12
                        if k.startswith("augmentation=") and k != "augmentation=None"), floor=_WORKS_LIKE_A_PEER),
)

PAPER = PaperSpec(
    name="vitad",
    title="ViTAD: exploring plain ViT reconstruction for multi-class unsupervised anomaly detection",
    method="vitad",
    profiles={"smoke": SMOKE, "paper": PAPER_PROFILE},
    recipes=RECIPES,
    methods={"vitad": "ViTAD", "rd4ad": "RD", "uniad": "UniAD", "patchcore": "PatchCore"},
    claims=CLAIMS,
    tables=TABLES,
    figures=FIGURES,
    datasets={"mvtec_ad": "MVTec AD", "visa": "VisA"},
    train_times=TRAIN_TIMES,
    notebook_runs=NOTEBOOK_RUNS,
    reference_code="The authors' code is the ADer toolbox (zhangzjn/ADer, commit 902937a): model, trainer and evaluator.",
)


# ------------------------------------------------------------------------------------- Table IV (properties)

# Table IV's columns, as the notebook shows them (repro_spec §1.7); the paper prints ticks, no numbers.
PROPERTY_COLUMNS = {
    "pyramidal_encoder": "pyramidal encoder", "heavy_fuser": "heavy fuser", "pyramidal_decoder": "pyramidal decoder",
    "multi_resolution_features": "multi-resolution features", "image_feature_augmentation": "image/feature augmentation",
    "category_aug": "augmentation-based", "category_emb": "embedding-based", "category_rec": "reconstruction-based",
}
# "Heavy": the trainable module between encoder and decoder holds more than this share of the trained parameters
# (our definition; the paper gives none). ViTAD's Linear is under 1 %, RD's OCBE about half.
HEAVY_FUSER_SHARE = 0.1


# How each compared method's structure is read (adlib.study.cost.StructureProbe): what its decoder gives from the
# encoder features, and (fuser, decoder) modules. UniAD's neck (resize and concatenate the taps) has no
# parameters; its input projection is one Linear. PatchCore has no decoder: a memory bank of patch embeddings.
PROBES = {
    "vitad": StructureProbe(lambda m, f: m.forward_features(f)["reconstructions"],
                            lambda m: ([m.fuser], [m.decoder, m.readouts]), augments_in_training),
    "rd4ad": StructureProbe(lambda m, f: m.forward_features(f), lambda m: ([m.ocbe], [m.decoder]), augments_in_training),
    "uniad": StructureProbe(lambda m, f: [m.reconstruct(m.targets(f))], lambda m: (
        [m.input_proj], [c for n, c in m.named_children() if n not in ("tokenizer", "input_proj")]), augments_in_training),
    "patchcore": StructureProbe(lambda m, f: [], lambda m: ([], []), augments_in_training),
}
