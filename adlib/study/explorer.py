"""An interactive explorer widget for scan-based token predictors (ipywidgets; headless runs show the
default state as a static figure)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from adlib.study.examples import pick_examples
from adlib.study.grid import Run, run_one
from adlib.study.setting import DataSource, Setting


class Explorer:
    """Interactive explorer for a scan-based predictor (a model with ``explain``, ``partial_map``,
    ``directions`` and ``grids``): pick a test image, the prediction step m, directions and hierarchies and see
    the map. Directions and hierarchies are dropped at test time from a model trained with all of them
    (``partial_map``, no retraining); each new m trains its own model once (cached).
    """

    def __init__(self, setting: Setting, source: DataSource, examples: int = 4, m_values: Sequence[int] = (4,),
                 model: str | None = None):
        self.model_name = model or setting.paper.method
        self.setting, self.source = setting, source
        self.m_values = list(m_values)
        self.runs: dict[int, Run] = {}
        self.explanations: dict[int, dict] = {}
        self.examples = examples

    def run_for(self, m: int) -> Run:
        if m not in self.runs:
            self.runs[m] = run_one(self.setting, self.source, self.model_name, f"m={m}", m=m)
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
        partial = run.model.partial_map(out, image, directions, hierarchies)
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
