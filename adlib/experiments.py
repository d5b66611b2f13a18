"""Run grids of configurations through the engine and collect long-format results (for the notebooks).

A notebook's parameters (profile, data_root, category, image_size, backbone, epochs, seed, device,
output_root) become one concrete `Setting` via `resolve_setting`; `run_grid(setting, variants)` fits and
evaluates every variant on every data source and returns one long table
(`dataset, method, setting, level, metric, value, profile, backbone, data`, values in percent) that
`Setting.write_table` writes with provenance.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

PAPER = "varad"
PRIMARY_MODEL = "varad"  # the paper's method: the setting's backbone is its tokenizer
DATA_ENV = "ADLIB_DATA"
# Dataset folder name -> the display name the papers use.
DISPLAY_NAMES = {"mvtec_ad": "MVTec AD", "visa": "VisA", "btad": "BTAD", "dtd_synthetic": "DTD-Synthetic"}
PAPER_DATASETS = ("mvtec_ad", "visa", "btad", "dtd_synthetic")


@dataclass(frozen=True)
class ProfileDefaults:
    """What a profile means when a notebook parameter is None, plus the profile's ablation grids."""

    image_size: int
    backbone: str
    epochs: int
    max_train: int | None  # cap on training images per category (None: all)
    max_test: int | None  # cap on test images per category, half good and half defective where possible
    batch_size: int
    real_datasets: tuple[str, ...]  # dataset folders under the data root that the profile runs
    real_categories: tuple[str, ...] | None  # None: every category found
    m_values: tuple[int, ...]  # Fig. 4 prediction steps
    resolutions: tuple[int, ...]  # Fig. 5 resolutions
    hr_size: int | None  # native size of the synthetic high-resolution set (None: the generator's default)
    ablation_size: int | None  # image size of the Fig. 4 ablations (None: image_size)
    # True: every model uses the setting's backbone (smoke: the only one with offline weights); False: the
    # baselines keep their own paper backbone (PatchCore: Wide-ResNet-50) unless `backbone` is given.
    shared_backbone: bool


PROFILES: dict[str, ProfileDefaults] = {
    # Sized for a 2-core CPU: every VarAD fit sees at most 40 images (all of a synthetic category's) for
    # 4 epochs (batch 4: 40 steps). On MVTec AD bottle, 12 images gave pixel AUROC 88 / max-F1 52 and
    # 40 images 97.4 / 68.7 (PatchCore: 98.7 / 72.6).
    "smoke": ProfileDefaults(image_size=256, backbone="efficientnet_lite0", epochs=4, max_train=40,
                             max_test=16, batch_size=4, real_datasets=("mvtec_ad",),
                             real_categories=("bottle",), m_values=(1, 2, 4, 6), resolutions=(128, 256, 512),
                             hr_size=None, ablation_size=128, shared_backbone=True),
    # The paper's settings (Sec. IV.A.2): 1024 px, DINOv2 ViT-S/14, 10 epochs, all images and categories.
    "paper": ProfileDefaults(image_size=1024, backbone="dinov2_vits14", epochs=10, max_train=None,
                             max_test=None, batch_size=2, real_datasets=PAPER_DATASETS, real_categories=None,
                             m_values=tuple(range(1, 9)), resolutions=(256, 512, 768, 1024), hr_size=1024,
                             ablation_size=None, shared_backbone=False),
}


@dataclass(frozen=True)
class DataSource:
    """One category of one dataset folder."""

    dataset: str  # display name ("MVTec AD", "synthetic_ad")
    root: Path  # the dataset folder (MVTec layout)
    category: str

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.category}"


@dataclass(frozen=True)
class Setting:
    """The concrete settings a notebook runs with (see `resolve_setting`)."""

    profile: str
    image_size: int
    backbone: str
    epochs: int
    seed: int
    device: str
    max_train: int | None
    max_test: int | None
    batch_size: int
    synthetic_root: Path | None
    real_root: Path | None
    category: str | None
    output_root: Path | None
    extra: dict = field(default_factory=dict)
    backbone_explicit: bool = False  # the notebook set `backbone` (it then applies to every model)

    # --------------------------------------------------------------------------------------- data
    def synthetic_sources(self, dataset: str = "synthetic_ad", categories: Sequence[str] | None = None,
                          limit: int | None = 1) -> list[DataSource]:
        """Categories of an embedded synthetic dataset (the first `limit` unless `categories` is given)."""
        if self.synthetic_root is None:
            return []
        from adlib.data import list_categories

        root = Path(self.synthetic_root) / dataset
        found = list_categories(root)
        if categories is None and self.category and self.category in found:
            categories = [self.category]
        if categories is None:
            categories = found[:limit] if limit else found
        missing = [c for c in categories if c not in found]
        if missing:
            raise ValueError(f"categories {missing} not in {root}; expected some of {found}")
        return [DataSource(dataset, root, c) for c in categories]

    def real_sources(self) -> list[DataSource]:
        """Categories of the real datasets the profile runs that exist under the data root."""
        if self.real_root is None:
            return []
        from adlib.data import list_categories

        defaults = self.defaults
        out = []
        for folder in defaults.real_datasets:
            root = Path(self.real_root) / folder
            if not root.is_dir():
                continue
            found = list_categories(root)
            wanted = [self.category] if self.category else (defaults.real_categories or found)
            out += [DataSource(DISPLAY_NAMES.get(folder, folder), root, c) for c in wanted if c in found]
        return out

    def sources(self, synthetic: bool = True, real: bool = True) -> list[DataSource]:
        return (self.synthetic_sources() if synthetic else []) + (self.real_sources() if real else [])

    @property
    def defaults(self) -> ProfileDefaults:
        return PROFILES[self.profile]

    # --------------------------------------------------------------------------------------- output
    @property
    def caps(self) -> str:
        parts = []
        if self.max_train is not None:
            parts.append(f"≤{self.max_train} train")
        if self.max_test is not None:
            parts.append(f"≤{self.max_test} test")
        return ", ".join(parts) if parts else "all images"

    def data_label(self, sources: Iterable[DataSource]) -> str:
        names = ", ".join(s.name for s in sources) or "no data"
        return f"{names} ({self.caps}, {self.image_size}px)"

    def params(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}

    def write_table(self, df: pd.DataFrame, name: str, data: str | None = None, backbone: str | None = None) -> Path:
        """`adlib.results.write_table` under this setting's profile and output root."""
        from adlib import results

        data = data or (", ".join(dict.fromkeys(df["data"].astype(str))) if "data" in df.columns else "")
        if backbone is None:
            backbone = ", ".join(dict.fromkeys(df["backbone"].astype(str))) if "backbone" in df.columns else self.backbone
        return results.write_table(df, PAPER, name, profile=self.profile, backbone=backbone, data=data,
                                   params=self.params(), root=self.output_root)

    def save_figure(self, fig, name: str, data: str, backbone: str | None = None) -> Path:
        """`adlib.results.save_figure` under this setting's profile and output root."""
        from adlib import results

        return results.save_figure(fig, PAPER, name, profile=self.profile, backbone=backbone or self.backbone,
                                   data=data, params=self.params(), root=self.output_root)

    def describe(self) -> str:
        lines = [f"profile {self.profile}: {self.image_size}px, backbone {self.backbone}, {self.epochs} epochs, "
                 f"seed {self.seed}, device {self.device}, {self.caps} per category",
                 f"synthetic data: {self.synthetic_root}", f"real data: {self.real_root or 'none found'}",
                 f"outputs under: {self.output_root or 'the repository root'}"]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return "\n".join(f"- {line}" for line in self.describe().splitlines())


def _real_root(data_root: str | os.PathLike | None) -> Path | None:
    """`data_root` when given, else `$ADLIB_DATA` when set and it exists."""
    if data_root is not None:
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"data_root={str(data_root)!r} is not a folder; expected a folder holding "
                                    "dataset folders such as mvtec_ad/")
        return root
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env and Path(env).expanduser().is_dir() else None


def resolve_setting(profile: str = "smoke", data_root: str | os.PathLike | None = None,
                    category: str | None = None, image_size: int | None = None, backbone: str | None = None,
                    epochs: int | None = None, seed: int = 0, device: str = "cpu",
                    output_root: str | os.PathLike | None = None, synthetic: bool = True,
                    **overrides: Any) -> Setting:
    """Turn notebook parameters into a `Setting`; None means the profile's default.

    The real data root is `data_root`, else `$ADLIB_DATA` when set; the embedded synthetic data comes from
    `adlib.data.synthetic_root(seed)` (generated on first use). `overrides` may set `max_train`,
    `max_test`, `batch_size`; anything else lands in `extra`.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} unknown; expected one of {sorted(PROFILES)}")
    defaults = PROFILES[profile]
    synthetic_root = None
    if synthetic:
        from adlib.data import synthetic_root as make_synthetic

        synthetic_root = Path(make_synthetic(seed=seed, hr_size=defaults.hr_size))
    known = {k: overrides.pop(k) for k in ("max_train", "max_test", "batch_size") if k in overrides}
    return Setting(
        profile=profile,
        image_size=int(image_size or defaults.image_size),
        backbone=backbone or defaults.backbone,
        epochs=int(epochs or defaults.epochs),
        seed=int(seed),
        device=device,
        max_train=known.get("max_train", defaults.max_train),
        max_test=known.get("max_test", defaults.max_test),
        batch_size=int(known.get("batch_size", defaults.batch_size)),
        synthetic_root=synthetic_root,
        real_root=_real_root(data_root),
        category=category,
        output_root=Path(output_root) if output_root is not None else None,
        extra=dict(overrides),
        backbone_explicit=backbone is not None,
    )


# ------------------------------------------------------------------------------------------- subsets
def spread(n: int, k: int | None) -> list[int]:
    """k indices spread evenly over range(n) (all of them when k is None or k >= n)."""
    if k is None or k >= n:
        return list(range(n))
    if k <= 0:
        return []
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})


def test_indices(labels: Sequence[int], k: int | None) -> list[int]:
    """Up to k test indices, half good and half defective where possible, spread over each group."""
    if k is None or k >= len(labels):
        return list(range(len(labels)))
    good = [i for i, y in enumerate(labels) if y == 0]
    bad = [i for i, y in enumerate(labels) if y != 0]
    n_good = min(len(good), max(k // 2, k - len(bad)))
    n_bad = min(len(bad), k - n_good)
    return sorted([good[i] for i in spread(len(good), n_good)] + [bad[i] for i in spread(len(bad), n_bad)])


def datasets_for(source: DataSource, setting: Setting, image_size: int | None = None):
    """(train, test) datasets of a source at the setting's size, capped by `max_train` / `max_test`."""
    import torch

    from adlib.data import AnomalyDataset

    size = int(image_size or setting.image_size)
    train = AnomalyDataset(source.root, source.category, "train", image_size=size)
    test = AnomalyDataset(source.root, source.category, "test", image_size=size)
    train = torch.utils.data.Subset(train, spread(len(train), setting.max_train))
    test = torch.utils.data.Subset(test, test_indices(test.labels, setting.max_test))
    return train, test


# ------------------------------------------------------------------------------------------- running
METHOD_NAMES = {"varad": "VarAD", "patchcore": "PatchCore"}
QUALITY_METRICS = ("auroc", "f1max", "ap")  # the paper reports these (AU-PRO is left out, Sec. IV.A.3)


@dataclass
class Run:
    """One fitted and evaluated model on one data source."""

    model_name: str
    label: str  # the variant label, used as the table's `setting` ("default", "m=2", "res=512")
    source: DataSource
    image_size: int
    model: Any
    fit: Any  # adlib.engine.FitResult
    evaluation: Any  # adlib.engine.EvalResult
    test: Any  # the (capped) test dataset
    train_images: int

    @property
    def method(self) -> str:
        return METHOD_NAMES.get(self.model_name, self.model_name)

    @property
    def data(self) -> str:
        return (f"{self.source.name} ({self.train_images} train / {len(self.test)} test images, "
                f"{self.image_size}px)")

    def rows(self, backbone: str, metrics: Sequence[str] = QUALITY_METRICS) -> list[dict]:
        base = {"dataset": self.source.name, "method": self.method, "setting": self.label,
                "backbone": backbone, "data": self.data}
        out = []
        for level, values in (("pixel", self.evaluation.pixel), ("image", self.evaluation.image)):
            out += [{**base, "level": level, "metric": m, "value": 100.0 * values[m]} for m in metrics if m in values]
        out += [
            {**base, "level": "model", "metric": "params_m", "value": count_params(self.model) / 1e6},
            {**base, "level": "model", "metric": "train_s", "value": float(self.fit.train_seconds)},
            {**base, "level": "model", "metric": "fps", "value": float(self.evaluation.fps)},
        ]
        return out


def count_params(module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def model_backbone(setting: Setting, model: str, overrides: Mapping[str, Any] | None = None) -> str:
    """The backbone `build` gives `model`: an explicit override, else the setting's (VarAD always; every
    model in the smoke profile or when the notebook set `backbone`), else the model preset's."""
    from adlib.models import model_profile

    overrides = dict(overrides or {})
    if "backbone" in overrides:
        return overrides["backbone"]
    if setting.defaults.shared_backbone or setting.backbone_explicit or model == PRIMARY_MODEL:
        return setting.backbone
    return model_profile(model, setting.profile).model.backbone


def configs(setting: Setting, model: str = "varad", image_size: int | None = None, **overrides: Any):
    """(model config, FitConfig) for the setting: the model's profile preset, then the setting, then
    `overrides`.

    Overrides may name model-config fields (e.g. ``m=2``, ``adapter="resblock"``) or engine fields
    (``epochs``, ``lr``). VarAD uses the setting's backbone; baselines do too in the smoke profile (or when
    the notebook set ``backbone``) and otherwise keep their preset's (the paper's) backbone. The backbone's
    own default taps are used unless it is the preset's backbone or ``layers`` is given.
    """
    from dataclasses import fields as dc_fields

    from adlib.models import model_config, model_profile

    preset = model_profile(model, setting.profile)
    model_fields = {f.name for f in dc_fields(preset.model)}
    fit_fields = {f.name for f in dc_fields(preset.fit)}
    unknown = sorted(set(overrides) - model_fields - fit_fields)
    if unknown:
        raise ValueError(f"{model}: unknown setting(s) {unknown}; expected fields of "
                         f"{type(preset.model).__name__} or {type(preset.fit).__name__}")
    backbone = model_backbone(setting, model, overrides)
    config = {"backbone": backbone, "image_size": int(image_size or setting.image_size)}
    if backbone != preset.model.backbone and "layers" in model_fields:
        config["layers"] = None
    config.update({k: v for k, v in overrides.items() if k in model_fields})
    engine_settings = {"epochs": setting.epochs, "batch_size": setting.batch_size, "seed": setting.seed,
                       "progress": False}
    engine_settings.update({k: v for k, v in overrides.items() if k in fit_fields})
    return model_config(model, preset.model, **config), replace(preset.fit, **engine_settings)


def build(setting: Setting, model: str = "varad", image_size: int | None = None, **overrides: Any):
    """(model, FitConfig) for the setting, see `configs`."""
    from adlib.models import create_model

    config, fit = configs(setting, model, image_size, **overrides)
    return create_model(model, config), fit


def run_one(setting: Setting, source: DataSource, model: str = "varad", label: str = "default",
            **overrides: Any) -> Run:
    """Fit on the source's (capped) normal training images and evaluate on its (capped) test images."""
    from adlib import engine

    size = int(overrides.pop("image_size", None) or setting.image_size)
    train, test = datasets_for(source, setting, size)
    engine.seed_everything(setting.seed)  # the model's initial weights, not only training, follow the seed
    net, fit_config = build(setting, model, image_size=size, **overrides)
    fit_result = engine.fit(net, train, fit_config, device=setting.device)
    evaluation = engine.evaluate(net, test, batch_size=setting.batch_size, device=setting.device, progress=False)
    return Run(model, label, source, size, net, fit_result, evaluation, test, len(train))


def run_grid(setting: Setting, variants: Mapping[str, Mapping[str, Any]] | None = None,
             sources: Sequence[DataSource] | None = None, models: Sequence[str] = ("varad",),
             skip: Mapping[str, str] | None = None, keep: dict | None = None, cache: dict | None = None,
             metrics: Sequence[str] = QUALITY_METRICS, log=print) -> pd.DataFrame:
    """Fit and evaluate every (model, variant, source); return one long-format table (values in percent).

    ``variants`` maps a label (the table's `setting`, e.g. "m=2") to overrides for `build` (model or engine
    fields, or ``image_size``); default ``{"default": {}}``. ``skip`` maps labels to a reason: those
    variants are not run and appear as rows with NaN values and the reason in a `note` column; a variant
    whose model cannot be built for this setting (e.g. m too large for the token grid) is recorded the same
    way. ``keep`` (a dict) receives the `Run` objects keyed by (model, label, source name); ``cache`` (a
    dict) lets repeated (model, variant, source) combinations within a notebook reuse earlier rows.
    """
    variants = dict(variants or {"default": {}})
    sources = list(sources if sources is not None else setting.sources())
    if not sources:
        raise ValueError("run_grid: no data sources; expected the synthetic data or a data_root with datasets")
    skip = dict(skip or {})
    rows: list[dict] = []
    for model in models:
        method = METHOD_NAMES.get(model, model)
        for label, overrides in variants.items():
            for source in sources:
                try:  # the same resolved configuration under another label is fitted once
                    key = (model, source.name, repr(configs(setting, model, **dict(overrides))))
                except ValueError as error:
                    if "unknown setting" in str(error):
                        raise
                    key = (model, source.name, label)
                if cache is not None and key in cache and label not in skip:
                    rows += [{**row, "setting": label} for row in cache[key]]
                    log(f"{method:9s} {label:18s} {source.name}: same configuration as an earlier run, reused")
                    continue
                backbone = model_backbone(setting, model, overrides)
                reason = skip.get(label)
                run = None
                if reason is None:
                    start = time.perf_counter()
                    try:
                        run = run_one(setting, source, model, label, **dict(overrides))
                    except (ValueError, _weights_error()) as error:
                        if "unknown setting" in str(error):
                            raise
                        reason = f"cannot be run in this setting: {error}"
                if run is None:
                    short = reason if len(reason) <= 160 else reason[:157] + "..."
                    log(f"{method:9s} {label:18s} {source.name}: not run ({short})")
                    new = [{"dataset": source.name, "method": method, "setting": label, "level": "pixel",
                            "metric": m, "value": float("nan"), "backbone": backbone, "data": source.name,
                            "note": reason} for m in metrics]
                else:
                    new = run.rows(backbone, metrics)
                    pixel = run.evaluation.pixel
                    log(f"{method:9s} {label:18s} {source.name}: pixel AUROC {100 * pixel['auroc']:.1f} "
                        f"max-F1 {100 * pixel['f1max']:.1f} AP {100 * pixel['ap']:.1f} | image AUROC "
                        f"{100 * run.evaluation.image['auroc']:.1f} ({time.perf_counter() - start:.0f}s)")
                    if keep is not None:
                        keep[(model, label, source.name)] = run
                if cache is not None and run is not None:
                    cache[key] = new
                rows += new
    table = pd.DataFrame(rows)
    if "note" not in table.columns:
        table["note"] = ""
    table["note"] = table["note"].fillna("")
    return table


def _weights_error() -> type:
    from adlib.backbones import WeightsUnavailableError

    return WeightsUnavailableError


def pivot(df: pd.DataFrame, level: str = "pixel", columns: str = "metric", index=("dataset", "method", "setting"),
          metrics: Sequence[str] = QUALITY_METRICS) -> pd.DataFrame:
    """A readable wide view of a long table: one row per (dataset, method, setting), one column per metric."""
    part = df[(df["level"] == level) & (df["metric"].isin(metrics))]
    wide = part.pivot_table(index=list(index), columns=columns, values="value", aggfunc="first", sort=False)
    return wide[[m for m in metrics if m in wide.columns]].round(1)


# ------------------------------------------------------------------------------------------- figures
def dataset_labels(dataset) -> list[int]:
    """Labels of an `AnomalyDataset` or of a `Subset` of one (without loading images)."""
    if hasattr(dataset, "indices"):
        inner = dataset_labels(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    return list(dataset.labels)


def pick_examples(test, k: int = 3, anomalous: bool = True) -> list[int]:
    """k indices of the test set, spread over its anomalous (or good) images."""
    pool = [i for i, y in enumerate(dataset_labels(test)) if (y != 0) == anomalous]
    return [pool[i] for i in spread(len(pool), k)]


def example_maps(runs: Mapping[str, Run], k: int = 3, indices: Sequence[int] | None = None):
    """(images, masks, {name: maps}) for the same k test images under each run (Fig. 3 and 6).

    The images and masks come from the first run; runs at other resolutions are matched by image path and
    their maps are shown at their own resolution.
    """
    import torch

    runs = dict(runs)
    if not runs:
        raise ValueError("example_maps: no runs given")
    first = next(iter(runs.values()))
    indices = list(indices) if indices is not None else pick_examples(first.test, k)
    items = [first.test[i] for i in indices]
    images = [item["image"] for item in items]
    masks = [item["mask"][0] for item in items]
    maps = {}
    for name, run in runs.items():
        by_path = {str(run.test[i]["path"]): i for i in range(len(run.test))} if run.test is not first.test else None
        own = [run.test[by_path[str(item["path"])]]["image"] if by_path else item["image"] for item in items]
        with torch.no_grad():
            pred = run.model.predict(torch.stack(own).to(next(run.model.parameters()).device))
        maps[name] = [m.cpu() for m in pred.maps]
    return images, masks, maps


# ------------------------------------------------------------------------------------------- complexity
def flops_g(model, image_size: int, device: str = "cpu") -> float:
    """GFLOPs of one `predict` on one image, counted by `torch.utils.flop_counter.FlopCounterMode`.

    It counts matrix multiplications and convolutions; element-wise work (the selective scan's recurrence,
    normalisations) is not counted, so this is a lower bound for scan-based models.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    image = torch.rand(1, 3, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.predict(image)
    return counter.get_total_flops() / 1e9


def backbone_params_m(name: str) -> float:
    """Parameters (millions) of a backbone as `adlib.backbones.create` builds it (random weights: no download)."""
    from adlib import backbones

    return count_params(backbones.create(name, pretrained=False)) / 1e6


# ------------------------------------------------------------------------------------------- documentation
def open_choices(model: str = "varad", setting: Setting | None = None, keyword: str = "paper") -> pd.DataFrame:
    """The model config's fields whose comments mention `keyword`: the choices the paper leaves open or
    fixes, read from the config class's source comments, with the value adlib uses (the config's default,
    or, given a `setting`, the value this setting's runs use)."""
    import inspect
    from dataclasses import fields as dc_fields

    from adlib.models import model_config

    config = model_config(model) if setting is None else configs(setting, model)[0]
    lines = inspect.getsource(type(config)).splitlines()
    names = {f.name for f in dc_fields(config)}
    rows, pending = [], []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# ").strip())
            continue
        head = stripped.split(":", 1)[0].strip()
        if head in names:
            note = " ".join(pending)
            if "#" in stripped:
                note = (note + " " + stripped.split("#", 1)[1].strip()).strip()
            if keyword.lower() in note.lower():
                rows.append({"field": head, "adlib": repr(getattr(config, head)), "note": note})
        pending = []
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------- explorer
def partial_map(model, explanation: Mapping[str, Any], index: int, directions: Sequence[str] | None = None,
                hierarchies: Sequence[int] | None = None):
    """VarAD's anomaly map for image `index` of an `explain()` output, using only some directions and
    hierarchies of a model trained with all of them (a quick, training-free ablation; (H, W) tensor)."""
    hierarchies = list(range(len(explanation["targets"]))) if hierarchies is None else list(hierarchies)
    if not hierarchies:
        raise ValueError("partial_map: choose at least one hierarchy")
    errors = []
    for h in hierarchies:
        per_direction = explanation["predictions"][h]
        chosen = [d for d in (directions or per_direction) if d in per_direction]
        if not chosen:
            raise ValueError(f"partial_map: none of {list(directions)} in the model's directions {list(per_direction)}")
        mean = sum(per_direction[d][index] for d in chosen) / len(chosen)
        errors.append((mean - explanation["targets"][h][index]).pow(2).sum(dim=0)[None])
    _, total = model.anomaly_map(errors)
    return total[0]


def examples_by_source(runs: Mapping[tuple, Run], k: int = 2):
    """Fig. 3: for each data source, k anomalous test images with every method's map on them.

    ``runs`` is the ``keep`` dict of `run_grid` (keys (model, label, source name)). Returns images, masks,
    {method: maps} and row labels, concatenated over sources.
    """
    images, masks, labels, maps = [], [], [], {}
    by_source: dict[str, dict[str, Run]] = {}
    for run in runs.values():
        by_source.setdefault(run.source.name, {})[run.method] = run
    for name, group in by_source.items():
        imgs, msks, mps = example_maps(group, k)
        images += imgs
        masks += msks
        labels += [name] * len(imgs)
        for method, stack in mps.items():
            maps.setdefault(method, []).extend(stack)
    return images, masks, maps, labels


# ------------------------------------------------------------------------------------------- tables
def dataset_table(setting: Setting, synthetic: Sequence[str] = ("synthetic_ad", "synthetic_hr")) -> pd.DataFrame:
    """Table I in long format: categories and image counts per dataset folder that this setting can read.

    A real dataset keeps the paper's display name only when all of the paper's categories are present;
    otherwise it is named by the categories found ("MVTec AD/bottle").
    """
    from adlib.data import stats_frame

    paper_counts = {}
    try:
        from adlib import results

        paper = results.paper_table(PAPER, "table1")
        paper_counts = paper[paper["metric"] == "n_categories"].set_index("dataset")["value"].to_dict()
    except FileNotFoundError:
        pass
    frames = []
    if setting.synthetic_root is not None:
        for name in synthetic:
            if (Path(setting.synthetic_root) / name).is_dir():
                frame = stats_frame(Path(setting.synthetic_root) / name)
                frame["dataset"] = name
                frames.append(frame)
    if setting.real_root is not None:
        for folder in PAPER_DATASETS:
            if (Path(setting.real_root) / folder).is_dir():
                frame = stats_frame(Path(setting.real_root) / folder)
                display = DISPLAY_NAMES[folder]
                complete = len(frame) == paper_counts.get(display, -1)
                frame["dataset"] = display if complete else f"{display}/{'+'.join(frame['category'])}"
                frames.append(frame)
    if not frames:
        raise ValueError("dataset_table: no dataset folders found")
    stats = pd.concat(frames)
    rows = []
    for dataset, part in stats.groupby("dataset", sort=False):
        counts = {"n_categories": len(part), **{k: int(part[k].sum()) for k in
                                                ("train_normal", "test_normal", "test_abnormal")}}
        rows += [{"dataset": dataset, "method": "", "setting": "default", "level": "data", "metric": k,
                  "value": float(v), "data": dataset} for k, v in counts.items()]
    return pd.DataFrame(rows)


def dataset_means(df: pd.DataFrame) -> pd.DataFrame:
    """Add per-dataset mean rows (dataset = the part before "/") when every paper category was run.

    The paper reports per-dataset means; a partial run (e.g. bottle only) gets no mean row, so it is never
    mistaken for the dataset's number.
    """
    from adlib import results

    paper = results.paper_table(PAPER, "table1")
    expected = paper[paper["metric"] == "n_categories"].set_index("dataset")["value"].to_dict()
    parts = df.assign(parent=df["dataset"].str.split("/").str[0])
    means = []
    for parent, part in parts.groupby("parent", sort=False):
        if parent in expected and part["dataset"].nunique() == int(expected[parent]):
            keys = ["method", "setting", "level", "metric", "backbone"]
            mean = part.groupby(keys, sort=False, dropna=False)["value"].mean().reset_index()
            mean["dataset"] = parent
            mean["data"] = f"{parent} (mean of {part['dataset'].nunique()} categories)"
            means.append(mean)
    return pd.concat([df, *means], ignore_index=True) if means else df


def trend(df: pd.DataFrame, method: str = "VarAD", metric: str = "f1max", level: str = "pixel") -> pd.DataFrame:
    """The metric per resolution and data source for one method, with whether it rises with resolution.

    Columns: dataset, one per resolution, `rises` (every step up is an increase), `change` (last − first).
    """
    from adlib.plots import setting_value

    part = df[(df["method"] == method) & (df["metric"] == metric) & (df["level"] == level)].copy()
    part["resolution"] = part["setting"].map(setting_value)
    wide = part.pivot_table(index="dataset", columns="resolution", values="value", aggfunc="first")
    wide = wide[sorted(wide.columns)]
    steps = wide.diff(axis=1).iloc[:, 1:]
    wide["rises"] = (steps > 0).all(axis=1)
    wide["change"] = wide[sorted(c for c in wide.columns if c != "rises")].iloc[:, -1] - \
        wide[sorted(c for c in wide.columns if c != "rises")].iloc[:, 0]
    return wide


def hierarchy_variants(backbone: str) -> dict[str, dict]:
    """Token-hierarchy ablation: every non-empty subset of the backbone's default taps, plus (for CNNs)
    the default taps with the next deeper stage added. Labels like "layers=4+8"."""
    from itertools import combinations

    from adlib.backbones import SPECS

    taps = tuple(SPECS[backbone].layers)
    subsets = [c for r in range(1, len(taps) + 1) for c in combinations(taps, r)]
    if SPECS[backbone].kind == "cnn":
        subsets.append(taps + (taps[-1] + 1,))
    return {"layers=" + "+".join(map(str, s)): ({} if tuple(s) == taps else {"layers": tuple(s)}) for s in subsets}


def best(df: pd.DataFrame, metric: str = "f1max", level: str = "pixel") -> pd.DataFrame:
    """Per data source and method: the setting with the highest `metric`, its value and the runner-up's."""
    part = df[(df["metric"] == metric) & (df["level"] == level)].dropna(subset=["value"])
    rows = []
    for (dataset, method), group in part.groupby(["dataset", "method"], sort=False):
        ranked = group.sort_values("value", ascending=False)
        rows.append({"dataset": dataset, "method": method, "best setting": ranked["setting"].iloc[0],
                     metric: ranked["value"].iloc[0],
                     "runner-up": ranked["setting"].iloc[1] if len(ranked) > 1 else None,
                     f"runner-up {metric}": ranked["value"].iloc[1] if len(ranked) > 1 else float("nan")})
    return pd.DataFrame(rows)


def speed(setting: Setting, model: str = "varad", images: int = 2, image_size: int | None = None,
          **overrides: Any) -> dict[str, float]:
    """Parameters (M), FLOPs (G, see `flops_g`) and FPS of a model built with random weights.

    Speed does not depend on the weight values, so backbones whose weights cannot be had still get
    their cost measured; no quality metric comes from this.
    """
    import torch

    size = int(image_size or setting.image_size)
    net, _ = build(setting, model, image_size=size, pretrained=False, **overrides)
    net.to(setting.device).eval()
    if not getattr(net, "trainable", True) and hasattr(net, "memory_bank"):
        raise ValueError(f"speed: {model} needs a fitted memory bank; measure it after fitting")
    batch = torch.rand(1, 3, size, size, device=setting.device)
    with torch.no_grad():
        net.predict(batch)  # warm-up
        start = time.perf_counter()
        for _ in range(images):
            net.predict(batch)
        seconds = time.perf_counter() - start
    return {"params_m": count_params(net) / 1e6, "flops_g": flops_g(net, size, setting.device),
            "fps": images / seconds}


class Explorer:
    """Interactive VarAD explorer: pick a test image, m, directions and hierarchies and see the map.

    Directions and hierarchies are dropped at test time from a model trained with all of them
    (`partial_map`, no retraining); each new m trains its own model once (cached).
    """

    def __init__(self, setting: Setting, source: DataSource, examples: int = 4, m_values: Sequence[int] = (4,)):
        self.setting, self.source = setting, source
        self.m_values = list(m_values)
        self.runs: dict[int, Run] = {}
        self.explanations: dict[int, dict] = {}
        self.examples = examples

    def run_for(self, m: int) -> Run:
        if m not in self.runs:
            self.runs[m] = run_one(self.setting, self.source, "varad", f"m={m}", m=m)
        return self.runs[m]

    @property
    def indices(self) -> list[int]:
        test = self.run_for(self.m_values[0]).test
        return pick_examples(test, self.examples) + pick_examples(test, 1, anomalous=False)

    def explanation(self, m: int) -> dict:
        import torch

        if m not in self.explanations:
            run = self.run_for(m)
            images = torch.stack([run.test[i]["image"] for i in self.indices]).to(self.setting.device)
            self.explanations[m] = run.model.explain(images)
        return self.explanations[m]

    def image_options(self) -> list[tuple[str, int]]:
        test = self.run_for(self.m_values[0]).test
        return [(f"{j}: {Path(test[i]['path']).parent.name}/{Path(test[i]['path']).name}", j)
                for j, i in enumerate(self.indices)]

    def figure(self, image: int = 0, m: int | None = None, directions: Sequence[str] | None = None,
               hierarchies: Sequence[int] | None = None):
        from adlib import plots

        m = self.m_values[0] if m is None else m
        run, out = self.run_for(m), self.explanation(m)
        item = run.test[self.indices[image]]
        partial = partial_map(run.model, out, image, directions, hierarchies)
        dirs = "all" if directions is None else "+".join(directions)
        levels = "all" if hierarchies is None else "+".join(str(h + 1) for h in hierarchies)
        return plots.image_row({
            "image": item["image"], "ground truth": item["mask"][0],
            f"m={m}, directions {dirs}, hierarchies {levels}": partial,
            f"m={m}, all directions and hierarchies": out["map"][image],
        }, title=f"{self.source.name} · {Path(item['path']).name}")

    def widget(self):
        """ipywidgets controls and an output area that redraws the figure on every change."""
        import ipywidgets as widgets
        import matplotlib.pyplot as plt
        from IPython.display import display

        model = self.run_for(self.m_values[0]).model
        names = list(model.directions[0])
        image = widgets.Dropdown(options=self.image_options(), description="image")
        m = widgets.Dropdown(options=self.m_values, value=self.m_values[0], description="m")
        directions = widgets.SelectMultiple(options=names, value=tuple(names), description="directions")
        hierarchies = widgets.SelectMultiple(options=[(f"{h + 1}: {gh}x{gw}", h) for h, (gh, gw) in enumerate(model.grids)],
                                             value=tuple(range(len(model.grids))), description="hierarchies")

        out = widgets.Output()

        def redraw(_change=None) -> None:
            out.clear_output(wait=True)
            with out:
                if not directions.value or not hierarchies.value:
                    print("choose at least one direction and one hierarchy")
                    return
                fig = self.figure(image.value, m.value, list(directions.value), list(hierarchies.value))
                display(fig)
                plt.close(fig)

        # Drawn on the first change only: the default state is the static figure shown above, and a headless
        # run (papermill) never sends a change, so it never draws into the output widget.
        for control in (image, m, directions, hierarchies):
            control.observe(redraw, names="value")
        return widgets.VBox([widgets.HBox([image, m]), widgets.HBox([directions, hierarchies]), out])


def cost_rows(run: Run, device: str = "cpu") -> pd.DataFrame:
    """FLOPs (see `flops_g`) and epochs of a fitted run as long-format model rows (Fig. 7)."""
    base = {"dataset": run.source.name, "method": run.method, "setting": run.label, "level": "model",
            "backbone": getattr(run.model.config, "backbone", ""), "data": run.data}
    return pd.DataFrame([
        {**base, "metric": "flops_g", "value": flops_g(run.model, run.image_size, device),
         "note": "FlopCounterMode: matrix products and convolutions only"},
        {**base, "metric": "epochs", "value": float(run.fit.epochs), "note": ""},
    ])


def value_range(df: pd.DataFrame, metric: str = "f1max", level: str = "pixel") -> float:
    """Largest minus smallest value of a metric over the rows that ran (how far apart the variants are)."""
    values = df[(df["metric"] == metric) & (df["level"] == level)]["value"].dropna()
    return float(values.max() - values.min()) if len(values) else float("nan")
