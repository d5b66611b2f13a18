"""adlib.papers.ladmim's notebook helpers: Tab. 1 counts, not-run rows the claims can read, per-stage epochs."""
import dataclasses

import pandas as pd

from adlib import papers, study
from adlib.data import synth
from adlib.papers import ladmim as paper
from adlib.study import claims

PAPER = papers.get("ladmim")


def test_table1_counts_the_loco_groups_and_sums_them():
    setting = study.resolve_setting(PAPER, profile="smoke")
    sources = setting.synthetic_sources(limit=None)
    table = paper.table1(setting, sources).set_index(["dataset", "metric"])["value"]
    counts = synth.LOCO_COUNTS
    for source in sources:
        assert table[(source.name, "train_normal")] == counts["train"]
        assert table[(source.name, "validation_normal")] == counts["validation"]
        assert table[(source.name, "test_logical")] == 4 * counts["per_logical"]  # four rules per category
        assert table[(source.name, "test_structural")] == 4 * counts["per_structural"]
    assert table[("synthetic_loco", "test_normal")] == counts["test_good"] * len(sources)


def test_not_run_rows_carry_the_reason_into_claims():
    setting = study.resolve_setting(PAPER, profile="smoke")
    rows = paper.not_run(setting, ["synthetic_loco"], "LADMIM", ["mask=block-0.1", "mask=block-0.2", "mask=block-0.6"],
                         ["auroc_avg"], "not run: budget")
    assert len(rows) == 3 * len(setting.seeds) and rows["value"].isna().all()
    verdicts = claims.evaluate(PAPER.claim("mask_ratio_middle"), rows)
    assert set(verdicts["verdict"]) == {"not run"} and verdicts["note"].str.contains("not run: budget").any()
    grid = pd.DataFrame([{"dataset": "synthetic_loco/pins", "method": "LADMIM", "setting": "target=code", "seed": 0,
                          "class_setting": "one-class", "image_size": 128, "backbone": "b", "data": "d",
                          "level": "pixel", "metric": "auroc", "value": float("nan"), "note": "why"}])
    out = paper.not_run_rows(grid)
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
    from adlib.papers import ladmim as paper

    model = create_model("ladmim", pretrained=False, image_size=64, grid=8, codebook_size=16, hvq_dim=16,
                         hvq_dec_dim=32, hvq_ffn=32, hvq_heads=2, mim_dim=24, mim_heads=2, mim_layers=3,
                         num_test_masks=2)
    rows = paper.fig2_rows(model, "x")
    hvq, mim = rows["x: HVQ-Trans (stage 1, S_HVQ)"], rows["x: MIM ViT (stage 2, S_MIM)"]
    assert "x 8 x 8" in hvq[0][1] and "4 levels x 16 codes" in hvq[2][1] and "(4, 64)" in hvq[2][1]
    assert "3 blocks, width 24" in mim[1][1] and "(24,)" in mim[2][1] and "2 test masks" in mim[3][1]
    assert "of 64 tokens" in mim[0][1] and model.training, "the model's mode is restored"
