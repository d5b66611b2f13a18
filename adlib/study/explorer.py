"""A paper-neutral explorer of ablation settings, driven by the axes a paper declares.

A paper lists its explorer's axes in its profile's ``grids["explorer"]`` (``adlib.study.spec.ExplorerAxis``):
each axis names a grid of the profile (a table's variants, or the values of one config field). ``Explorer``
offers one value per axis, a data source and a test image, and shows

- the chosen setting's anomaly map beside the default setting's map and the ground truth (``figure``);
- both settings' metrics, mean ± std over the seeds that ran (``metrics``): every seed whose fit is in the
  run cache (``adlib.study.runcache``) counts, plus the seeds fitted on request;
- the verdicts of the paper's claims over the chosen axis value, as the chapter recorded them in
  ``claims.csv`` (``verdicts``; the explorer decides nothing itself: its own seeds are few).

A setting whose fit is in the run cache (the chapters and ``adlib reproduce`` put it there) is read, not
trained (``Run.fit_from == "cache"``); one that is not is fitted on request (``fit``: a progress bar over the
missing seeds and the expected time) and then cached by the run path (``study.run_one``).

The programmatic API (``set``, ``figure``, ``metrics``, ``verdicts``) needs no widgets; ``widget()`` builds
ipywidgets controls on top of it when ipywidgets is installed. ``ScanView`` adds VarAD's test-time view:
directions and hierarchies dropped from the default setting's trained model (``explain``/``partial_map``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from adlib.study.grid import Run, build, calibration_plan, run_one
from adlib.study.setting import DataSource, Setting, dataset_labels, datasets_for
from adlib.study.spec import ExplorerAxis

DEFAULT = "default"  # the label of the setting with every axis at its default value
RECIPE = "recipe"  # the value of an axis whose grid holds no variant equal to the recipe's setting
SHOWN = (("image", "auroc"), ("pixel", "auroc"), ("pixel", "f1max"), ("pixel", "aupro"), ("summary", "mad"))


def _key(label: str) -> str:
    return label.split("=", 1)[0]


class Explorer:
    """Pick one value per ablation axis of ``setting``'s paper, a data source and a test image; see the module
    docstring. ``sources``: the data to choose from (default: the setting's), grouped as ``run_grid`` groups
    them (one-class: each source; multi-class: each dataset). ``base``: overrides every run gets (a notebook's
    recipe changes, e.g. stage epochs), ``protocols``: the metric protocols the chapters evaluate with (so that
    their cached evaluations are read too); ``fit_seeds``: the seeds ``fit`` trains on request (default: the
    setting's seed)."""

    def __init__(self, setting: Setting, sources: Sequence[DataSource] | None = None, model: str | None = None,
                 base: Mapping[str, Any] | None = None, protocols: Sequence[str] | None = None,
                 fit_seeds: Sequence[int] | None = None, log=print):
        self.setting = setting
        self.model_name = model or setting.paper.method
        self.base = dict(base or {})
        self.protocols = list(protocols or [setting.protocol])
        self.fit_seeds = list(fit_seeds if fit_seeds is not None else [setting.seed])
        self.log = log
        declared = setting.grids.get("explorer", ())
        if not declared:
            raise ValueError(f"paper {setting.paper.name}: its {setting.profile} profile declares no explorer axes "
                             "(grids['explorer'], a tuple of adlib.study.spec.ExplorerAxis)")
        self.axes: dict[str, dict[str, dict]] = {}  # axis -> {value label: overrides}
        self.defaults: dict[str, str] = {}
        self.about: dict[str, str] = {}
        for axis in declared:
            self.axes[axis.name], self.defaults[axis.name] = self._values(axis)
            self.about[axis.name] = axis.about
        self.state = dict(self.defaults)
        sources = list(setting.sources() if sources is None else sources)
        if not sources:
            raise ValueError(f"{setting.paper.name} explorer: no data source here "
                             f"({'; '.join(m.reason for m in setting.missing_sources()) or 'none given'})")
        self.groups = _groups(sources, setting.class_setting)
        self.data = self.group_names[0]
        self.image = 0  # index into image_options()
        self._runs: dict[tuple, Run | None] = {}
        self._maps: dict[tuple, Any] = {}
        self._cached: dict[tuple, bool] = {}  # whether the run cache held a fit when asked (a fit adds it)

    # ------------------------------------------------------------------------------------------- axes
    def _values(self, axis: ExplorerAxis) -> tuple[dict[str, dict], str]:
        grid = self.setting.grids.get(axis.grid)
        if grid is None:
            raise ValueError(f"explorer axis {axis.name!r}: the profile's grids have no {axis.grid!r}")
        if isinstance(grid, Mapping):
            values = {label: dict(overrides) for label, overrides in grid.items()}
        elif axis.field is not None:
            values = {f"{axis.field}={v}": {axis.field: v} for v in grid}
        else:
            raise ValueError(f"explorer axis {axis.name!r}: grid {axis.grid!r} is a sequence; name its config field")
        default = axis.default
        if default is None and axis.field is not None:
            from adlib.study.grid import configs

            current = self.setting.image_size if axis.field == "image_size" else \
                getattr(configs(self.setting, self.model_name, **self.base)[0], axis.field)
            default = f"{axis.field}={current}"
            values.setdefault(default, {axis.field: current})
        if default is None:
            default = next((label for label, overrides in values.items() if not overrides), None)
        if default is None:
            values = {RECIPE: {}, **values}
            default = RECIPE
        if default not in values:
            raise ValueError(f"explorer axis {axis.name!r}: default {default!r} is not one of its values")
        return values, default

    def values(self, axis: str) -> list[str]:
        """The values ``axis`` offers; "data" and "image" are axes too."""
        if axis == "data":
            return self.group_names
        if axis == "image":
            return [label for label, _ in self.image_options()]
        self._check_axis(axis)
        return list(self.axes[axis])

    def _check_axis(self, axis: str) -> None:
        if axis not in self.axes:
            raise ValueError(f"explorer: no axis {axis!r}; expected 'data', 'image' or one of {list(self.axes)}")

    def set(self, axis: str, value) -> "Explorer":
        """Choose ``value`` on ``axis`` (an ablation axis, "data": a data source name, or "image": an index
        into ``image_options()`` or its label). Fits nothing: ``figure``/``metrics`` read or fit on demand."""
        if axis == "data":
            if value not in self.group_names:
                raise ValueError(f"explorer: data {value!r} is not here; expected one of {self.group_names}")
            self.data, self.image = value, 0
        elif axis == "image":
            labels = [label for label, _ in self.image_options()]
            index = labels.index(value) if isinstance(value, str) and value in labels else value
            if not isinstance(index, int) or not 0 <= index < len(labels):
                raise ValueError(f"explorer: image {value!r}: expected an index below {len(labels)} or a label")
            self.image = index
        else:
            self._check_axis(axis)
            if value not in self.axes[axis]:
                raise ValueError(f"explorer axis {axis!r}: value {value!r} not offered; expected one of "
                                 f"{list(self.axes[axis])}")
            self.state[axis] = value
        return self

    def reset(self) -> "Explorer":
        self.state = dict(self.defaults)
        return self

    @property
    def changed(self) -> dict[str, str]:
        """The axes away from their default, with their value."""
        return {a: v for a, v in self.state.items() if v != self.defaults[a]}

    def label(self, state: Mapping[str, str] | None = None) -> str:
        """The setting's label: "default", or the non-default values joined by " + " (one changed axis: its
        grid's own label, which the chapters' tables and the claims use)."""
        state = self.state if state is None else state
        changed = [v for a, v in state.items() if v != self.defaults[a]]
        return " + ".join(changed) or DEFAULT

    def overrides(self, state: Mapping[str, str] | None = None) -> dict:
        """The config overrides of a state: ``base``, then each axis away from its default (an axis at its
        default is the recipe's setting, as in the chapters' tables); two axes that set one field to different
        values are refused."""
        state = self.state if state is None else state
        out, by = dict(self.base), {}
        for axis, value in state.items():
            if value == self.defaults[axis]:
                continue
            for key, v in self.axes[axis][value].items():
                if key in by and out[key] != v:
                    raise ValueError(f"explorer: {value!r} ({axis}) and {state[by[key]]!r} ({by[key]}) both set "
                                     f"{key!r}, to different values; change one of them back")
                out[key], by[key] = v, axis
        return out

    # ------------------------------------------------------------------------------------------- data
    @property
    def group_names(self) -> list[str]:
        return [_group_name(g) for g in self.groups]

    @property
    def group(self) -> list[DataSource]:
        return self.groups[self.group_names.index(self.data)]

    def image_options(self) -> list[tuple[str, tuple[str, int]]]:
        """(label, (category, index)) of every test image of the chosen data, defective first."""
        key = ("images", self.data)
        if key not in self._maps:
            options = []
            for source in self.group:
                test = datasets_for(source, self.setting, self._image_size())[1]
                labels = dataset_labels(test)
                order = [i for i, y in enumerate(labels) if y != 0] + [i for i, y in enumerate(labels) if y == 0]
                for i in order:
                    path = Path(_path(test, i))
                    options.append((f"{source.category}/{path.parent.name}/{path.name}", (source.category, i)))
            self._maps[key] = options
        return self._maps[key]

    def _image_size(self, state: Mapping[str, str] | None = None) -> int:
        return int(self.overrides(state).get("image_size") or self.setting.image_size)

    # ------------------------------------------------------------------------------------------- runs
    def _run_key(self, state: Mapping[str, str], seed: int) -> tuple:
        return (self.data, tuple(sorted(self.overrides(state).items(), key=lambda kv: kv[0])).__repr__(), seed)

    def cached(self, state: Mapping[str, str] | None = None, seed: int | None = None) -> bool:
        """Whether the run cache holds the fit of ``state`` (default: the chosen one) for ``seed``; builds the
        model and reads the training images' fingerprint, trains nothing."""
        from adlib.study import runcache

        state = dict(self.state if state is None else state)
        seed = self.setting.seed if seed is None else int(seed)
        key = self._run_key(state, seed)
        if self._runs.get(key) is not None:
            return True
        if runcache.mode() == "off":
            return False
        if key not in self._cached:
            self._cached[key] = self._in_cache(state, seed)
        return self._cached[key]

    def _in_cache(self, state: Mapping[str, str], seed: int) -> bool:
        from adlib.study import runcache

        overrides = self.overrides(state)
        size = int(overrides.pop("image_size", None) or self.setting.image_size)
        try:
            net, fit_config = build(self.setting, self.model_name, image_size=size, seed=seed, **overrides)
        except ValueError:
            return False
        parts = [datasets_for(s, self.setting, size) for s in self.group]
        parts, calibration, _ = calibration_plan(net, self.group, parts, self.setting, size)
        from torch.utils.data import ConcatDataset

        train = parts[0][0] if len(parts) == 1 else ConcatDataset([p[0] for p in parts])
        made = runcache.fit_key(net, fit_config, train, calibration, self.setting.device)
        return made is not None and (runcache.RunCache().entry_folder(made[0]) / "fit.pt").is_file()

    def run(self, state: Mapping[str, str] | None = None, seed: int | None = None, fit: bool = True) -> Run | None:
        """The run of ``state`` for ``seed``: read from the run cache when it holds it, else fitted when ``fit``
        (None otherwise). A setting the model refuses raises ValueError with the reason."""
        state = dict(self.state if state is None else state)
        seed = self.setting.seed if seed is None else int(seed)
        key = self._run_key(state, seed)
        if self._runs.get(key) is None:
            if not fit and not self.cached(state, seed):
                return None
            overrides = self.overrides(state)
            self._runs[key] = run_one(self.setting, self.group, self.model_name, self.label(state), seed=seed,
                                      class_setting=self.setting.class_setting, protocols=self.protocols,
                                      **overrides)
        return self._runs[key]

    def expected_seconds(self) -> float | None:
        """About how long one fit takes here: the training seconds of a fit of this data already made (its
        ``FitResult`` keeps them, also when read from the cache); None when none is known."""
        times = [r.fit.train_seconds for (data, _, _), r in self._runs.items() if r is not None and data == self.data
                 and getattr(r.fit, "train_seconds", None)]
        return max(times) if times else None

    def why_not(self) -> str:
        """"" when the default and the chosen setting can run here; else why not (a setting the model refuses,
        weights that cannot be had), for a notebook to draw instead of the maps."""
        from adlib.study.grid import _weights_error

        try:
            self.overrides()
            for state in (self.defaults, self.state):
                self.run(state)
        except (ValueError, _weights_error()) as error:
            if "unknown setting" in str(error):
                raise
            return f"cannot be run in this setting: {error}"
        return ""

    def data_label(self) -> str:
        """What the figure and metrics were made on, for ``Setting.save_figure``."""
        run = self.run(self.defaults)
        return f"{run.data}; {self.label()} against the default, seed {run.seed}"

    def missing_seeds(self, state: Mapping[str, str] | None = None) -> list[int]:
        return [s for s in self.fit_seeds if not self.cached(state, s)]

    def fit(self, state: Mapping[str, str] | None = None, seeds: Sequence[int] | None = None,
            progress: bool = True) -> list[Run]:
        """Fit (or read) ``state`` for ``seeds`` (default: ``fit_seeds``), with a progress bar over the seeds
        and the expected time of the fits the cache does not hold."""
        state = dict(self.state if state is None else state)
        seeds = list(self.fit_seeds if seeds is None else seeds)
        missing = [s for s in seeds if not self.cached(state, s)]
        if missing:
            each = self.expected_seconds()
            self.log(f"{self.label(state)} on {self.data}: {len(missing)} fit(s) not in the run cache (seeds "
                     f"{missing}); " + (f"expected about {len(missing) * each:.0f} s here (a fit of this data took "
                                        f"{each:.0f} s)" if each else "no fit of this data yet to time them by"))
        from adlib.engine import _progress

        return [self.run(state, s) for s in _progress(seeds, progress and bool(missing), desc="fit", unit="seed")]

    def runs(self, state: Mapping[str, str] | None = None) -> list[Run]:
        """The runs of ``state`` over the seeds that ran: ``fit_seeds`` (fitted when missing) and every other
        seed of the setting the run cache holds."""
        state = dict(self.state if state is None else state)
        out = self.fit(state)
        for seed in self.setting.seeds:
            if seed not in self.fit_seeds:
                run = self.run(state, seed, fit=False)
                if run is not None:
                    out.append(run)
        return sorted(out, key=lambda r: r.seed)

    # ------------------------------------------------------------------------------------------- views
    def metrics(self) -> "Any":
        """The default setting's and the chosen setting's metrics (percent), mean ± std over the seeds that ran,
        one row per (level, metric); columns per side: mean, std, seeds, and ``fits`` (trained/cache)."""
        import pandas as pd

        sides = {DEFAULT: self.defaults, self.label(): self.state}
        rows, ran = [], {name: self.runs(state) for name, state in sides.items()}
        for name, state in sides.items():
            for run in ran[name]:
                for row in run.rows():
                    if (row["level"], row["metric"]) in SHOWN and row.get("protocol") == self.protocols[0] \
                            and row["scope"] == ("category" if len(self.group) == 1 else "mean"):
                        rows.append({"side": name, "level": row["level"], "metric": row["metric"],
                                     "seed": run.seed, "value": row["value"], "fit": run.fit_from})
        long = pd.DataFrame(rows)
        out = []
        for (level, metric), part in long.groupby(["level", "metric"], sort=False):
            entry = {"level": level, "metric": metric}
            for name in sides:
                values = part[part["side"] == name]["value"]
                entry[f"{name} mean"] = values.mean()
                entry[f"{name} std"] = values.std(ddof=1) if len(values) > 1 else float("nan")
                entry[f"{name} seeds"] = len(values)
            out.append(entry)
        table = pd.DataFrame(out)
        table.attrs["fits"] = {name: [f"seed {r.seed}: {r.fit_from}" for r in runs] for name, runs in ran.items()}
        return table

    def metrics_text(self) -> str:
        """``metrics`` as "mean ± std (n seeds)" strings per side."""
        table = self.metrics()
        lines = []
        for _, row in table.iterrows():
            cells = [f"{side}: {_pm(row[f'{side} mean'], row[f'{side} std'])} ({int(row[f'{side} seeds'])} seeds)"
                     for side in dict.fromkeys([DEFAULT, self.label()])]
            lines.append(f"{row['level']} {row['metric']}: " + " | ".join(cells))
        return "\n".join(lines)

    def verdicts(self) -> "Any":
        """The paper's claims over the chosen values (a side's setting label is one of them, or has its key, as
        "m=max" for "m=2"), with the verdict the chapter recorded in ``claims.csv`` ("no verdict recorded"
        when its chapter has not run in this profile)."""
        import pandas as pd

        from adlib.study import claims

        chosen = list(self.changed.values()) or list(self.defaults.values())
        keys = {_key(v) for v in chosen}
        path = claims.claims_path(self.setting)
        recorded = claims.read(path) if path.exists() else pd.DataFrame(columns=claims.COLUMNS)
        out = []
        for claim in self.setting.paper.claims:
            labels = [str(s.where.get("setting")) for s in (claim.favoured, *claim.against) if "setting" in s.where]
            if not any(label in chosen or (_key(label) in keys and "=" in label) for label in labels):
                continue
            part = recorded[recorded["claim"].astype(str) == claim.id]
            final = part[part["comparison"].astype(str) == "overall"]
            row = (final if len(final) else part).iloc[0] if len(part) else None
            out.append({"claim": claim.id, "text": claim.text, "where": claim.where, "sides": ", ".join(labels),
                        "verdict": row["verdict"] if row is not None else "no verdict recorded",
                        "note": str(row["note"]) if row is not None else
                        f"its chapter has not run in the {self.setting.profile} profile here ({path.name} has no row)"})
        return pd.DataFrame(out, columns=["claim", "text", "where", "sides", "verdict", "note"])

    def anomaly_map(self, run: Run, category: str, index: int):
        """The map ``run``'s model gives test image ``index`` of ``category`` (at the run's image size)."""
        return self._predict(run, category, index)[0]

    def image_score(self, run: Run, category: str, index: int) -> float:
        """The image score ``run``'s model gives test image ``index`` of ``category``."""
        return self._predict(run, category, index)[1]

    def _predict(self, run: Run, category: str, index: int) -> tuple[Any, float]:
        import torch

        key = (id(run), category, index)
        if key not in self._maps:
            item = run.test_set(category)[index]
            run.model.eval()
            with torch.no_grad():
                maps, scores = run.model.to(self.setting.device).predict(item["image"][None].to(self.setting.device))
            self._maps[key] = (maps[0].float().cpu().numpy(), float(scores[0]))
        return self._maps[key]

    def figure(self, seed: int | None = None):
        """Image, ground truth, the default setting's map and the chosen setting's map, each titled with its fit
        (trained or read from the run cache) and the image score (``seed``: the setting's)."""
        from adlib import plots

        label, (category, index) = self.image_options()[self.image]
        default, chosen = self.run(self.defaults, seed), self.run(self.state, seed)
        item = chosen.test_set(category)[index]
        panels = {"image": item["image"], "ground truth": item["mask"][0]}
        for name, run in ((DEFAULT, default), (self.label(), chosen))[: 2 if self.changed else 1]:
            panels[f"{name} ({_fits(run)})\nimage score {self.image_score(run, category, index):.4g}"] = \
                self.anomaly_map(run, category, index)
        return plots.image_row(panels, cell=2.6, title=f"{self.setting.paper.title.split(':')[0]} explorer · "
                               f"{self.data} · {label} · seed {chosen.seed}")

    def describe(self) -> str:
        """The axes, a sentence each (Markdown), with their default and their values."""
        return "\n".join(f"- **{axis}** ({len(self.axes[axis])} values, default `{self.defaults[axis]}`): "
                         f"{self.about[axis]}" for axis in self.axes)

    def widget(self):
        """ipywidgets controls (data, image, one dropdown per axis, a fit button) and an output area; needs
        ipywidgets (``pip install ipywidgets``); the programmatic API works without it."""
        try:
            import ipywidgets as widgets
        except ImportError as error:
            raise ImportError("Explorer.widget needs ipywidgets (pip install ipywidgets); without it use "
                              "explorer.set(axis, value), explorer.figure(), explorer.metrics()") from error
        import matplotlib.pyplot as plt
        from IPython.display import display

        data = widgets.Dropdown(options=self.group_names, value=self.data, description="data")
        image = widgets.Dropdown(options=[(label, i) for i, (label, _) in enumerate(self.image_options())],
                                 value=self.image, description="image")
        axes = {axis: widgets.Dropdown(options=self.values(axis), value=self.state[axis], description=axis)
                for axis in self.axes}
        button = widgets.Button(description="show (fits when not cached)")
        status = widgets.HTML()
        out = widgets.Output()

        def on_data(change) -> None:
            self.set("data", change["new"])
            image.options = [(label, i) for i, (label, _) in enumerate(self.image_options())]
            image.value = 0

        def on_change(_change=None) -> None:
            if self.image != image.value:
                self.set("image", image.value)
            for axis, control in axes.items():
                self.set(axis, control.value)
            try:
                missing = self.missing_seeds()
                status.value = (f"<b>{self.label()}</b>: in the run cache" if not missing else
                                f"<b>{self.label()}</b>: seeds {missing} not in the run cache; press the button to fit")
            except ValueError as error:
                status.value = f"<b>cannot be run:</b> {error}"

        def show(_button=None) -> None:
            out.clear_output(wait=True)
            with out:
                try:
                    fig = self.figure()
                except ValueError as error:
                    print("cannot be run:", error)
                    return
                display(fig)
                plt.close(fig)
                display(self.metrics())
                display(self.verdicts())
            on_change()

        data.observe(on_data, names="value")
        for control in (image, *axes.values()):
            control.observe(on_change, names="value")
        button.on_click(show)
        return widgets.VBox([widgets.HBox([data, image]), *axes.values(), widgets.HBox([button, status]), out])


class ScanView:
    """VarAD's test-time view on an explorer: the default setting's trained model with scan directions and
    token hierarchies dropped at inference (``model.explain`` and ``model.partial_map``; no retraining). Not the
    paper's ablation (which trains a model per setting): it shows what each part contributes to one model."""

    def __init__(self, explorer: Explorer):
        self.explorer = explorer
        self._explained: dict[tuple, dict] = {}

    @property
    def model(self):
        return self.explorer.run(self.explorer.defaults).model

    def data_label(self) -> str:
        run = self.explorer.run(self.explorer.defaults)
        return f"{run.data}; the default setting's model, seed {run.seed}"

    def figure(self, directions: Sequence[str] | None = None, hierarchies: Sequence[int] | None = None):
        import torch

        from adlib import plots

        ex = self.explorer
        run = ex.run(ex.defaults)
        label, (category, index) = ex.image_options()[ex.image]
        key = (id(run), category, index)
        if key not in self._explained:
            with torch.no_grad():
                image = run.test_set(category)[index]["image"][None].to(ex.setting.device)
                self._explained[key] = run.model.explain(image)
        out = self._explained[key]
        item = run.test_set(category)[index]
        model = run.model
        names = list(model.directions[0])
        if directions is not None and not set(directions) <= set(names):
            raise ValueError(f"ScanView: directions {list(directions)}; expected a subset of {names}")
        partial = model.partial_map(out, 0, directions, hierarchies)
        dirs = "all" if directions is None else "+".join(directions)
        levels = "all" if hierarchies is None else "+".join(str(h + 1) for h in hierarchies)
        return plots.image_row({"image": item["image"], "ground truth": item["mask"][0],
                                f"directions {dirs}, hierarchies {levels}": partial,
                                "all directions and hierarchies": out["map"][0]},
                               title=f"test-time view of the default setting · {label}")

    def widget(self):
        import ipywidgets as widgets
        import matplotlib.pyplot as plt
        from IPython.display import display

        names = list(self.model.directions[0])
        directions = widgets.SelectMultiple(options=names, value=tuple(names), description="directions")
        hierarchies = widgets.SelectMultiple(options=[(f"{h + 1}: {gh}x{gw}", h)
                                                      for h, (gh, gw) in enumerate(self.model.grids)],
                                             value=tuple(range(len(self.model.grids))), description="hierarchies")
        out = widgets.Output()

        def redraw(_change=None) -> None:
            out.clear_output(wait=True)
            with out:
                if not directions.value or not hierarchies.value:
                    print("choose at least one direction and one hierarchy")
                    return
                fig = self.figure(list(directions.value), list(hierarchies.value))
                display(fig)
                plt.close(fig)

        for control in (directions, hierarchies):
            control.observe(redraw, names="value")
        return widgets.VBox([widgets.HBox([directions, hierarchies]), out])


def _groups(sources: Sequence[DataSource], class_setting: str) -> list[list[DataSource]]:
    """One group per fit, as ``run_grid`` makes them: each source (one-class), each dataset (multi-class)."""
    if class_setting == "one-class":
        return [[s] for s in sources]
    by_dataset: dict[tuple, list[DataSource]] = {}
    for s in sources:
        by_dataset.setdefault((s.dataset, str(s.root)), []).append(s)
    return list(by_dataset.values())


def _group_name(group: Sequence[DataSource]) -> str:
    return group[0].name if len(group) == 1 else f"{group[0].dataset} ({len(group)} categories)"


def _path(test, index: int) -> str:
    base, i = test, index
    while hasattr(base, "dataset") and hasattr(base, "indices"):  # a Subset
        base, i = base.dataset, base.indices[i]
    samples = getattr(base, "samples", None)
    if samples is not None:
        return str(samples[i].image_path)
    return str(test[index].get("path", index))


def _fits(run: Run) -> str:
    return "read from the run cache" if run.fit_from == "cache" else run.fit_from


def _pm(mean: float, std: float) -> str:
    if mean != mean:
        return "not run"
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


__all__ = ["DEFAULT", "Explorer", "ScanView"]
