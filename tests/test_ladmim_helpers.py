"""The LADMIM chapter's helpers: Tab. 1 counts, not-run rows the claims can read, per-stage epochs, the subset's
setting, our cells beside the printed ones, Fig. 2's rows (adlib.papers.ladmim, adlib.study.tables, adlib.plots)."""
import dataclasses

import pandas as pd

from adlib import papers, results, study
from adlib.data import synth
from adlib.papers import ladmim as paper
from adlib.study import claims, tables

PAPER = papers.get("ladmim")


def test_table1_counts_the_loco_groups_and_sums_them():
    setting = study.resolve_setting(PAPER, profile="smoke")
    sources = setting.synthetic_sources(limit=None)
    table = tables.split_counts(sources).set_index(["dataset", "metric"])["value"]
    counts = synth.LOCO_COUNTS
    for source in sources:
        assert table[(source.name, "train_normal")] == counts["train"]
        assert table[(source.name, "validation_normal")] == counts["validation"]
        assert table[(source.name, "test_logical")] == 4 * counts["per_logical"]  # four rules per category
        assert table[(source.name, "test_structural")] == 4 * counts["per_structural"]
    assert table[("synthetic_loco", "test_normal")] == counts["test_good"] * len(sources)


def test_not_run_rows_carry_the_reason_into_claims():
    setting = study.resolve_setting(PAPER, profile="smoke")
    rows = tables.not_run_cells(setting, ["synthetic_loco"], "LADMIM", ["mask=block-0.1", "mask=block-0.2", "mask=block-0.6"],
                               ["auroc_avg"], "not run: budget")
    assert len(rows) == 3 * len(setting.seeds) and rows["value"].isna().all()
    verdicts = claims.evaluate(PAPER.claim("mask_ratio_middle"), rows)
    assert set(verdicts["verdict"]) == {"not run"} and verdicts["note"].str.contains("not run: budget").any()
    sentence = claims.explain(verdicts)  # the comparisons' reason, not the rule that combines them
    assert "BlockRandom-0.1: not run: budget" in sentence and "held when every comparison holds" not in sentence
    grid = pd.DataFrame([{"dataset": "synthetic_loco/pins", "method": "LADMIM", "setting": "target=code", "seed": 0,
                          "class_setting": "one-class", "image_size": 128, "backbone": "b", "data": "d",
                          "level": "pixel", "metric": "auroc", "value": float("nan"), "note": "why"}])
    out = tables.grid_not_run_rows(grid, paper.LOCO_METRICS, setting.protocol)
    assert set(out["metric"]) == set(paper.LOCO_METRICS) and set(out["scope"]) == {"category", "mean"}
    assert (out["note"] == "why").all()


def test_stage_epochs_overrides_both_stages_only_when_asked():
    setting = study.resolve_setting(PAPER, profile="smoke")
    assert paper.stage_epochs(setting) == {}
    stages = paper.stage_epochs(dataclasses.replace(setting, epochs=2))["stages"]
    assert {s: v["epochs"] for s, v in stages.items()} == {"tokenizer": 2, "mim": 2}
    assert stages["mim"]["lr"] == PAPER.recipe("ladmim", "smoke").fit.stages["mim"]["lr"]


def test_fig2_rows_are_read_from_the_built_model():
    from adlib.models import create_model
    from adlib import plots

    model = create_model("ladmim", pretrained=False, image_size=64, grid=8, codebook_size=16, hvq_dim=16,
                         hvq_dec_dim=32, hvq_ffn=32, hvq_heads=2, mim_dim=24, mim_heads=2, mim_layers=3,
                         num_test_masks=2)
    rows = plots.hvq_mim_rows(model, "x")
    hvq, mim = rows["x: HVQ-Trans (stage 1, S_HVQ)"], rows["x: MIM ViT (stage 2, S_MIM)"]
    assert "x 8 x 8" in hvq[0][1] and "4 levels x 16 codes" in hvq[2][1] and "(4, 64)" in hvq[2][1]
    assert "3 blocks, width 24" in mim[1][1] and "(24,)" in mim[2][1] and "2 test masks" in mim[3][1]
    assert "of 64 tokens" in mim[0][1] and model.training, "the model's mode is restored"


def test_the_subset_setting_sets_size_images_and_tokenizer_epochs():
    setting = study.resolve_setting(PAPER, profile="smoke")
    real, overrides = paper.loco_subset_setting(setting)
    declared = setting.grids["loco_subset"]
    assert (real.image_size, real.max_train) == (declared["image_size"], declared["max_train"])
    assert overrides["stages"]["tokenizer"]["epochs"] == declared["overrides"]["stages"]["tokenizer"]["epochs"]
    assert paper.loco_subset_setting(setting, image_size=64)[0].image_size == 64


def test_printed_beside_pairs_two_datasets_without_a_difference():
    setting = study.resolve_setting(PAPER, profile="smoke")
    subset = f"{paper.LOCO_SUBSET}/juice_bottle"
    ours = pd.DataFrame([{"dataset": subset, "method": "LADMIM", "setting": "default", "level": "image",
                          "metric": "auroc_logical", "value": v, "seed": s, "scope": "category", "protocol": "exact"}
                         for s, v in enumerate((70.0, 80.0, 90.0))])
    ours = pd.concat([ours, tables.not_run_cells(setting, [subset], "PatchCore", ["default"], ["auroc_logical"],
                                                 "no reason at all")], ignore_index=True)
    view = tables.printed_beside(setting, "table2", ours, {subset: "MVTec LOCO/juice_bottle"})
    label = tables.metric_label("auroc_logical", "image")
    ladmim, patchcore = view.loc[("LADMIM", label)], view.loc[("PatchCore", label)]
    printed = results.paper_table("ladmim", "table2")
    number = printed[(printed["dataset"] == "MVTec LOCO/juice_bottle") & (printed["method"] == "LADMIM")
                     & (printed["metric"] == "auroc_logical")]["value"].iloc[0]
    assert ladmim[f"ours: {subset}"] == "80.0 ± 10.0 (3 seeds)"
    assert ladmim["paper: MVTec LOCO/juice_bottle"] == f"{number:.1f}"
    assert patchcore[f"ours: {subset}"] == "not run here: no reason at all"
    assert not any("Δ" in str(c) for c in view.columns) and not any("Δ" in str(v) for v in view.values.ravel())


def test_ran_variant_panels_draws_what_ran_and_lists_the_rest():
    from adlib import plots

    rows = [{"dataset": "d", "method": "LADMIM", "setting": label, "level": "image", "metric": "auroc_avg",
             "value": value, "seed": seed, "scope": "mean", "protocol": "exact", "note": note}
            for label, value, note in (("mask=block-0.2", 60.0, ""), ("mask=block-0.6", float("nan"), "budget"))
            for seed in (0, 1)]
    fig = plots.ran_variant_panels(pd.DataFrame(rows), metrics=("auroc_avg",), level="image",
                                   order=["mask=block-0.6", "mask=block-0.2"])
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["mask=block-0.2"]
    assert any("mask=block-0.6: not run (budget)" in t.get_text() for t in fig.texts)
    import pytest
    with pytest.raises(plots.NothingToDraw):
        plots.ran_variant_panels(pd.DataFrame(rows).assign(value=float("nan")), metrics=("auroc_avg",), level="image")


def test_a_walkthrough_closing_describes_a_table_of_counts(tmp_path):
    setting = study.resolve_setting(PAPER, profile="smoke", output_root=tmp_path)
    setting.write_table(tables.split_counts(setting.synthetic_sources(limit=None)), "table1")
    text = claims.closing(setting, ids=[], tables=["table1"])
    assert text.startswith("## Verdicts") and "This chapter decides no claim" in text
    assert "`table1`: 15 image counts (no scores); data: synthetic_loco" in text
