"""The paper-neutral study layer: what the notebooks of every paper call.

- ``spec``: the dataclasses a paper file declares (``PaperSpec``, ``ProfileSpec``, ``Recipe``, ``Claim``,
  ``TableSpec``);
- ``setting``: notebook parameters -> a ``Setting`` (paper, profile, data sources, seeds);
- ``parameters``: a notebook's parameters checked against those it declares (names, types, registries);
- ``grid``: fit and evaluate (model, variant, seed, data) combinations through the one engine, one-class
  or multi-class, under one or both metric protocols, as long-format rows;
- ``tables``: seed summaries and wide views (never averaging scopes or protocols); ``cost``: parameters,
  FLOPs, speed; ``claims``: verdicts against the seeds' and the test images' noise by one stated rule, floors,
  a chapter's closing section; ``examples``: maps for figures; ``choices``: what the paper leaves open;
  ``explorer``: one setting of a paper's declared ablation axes beside the default (maps, metrics,
  verdicts), read from the run cache or fitted on request.

Nothing here knows a paper or a model by name: the paper comes in as a ``PaperSpec`` from ``adlib.papers``.
"""
from __future__ import annotations

from adlib.study import claims
from adlib.study.choices import open_choices
from adlib.study.cost import backbone_params_m, cost_rows, count_params, flops_g, speed, speed_rows
from adlib.study.examples import example_maps, examples_by_source, peak_hits, pick_examples
from adlib.study.grid import QUALITY_METRICS, Run, build, configs, model_backbone, run_grid, run_one, try_run
from adlib.study.parameters import check_parameters
from adlib.study.setting import (DataSource, Setting, dataset_labels, datasets_for, resolve_setting, spread,
                                 test_indices)
from adlib.study.spec import Claim, PaperSpec, ProfileSpec, Recipe, Side, TableSpec
from adlib.study import explorer
from adlib.study.tables import (best, comparability, dataset_means, dataset_table, paper_category_counts,
                                paper_vs_ours, pivot, seed_summary, side_by_side, tap_subsets, trend)

__all__ = [
    "Claim", "DataSource", "check_parameters", "explorer", "PaperSpec", "ProfileSpec", "QUALITY_METRICS", "Recipe", "Run", "Setting", "Side",
    "TableSpec", "backbone_params_m", "best", "build", "claims", "comparability", "configs", "cost_rows", "count_params",
    "dataset_labels", "dataset_means", "dataset_table", "datasets_for", "example_maps", "examples_by_source",
    "flops_g", "model_backbone", "open_choices", "paper_category_counts", "paper_vs_ours", "peak_hits", "pick_examples", "pivot",
    "resolve_setting", "run_grid", "run_one", "try_run", "seed_summary", "side_by_side", "speed", "speed_rows", "spread", "tap_subsets", "test_indices",
    "trend",
]
