"""What a paper's spec declares, as plain dataclasses (the study layer reads them; it knows no paper).

A paper file (``adlib/papers/<paper>.py``) builds one ``PaperSpec``:

- ``profiles``: per profile (``smoke``, ``paper``) a ``ProfileSpec``: data, image size, caps, seeds, the
  default class setting and protocol, and the paper's own ablation grids in ``grids``;
- ``recipes``: per (model, profile) a ``Recipe``: config overrides and the engine's ``FitConfig``;
- ``claims``: each claim a notebook checks, with its text, its place in the paper, the two sides compared,
  the metric and when the favoured side counts as working (``Claim``, ``Floor``); ``adlib.study.claims``
  decides them over seeds and test-image resamples;
- ``tables``: per printed table a ``TableSpec``: what the paper measured it on (resolution, backbone per
  method, protocol, class setting), so the report can tell comparable rows from incomparable ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

CLASS_SETTINGS = ("one-class", "multi-class")
PROTOCOLS = ("exact", "ader")
# A profile name ending in CHECK_SUFFIX ("paper-check") is the path check of the profile before it: the same code
# path (architectures, resolutions, recipes, grids, settings, protocols) with only the scale cut (``PathCheck``).
CHECK_SUFFIX = "-check"
PATH_CHECK = "path check: not results"


def base_profile(name: str) -> str:
    """The profile a profile name runs the settings of: "paper" for "paper-check", else the name itself."""
    return name[: -len(CHECK_SUFFIX)] if name.endswith(CHECK_SUFFIX) else name


def is_check(name: str) -> bool:
    return name.endswith(CHECK_SUFFIX) and len(name) > len(CHECK_SUFFIX)


@dataclass(frozen=True)
class PathCheck:
    """The scale cuts of a path check (``adlib reproduce --profile paper --check``): everything else is the
    profile's own. Numbers it writes are not results and say so (``label``) in every table, figure and record."""

    max_train: int = 2  # training images per data source
    # test images per data source: 1 good and 2 defective (spread over the defect kinds: MVTec LOCO's logical and
    # structural both come in); 3 instead of the allowed 4 saves a quarter of the evaluation at 1024 px
    max_test: int = 3
    max_steps: int = 1  # optimiser steps per training stage (``FitConfig.max_steps``)
    seeds: tuple[int, ...] = (0,)
    categories: int = 2  # categories per synthetic set and per stand-in dataset (2: multi-class needs two)
    label: str = PATH_CHECK

    def describe(self) -> str:
        return (f"{self.label.upper()}: the paper profile's code path at a cut scale: at most {self.max_train} "
                f"training and {self.max_test} test images per data source, {self.max_steps} optimiser step(s) per "
                f"training stage, seed(s) {list(self.seeds)}, at most {self.categories} categories per synthetic or "
                "stand-in dataset; weights that cannot be had are random, datasets that are missing are synthetic "
                "stand-ins in their real layout")


PATH_CHECK_CUTS = PathCheck()


@dataclass(frozen=True)
class Recipe:
    """How one model is trained in one profile: config overrides (``model``) and engine settings (``fit``,
    an ``adlib.engine.FitConfig``). ``notes`` says, per field, why a value differs from the paper's."""

    model: Mapping[str, Any] = field(default_factory=dict)
    fit: Any = None  # adlib.engine.FitConfig; None: the engine's defaults
    notes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProfileSpec:
    """What a profile means for one paper's notebooks."""

    description: str
    image_size: int
    backbone: str  # the backbone the paper's method uses in this profile
    paper_backbone: str  # the backbone the paper itself used (a difference is a substitution, named in outputs)
    max_train: int | None = None  # cap on training images per category (None: all)
    max_test: int | None = None  # cap on test images per category, half good and half defective where possible
    seeds: tuple[int, ...] = (0,)  # the seeds every claim is decided over
    synthetic: tuple[str, ...] = ("synthetic_ad",)  # embedded synthetic sets the notebooks run
    synthetic_categories: int | None = 1  # how many categories of each synthetic set (None: all)
    real_datasets: tuple[str, ...] = ()  # dataset folders under the data root that the profile runs
    real_categories: tuple[str, ...] | None = None  # None: every category found
    class_setting: str = "one-class"  # the paper's setting: "one-class" or "multi-class"
    protocol: str = "exact"  # the metric protocol the paper's numbers come from: "exact" or "ader"
    # True: every model uses `backbone` (smoke: the one backbone with offline weights); False: each peer keeps
    # the backbone of its own recipe (its paper's) unless a notebook sets one.
    shared_backbone: bool = True
    hr_size: int | None = None  # native size of the synthetic high-resolution set (None: the generator's)
    grids: Mapping[str, Any] = field(default_factory=dict)  # the paper's own ablation values for this profile

    def __post_init__(self) -> None:
        if self.class_setting not in CLASS_SETTINGS:
            raise ValueError(f"class_setting={self.class_setting!r}: expected one of {CLASS_SETTINGS}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol={self.protocol!r}: expected one of {PROTOCOLS}")
        if not self.seeds:
            raise ValueError("seeds: need at least one seed")


@dataclass(frozen=True)
class Side:
    """One side of a claim: the rows of a long table that match every ``column: value`` in ``where``."""

    label: str
    where: Mapping[str, Any]


@dataclass(frozen=True)
class Floor:
    """When the favoured side of a claim counts as a method that works, so that a comparison with it can
    confirm or refute the claim (``adlib.study.claims``); below the floor the verdict is "not testable here".

    ``above_chance``: its value must lie above the chance level of its metric on its own test images (what a
    detector that sees nothing scores: AUROC 50, AP the positive rate, max-F1 2p / (1 + p) for the positive
    rate p, AU-PRO 15, mAD the mean of its seven), beyond both sources of noise (its seed mean minus two
    standard errors, and the low end of its test-image interval). ``of_best_peer``: its mean must also reach
    this fraction of the best other method's mean on the same images (any setting of it, in the claim's table
    or in the ``peers`` table a notebook gives ``check``); with no other method there, this part is not
    checked and the verdict's note says so. ``why`` says, in the paper file, why this floor fits the claim.
    """

    above_chance: bool = True
    of_best_peer: float | None = None
    why: str = ""

    def __post_init__(self) -> None:
        if self.of_best_peer is not None and not 0 < self.of_best_peer <= 1:
            raise ValueError(f"of_best_peer={self.of_best_peer!r}: expected a fraction in (0, 1]")


@dataclass(frozen=True)
class Claim:
    """A claim of the paper that a notebook checks.

    ``favoured`` is the side the paper says is better; it is compared with each side in ``against`` on
    ``metric`` at ``level`` over the seeds of the ``table`` that holds the evidence. ``higher_is_better``
    is False for costs (parameters, seconds). ``where`` points into the paper ("Sec. IV.C.1, Fig. 4").
    ``floor`` says when the favoured side works well enough for the comparison to count (``Floor``; None
    for costs, which have no chance level).
    """

    id: str
    text: str
    where: str
    table: str
    metric: str
    favoured: Side
    against: tuple[Side, ...]
    level: str = "pixel"
    higher_is_better: bool = True
    margin: float = 0.0  # the difference the paper claims (same units as the metric); 0: only the sign
    note: str = ""
    floor: Floor | None = None


@dataclass(frozen=True)
class TableSpec:
    """What the paper measured one printed table on, for the report's comparability rule.

    ``backbones`` maps a display method name to the backbone the paper ran it with; ``"*"`` is the
    default. ``image_size``/``protocol``/``class_setting`` apply to every row. ``rows`` and ``columns`` give
    the paper's own shape (long-format columns that index rows and columns).
    """

    title: str
    image_size: int | None = None
    backbones: Mapping[str, str] = field(default_factory=dict)
    protocol: str = "exact"
    class_setting: str = "one-class"
    rows: tuple[str, ...] = ("method",)
    columns: tuple[str, ...] = ("dataset", "metric")
    note: str = ""

    def backbone_for(self, method: str) -> str | None:
        return self.backbones.get(method, self.backbones.get("*"))


@dataclass(frozen=True)
class TrainTime:
    """How long the paper says one training of ``model`` took (for ``adlib reproduce --plan``).

    ``hours`` per ``per`` ("category": one fit per category; "dataset": one multi-class fit per dataset), on
    ``hardware``, as stated at ``where``; None when the paper does not state it (``note`` says what it does say)."""

    hours: float | None
    per: str = "category"
    hardware: str = ""
    where: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        if self.per not in ("category", "dataset"):
            raise ValueError(f"TrainTime.per={self.per!r}: expected 'category' or 'dataset'")


@dataclass(frozen=True)
class NotebookRuns:
    """What one notebook of a paper fits in a profile, for ``adlib reproduce --plan``: ``models`` (registry
    names), each over ``variants`` (the number of grid rows, or names of the profile's ``grids`` whose rows are
    counted), the profile's seeds and its data (``datasets``: dataset folders; None: the profile's
    ``real_datasets``); ``weights``: further backbones it builds beyond the models' own."""

    models: tuple[str, ...] = ()
    variants: tuple[str | int, ...] = (1,)
    datasets: tuple[str, ...] | None = None
    weights: tuple[str, ...] = ()
    seeds: bool = True  # False: one seed (a walkthrough)
    note: str = ""
    train_time: TrainTime | None = None  # this notebook's fits take this instead of the paper's per-model time


@dataclass(frozen=True)
class PaperSpec:
    """Everything the notebooks and the report need to know about one paper."""

    name: str  # folder name: notebooks/<name>/, results/<profile>/<name>/
    title: str
    method: str  # the paper's own model (registry name)
    profiles: Mapping[str, ProfileSpec]
    recipes: Mapping[tuple[str, str], Recipe] = field(default_factory=dict)  # (model, profile) -> Recipe
    methods: Mapping[str, str] = field(default_factory=dict)  # registry name -> display name in this paper
    claims: tuple[Claim, ...] = ()
    tables: Mapping[str, TableSpec] = field(default_factory=dict)
    figures: Mapping[str, str] = field(default_factory=dict)  # figure name -> what it shows
    # Models whose home recipe is this paper's (``adlib run MODEL`` uses it); default: the paper's method.
    owns: tuple[str, ...] = ()
    datasets: Mapping[str, str] = field(default_factory=dict)  # dataset folder -> the paper's display name
    # The paper's own training times per model (``TrainTime``), and per notebook (file stem) what it fits in the
    # paper profile (``NotebookRuns``): ``adlib reproduce --plan`` estimates GPU hours from them.
    train_times: Mapping[str, TrainTime] = field(default_factory=dict)
    notebook_runs: Mapping[str, NotebookRuns] = field(default_factory=dict)
    main: bool = False  # the collection's main paper: listed first and marked so in the report
    # the authors' released code and what adlib's implementation is checked against (the report's Faithfulness)
    reference_code: str = ""

    def profile(self, name: str) -> ProfileSpec:
        """The ``ProfileSpec`` of ``name``; a check profile ("paper-check") is its base profile with the
        ``PathCheck`` cuts applied (caps, one seed, few categories per synthetic set)."""
        base = base_profile(name)
        if base not in self.profiles:
            raise ValueError(f"profile {name!r} unknown for paper {self.name}; expected one of {sorted(self.profiles)}"
                             + (f" (or {', '.join(p + CHECK_SUFFIX for p in sorted(self.profiles))})"
                                if is_check(name) else ""))
        spec = self.profiles[base]
        return check_spec(spec) if is_check(name) else spec

    def recipe(self, model: str, profile: str) -> Recipe | None:
        return self.recipes.get((model, base_profile(profile)))

    def display(self, model: str) -> str:
        if model in self.methods:
            return self.methods[model]
        from adlib.models import display_name

        return display_name(model)

    def claim(self, claim_id: str) -> Claim:
        for claim in self.claims:
            if claim.id == claim_id:
                return claim
        raise KeyError(f"paper {self.name} declares no claim {claim_id!r}; declared: {[c.id for c in self.claims]}")

    @property
    def home_models(self) -> tuple[str, ...]:
        return self.owns or (self.method,)


def _cap(value: int | None, cap: int) -> int:
    return cap if value is None else min(value, cap)


def check_spec(spec: ProfileSpec, cuts: PathCheck = PATH_CHECK_CUTS) -> ProfileSpec:
    """``spec`` at the path check's scale: every setting and grid kept, caps and seeds cut."""
    from dataclasses import replace

    return replace(spec, description=f"{cuts.describe()}. The profile: {spec.description}",
                   max_train=_cap(spec.max_train, cuts.max_train), max_test=_cap(spec.max_test, cuts.max_test),
                   seeds=tuple(cuts.seeds), synthetic_categories=_cap(spec.synthetic_categories, cuts.categories))
