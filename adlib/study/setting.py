"""A notebook's parameters turned into one concrete ``Setting``: paper, profile, data sources, seeds.

``resolve_setting(paper, profile, ...)`` reads the paper's ``ProfileSpec`` (``adlib.papers``) for every
parameter left at None. Data comes from the embedded synthetic benchmark (generated on first use, always
from data seed 0, so that the seeds of a claim vary training and not the images) and from the real
datasets under ``data_root`` or ``$ADLIB_DATA`` that the profile runs. A dataset the profile names but the data
root lacks is listed by ``Setting.missing_sources()`` with the reason (where it was looked for, the layout
expected, how to get it); ``real_sources`` then returns what there is, with the missing ones in ``.missing``.

A check profile ("paper-check", ``adlib.study.spec.PathCheck``) runs its base profile's code path at a cut
scale: ``Setting.check`` holds the cuts, ``datasets_for`` enforces the image caps whatever a notebook sets,
every missing dataset is stood in for by a tiny synthetic copy in its real layout (``adlib.data.standins``),
pretrained weights that cannot be had are random (``adlib.backbones.allow_random_weights``), and every table,
figure and description says "path check: not results".
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from adlib.study.spec import (CLASS_SETTINGS, PATH_CHECK_CUTS, PROTOCOLS, PaperSpec, PathCheck, ProfileSpec,
                              base_profile, is_check)

DATA_ENV = "ADLIB_DATA"
DATA_SEED = 0  # the embedded synthetic data is the same for every training seed
CHECK_MEMO_MB = 1536  # path checks: frozen backbone outputs kept per process (adlib.backbones.memoize_frozen)
# Dataset folder name -> the name tables use, unless the paper's spec names it otherwise.
DISPLAY_NAMES = {"mvtec_ad": "MVTec AD", "visa": "VisA", "btad": "BTAD", "dtd_synthetic": "DTD-Synthetic",
                 "mvtec_loco": "MVTec LOCO", "realiad": "Real-IAD", "mvtec_3d": "MVTec 3D"}


@dataclass(frozen=True)
class DataSource:
    """One category of one dataset folder."""

    dataset: str  # display name ("MVTec AD", "synthetic_ad")
    root: Path  # the dataset folder (MVTec layout)
    category: str
    synthetic: bool = False
    # masks read as "defect wherever the value is above T" (antialiased or JPEG-saved masks); None: the layout's
    # own encoding, and a non-binary mask is refused (``adlib.data.AnomalyDataset(mask_threshold=)``)
    mask_threshold: float | None = None
    standin: bool = False  # a path check's synthetic stand-in for a missing dataset (adlib.data.standins)

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.category}"


@dataclass(frozen=True)
class MissingData:
    """A dataset a notebook asked for that is not under the data root: its folder, display name and why."""

    folder: str
    dataset: str
    reason: str


class Sources(list):
    """A list of ``DataSource`` that also carries the datasets asked for but missing (``missing``), so that
    ``run_grid`` given none can say why. Adding two keeps both lists."""

    def __init__(self, items: Iterable[DataSource] = (), missing: Iterable[MissingData] = ()):
        super().__init__(items)
        self.missing = list(missing)

    def __add__(self, other):
        return Sources(list(self) + list(other), self.missing + list(getattr(other, "missing", [])))

    def __radd__(self, other):
        return Sources(list(other) + list(self), list(getattr(other, "missing", [])) + self.missing)

    def __getitem__(self, index):
        item = super().__getitem__(index)
        return Sources(item, self.missing) if isinstance(index, slice) else item

    def reasons(self) -> str:
        return "; ".join(m.reason for m in self.missing)


def random_weights(backbone: str) -> bool:
    """True when this process replaced ``backbone``'s pretrained weights by random ones (path checks only)."""
    module = sys.modules.get("adlib.backbones")
    return module is not None and backbone in getattr(module, "RANDOM_WEIGHTS", {})


@dataclass(frozen=True)
class Setting:
    """The concrete settings a notebook runs with (see ``resolve_setting``)."""

    paper: PaperSpec
    profile: str
    image_size: int
    backbone: str
    seed: int
    seeds: tuple[int, ...]
    device: str
    max_train: int | None
    max_test: int | None
    synthetic_root: Path | None
    real_root: Path | None
    category: str | None
    output_root: Path | None
    class_setting: str
    protocol: str
    epochs: int | None = None  # None: each model's recipe
    batch_size: int | None = None  # None: each model's recipe
    backbone_explicit: bool = False  # the notebook set `backbone` (it then applies to every model)
    extra: dict = field(default_factory=dict)
    check: PathCheck | None = None  # a path check's cuts (profile "paper-check"); None: a real run
    standin_root: Path | None = None  # a path check's stand-ins for the datasets the data root lacks

    @property
    def spec(self) -> ProfileSpec:
        return self.paper.profile(self.profile)

    @property
    def base_profile(self) -> str:
        """The profile whose settings run: "paper" for "paper" and for its path check "paper-check". Notebooks
        branch on this (``setting.base_profile == "smoke"``), never on the profile's name."""
        return base_profile(self.profile)

    @property
    def is_check(self) -> bool:
        return self.check is not None

    @property
    def grids(self) -> dict:
        return dict(self.spec.grids)

    # --------------------------------------------------------------------------------------- data
    def synthetic_sources(self, dataset: str | None = None, categories: Sequence[str] | None = None,
                          limit: int | None | str = "profile") -> list[DataSource]:
        """Categories of an embedded synthetic dataset (the profile's first one by default): the setting's
        ``category`` when it is one of them, else ``categories``, else the first ``limit`` (the profile's
        ``synthetic_categories`` unless given; None: all)."""
        if self.synthetic_root is None:
            return []
        from adlib.data import list_categories

        dataset = dataset or self.spec.synthetic[0]
        root = Path(self.synthetic_root) / dataset
        found = list_categories(root)
        if categories is None and self.category and self.category in found:
            categories = [self.category]
        if categories is None:
            limit = self.spec.synthetic_categories if limit == "profile" else limit
            if self.check is not None:
                limit = min(limit or self.check.categories, self.check.categories)
            categories = found[:limit] if limit else found
        missing = [c for c in categories if c not in found]
        if missing:
            raise ValueError(f"categories {missing} not in {root}; expected some of {found}")
        return Sources(DataSource(dataset, root, c, synthetic=True) for c in categories)

    def dataset_root(self, folder: str) -> tuple[Path | None, bool]:
        """(folder of dataset ``folder``, whether it is a path check's stand-in): the data root's when it has
        it, else a path check's stand-in, else (None, False)."""
        if self.real_root is not None and (Path(self.real_root) / folder).is_dir():
            return Path(self.real_root) / folder, False
        if self.standin_root is not None and (Path(self.standin_root) / folder).is_dir():
            return Path(self.standin_root) / folder, True
        return None, False

    def real_sources(self, datasets: Sequence[str] | None = None) -> Sources:
        """Categories of the real datasets the profile runs (or ``datasets``) found under the data root (in a
        path check, a missing dataset's stand-in). What is missing is in the result's ``missing``."""
        from adlib.data import DatasetError, list_categories

        out = Sources()
        for folder in datasets or self.spec.real_datasets:
            root, standin = self.dataset_root(folder)
            if root is None:
                out.missing.append(self._missing(folder))
                continue
            try:
                found = list_categories(root)
            except DatasetError as error:
                out.missing.append(MissingData(folder, self.dataset_name(folder), f"{self.dataset_name(folder)}: {error}"))
                continue
            wanted = [self.category] if self.category else (self.spec.real_categories or found)
            present = [c for c in wanted if c in found]
            if not present:
                out.missing.append(MissingData(folder, self.dataset_name(folder), (
                    f"{self.dataset_name(folder)}: none of the categories {list(wanted)} under {root} (it holds "
                    f"{', '.join(found)})")))
            out += [DataSource(self.dataset_name(folder), root, c, standin=standin) for c in present]
        return out

    def _missing(self, folder: str) -> MissingData:
        from adlib.data.standins import missing_reason

        return MissingData(folder, self.dataset_name(folder), missing_reason(folder, self.real_root))

    def missing_sources(self, datasets: Sequence[str] | None = None) -> list[MissingData]:
        """The datasets the profile reads (or ``datasets``) that are not here, each with the reason: where it
        was looked for, the layout expected and how to get it. A path check's stand-ins count as present."""
        return self.real_sources(datasets).missing

    def sources(self, synthetic: bool = True, real: bool = True) -> list[DataSource]:
        """The profile's sources: the first synthetic set's categories, then the real ones present. With a
        ``category`` that only a real dataset has, the synthetic part is left out."""
        out = []
        if synthetic:
            try:
                out += self.synthetic_sources()
            except ValueError:
                pass
            if self.category and not any(s.category == self.category for s in out):
                out = []
        return out + (self.real_sources() if real else [])

    def dataset_name(self, folder: str) -> str:
        return self.paper.datasets.get(folder) or DISPLAY_NAMES.get(folder, folder)

    # --------------------------------------------------------------------------------------- output
    @property
    def caps(self) -> str:
        parts = [self.check.label] if self.check is not None else []
        if self.max_train is not None:
            parts.append(f"≤{self.max_train} train")
        if self.max_test is not None:
            parts.append(f"≤{self.max_test} test")
        return ", ".join(parts) if parts else "all images"

    def data_label(self, sources: Iterable[DataSource], image_size: int | None = None) -> str:
        sources = list(sources)
        names = ", ".join(s.name + (" [stand-in]" if s.standin else "") for s in sources) or "no data"
        return f"{names} ({self.caps}, {image_size or self.image_size}px)"

    @property
    def substitution(self) -> str:
        """The backbone substitution in words, or "" when the paper's own backbone runs."""
        if self.backbone == self.spec.paper_backbone:
            return ""
        return f"{self.backbone} stands in for the paper's {self.spec.paper_backbone}"

    def backbone_label(self, backbone: str | None = None) -> str:
        """A backbone name with the substitution named when it is not the paper's (for table and figure
        provenance): "efficientnet_lite0 (for the paper's dinov2_vits14)"."""
        backbone = backbone or self.backbone
        if random_weights(backbone):
            from adlib.backbones import random_weights_label

            return random_weights_label(backbone)
        if backbone == self.spec.paper_backbone or not self.substitution:
            return backbone
        return f"{backbone} (for the paper's {self.spec.paper_backbone})"

    def params(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "paper"}
        out["paper"] = self.paper.name
        if self.check is not None:
            out["path_check"] = self.check.label
            module = sys.modules.get("adlib.backbones")
            out["random_weights"] = dict(getattr(module, "RANDOM_WEIGHTS", {})) if module is not None else {}
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}

    def write_table(self, df, name: str, data: str | None = None, backbone: str | None = None) -> Path:
        """``adlib.results.write_table`` under this setting's paper, profile and output root. A path check's
        tables carry a ``path_check`` column saying "path check: not results" on every row."""
        from adlib import results

        data = data or (", ".join(dict.fromkeys(df["data"].astype(str))) if "data" in df.columns else "")
        if backbone is None:
            backbone = ", ".join(dict.fromkeys(df["backbone"].astype(str))) if "backbone" in df.columns \
                else self.backbone_label()
        if self.check is not None:
            df = df.assign(path_check=self.check.label)
            data = f"{self.check.label.upper()}: {data}"
        return results.write_table(df, self.paper.name, name, profile=self.profile, backbone=backbone, data=data,
                                   params=self.params(), root=self.output_root)

    def save_figure(self, fig, name: str, data: str, backbone: str | None = None) -> Path:
        """``adlib.results.save_figure`` under this setting's paper, profile and output root. A path check's
        figures get a red banner and a watermark saying "path check: not results"."""
        from adlib import results

        if self.check is not None:
            from adlib import plots

            plots.stamp_path_check(fig, self.check.label)
            data = f"{self.check.label.upper()}: {data}"
        return results.save_figure(fig, self.paper.name, name, profile=self.profile,
                                   backbone=backbone or self.backbone_label(), data=data, params=self.params(),
                                   root=self.output_root)

    def describe(self) -> str:
        lines = [self.check.describe()] if self.check is not None else []
        missing = self.missing_sources()
        lines += [f"{self.paper.title} · profile {self.profile}: {self.image_size}px, backbone {self.backbone_label()}, "
                 f"{self.class_setting}, protocol {self.protocol}, seeds {list(self.seeds)}, device {self.device}, "
                 f"{self.caps} per category",
                 f"synthetic data: {self.synthetic_root}", f"real data: {self.real_root or 'none found'}"]
        if self.standin_root is not None:
            lines.append(f"stand-ins for missing datasets (synthetic, path check only): {self.standin_root}")
        lines += [f"not here (rows that need it are marked not run): {m.reason}" for m in missing]
        lines.append(f"outputs under: {self.output_root or 'the repository root'}")
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return "\n".join(f"- {line}" for line in self.describe().splitlines())


def _real_root(data_root: str | os.PathLike | None) -> Path | None:
    """``data_root`` when given, else ``$ADLIB_DATA`` when set and it exists."""
    if data_root is not None:
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"data_root={str(data_root)!r} is not a folder; expected a folder holding "
                                    "dataset folders such as mvtec_ad/")
        return root
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env and Path(env).expanduser().is_dir() else None


def _known_categories(synthetic_root: Path | None, real_root: Path | None, spec: ProfileSpec,
                      standin_root: Path | None = None) -> list[str]:
    from adlib.data import list_categories

    known: list[str] = []
    roots = [Path(synthetic_root) / d for d in spec.synthetic] if synthetic_root is not None else []
    roots += [Path(real_root) / d for d in spec.real_datasets] if real_root is not None else []
    roots += [Path(standin_root) / d for d in spec.real_datasets] if standin_root is not None else []
    for root in roots:
        if root.is_dir():
            known += list_categories(root)
    return sorted(set(known))


def _positive_int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer or None")
    return value


def resolve_setting(paper: PaperSpec, profile: str = "smoke", data_root: str | os.PathLike | None = None,
                    category: str | None = None, image_size: int | None = None, backbone: str | None = None,
                    epochs: int | None = None, seed: int = 0, device: str = "cpu",
                    output_root: str | os.PathLike | None = None, synthetic: bool = True,
                    seeds: Sequence[int] | None = None, class_setting: str | None = None,
                    protocol: str | None = None, max_train: int | None | str = "profile",
                    max_test: int | None | str = "profile", batch_size: int | None = None,
                    **extra: Any) -> Setting:
    """Turn notebook parameters into a ``Setting``; None means the paper's profile default.

    ``seed`` is the seed of single runs; ``seeds`` (default: the profile's) are the seeds claims are decided
    over. A ``category`` must exist in the profile's data, else ValueError names what exists.

    A check profile ("paper-check") keeps the base profile's settings and cuts the scale (``PathCheck``):
    caps on images whatever is passed, the first seed only, stand-ins for the datasets the data root lacks,
    random weights where pretrained ones cannot be had (this process only), frozen outputs kept per input.
    """
    if not isinstance(paper, PaperSpec):
        raise TypeError(f"resolve_setting: paper must be a PaperSpec (e.g. adlib.papers.get('...')), got {paper!r}")
    spec = paper.profile(profile)
    if class_setting is not None and class_setting not in CLASS_SETTINGS:
        raise ValueError(f"class_setting={class_setting!r}: expected one of {CLASS_SETTINGS}")
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: expected one of {PROTOCOLS}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed={seed!r}: expected an integer")
    synthetic_root = None
    if synthetic:
        from adlib.data import synthetic_root as make_synthetic

        synthetic_root = Path(make_synthetic(seed=DATA_SEED, hr_size=spec.hr_size))
    real_root = _real_root(data_root)
    check = PATH_CHECK_CUTS if is_check(profile) else None
    standin_root = None
    if check is not None:
        from adlib import backbones
        from adlib.data.standins import standin_root as make_standins

        backbones.allow_random_weights(check.label)
        backbones.memoize_frozen(CHECK_MEMO_MB)
        missing = [f for f in spec.real_datasets if real_root is None or not (real_root / f).is_dir()]
        standin_root = make_standins(missing, seed=DATA_SEED, categories=check.categories, data_root=real_root)
        seeds = tuple(seeds)[:1] if seeds else check.seeds
        max_train = _check_cap("max_train", spec.max_train if max_train == "profile" else max_train, check.max_train)
        max_test = _check_cap("max_test", spec.max_test if max_test == "profile" else max_test, check.max_test)
    if category is not None:
        known = _known_categories(synthetic_root, real_root, spec, standin_root)
        if category not in known:
            raise ValueError(f"category={category!r} is not in this profile's data; known categories: "
                             f"{', '.join(known) or '(none: no data found)'}")
    return Setting(
        paper=paper,
        profile=profile,
        image_size=_positive_int("image_size", image_size) or spec.image_size,
        backbone=backbone or spec.backbone,
        seed=int(seed),
        seeds=tuple(int(s) for s in (seeds if seeds is not None else spec.seeds)),
        device=device,
        max_train=spec.max_train if max_train == "profile" else _positive_int("max_train", max_train),
        max_test=spec.max_test if max_test == "profile" else _positive_int("max_test", max_test),
        synthetic_root=synthetic_root,
        real_root=real_root,
        category=category,
        output_root=Path(output_root) if output_root is not None else None,
        class_setting=class_setting or spec.class_setting,
        protocol=protocol or spec.protocol,
        epochs=_positive_int("epochs", epochs),
        batch_size=_positive_int("batch_size", batch_size),
        backbone_explicit=backbone is not None,
        extra=dict(extra),
        check=check,
        standin_root=standin_root,
    )


def _check_cap(name: str, value: int | None, cap: int) -> int:
    value = _positive_int(name, value)
    return cap if value is None else min(value, cap)


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
    """(train, test) datasets of a source at the setting's size, capped by ``max_train`` / ``max_test``."""
    import torch

    from adlib.data import AnomalyDataset

    size = int(image_size or setting.image_size)
    train = AnomalyDataset(source.root, source.category, "train", image_size=size, mask_threshold=source.mask_threshold)
    test = AnomalyDataset(source.root, source.category, "test", image_size=size, mask_threshold=source.mask_threshold)
    max_train, max_test = setting.max_train, setting.max_test
    if setting.check is not None:  # a path check's caps hold whatever a notebook's grid set
        max_train = _check_cap("max_train", max_train, setting.check.max_train)
        max_test = _check_cap("max_test", max_test, setting.check.max_test)
    train = torch.utils.data.Subset(train, spread(len(train), max_train))
    test = torch.utils.data.Subset(test, test_indices(test.labels, max_test))
    return train, test


def dataset_labels(dataset) -> list[int]:
    """Labels of an ``AnomalyDataset`` or of a ``Subset`` of one (without loading images)."""
    if hasattr(dataset, "indices"):
        inner = dataset_labels(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    if hasattr(dataset, "datasets"):  # ConcatDataset
        return [y for part in dataset.datasets for y in dataset_labels(part)]
    return list(dataset.labels)
