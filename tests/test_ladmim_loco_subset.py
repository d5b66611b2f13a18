"""The LADMIM smoke profile's second source, the derived MVTec LOCO subset: its name, its setting, claims decided
per source (never pooled with the synthetic set), and no difference to the paper's official-split cell."""
import dataclasses

import numpy as np
import pandas as pd

from adlib import loco, papers, results, study
from adlib.papers import ladmim as paper
from adlib.study import claims

PAPER = papers.get("ladmim")


def _rows(dataset: str, values: dict[str, list[float]]) -> pd.DataFrame:
    """LOCO mean rows (as ``loco.runs_table`` writes them) of one dataset: method -> value per seed, each with
    test-image resamples (one shared noise draw per dataset: the same images for every method) and chance 50."""
    noise = np.random.default_rng(len(dataset)).normal(0.0, 0.5, 200)
    return pd.DataFrame([{"dataset": dataset, "method": method, "setting": "default", "level": "image",
                          "metric": "auroc_logical", "value": v, "seed": seed, "scope": "mean", "protocol": "exact",
                          "class_setting": "one-class", "image_size": 128, "backbone": "b", "data": dataset, "note": "",
                          "boot": (v + (0 * noise if method == loco.CHANCE else noise)).astype(np.float32),
                          "chance": 50.0, "test_id": dataset}
                         for method, per_seed in values.items() for seed, v in enumerate(per_seed)])


def test_the_subset_is_the_smoke_profiles_real_source_named_as_not_the_official_split(tmp_path):
    (tmp_path / paper.LOCO_SUBSET_FOLDER / "juice_bottle" / "train").mkdir(parents=True)
    setting = study.resolve_setting(PAPER, "smoke", data_root=tmp_path, synthetic=False)
    (source,) = setting.real_sources()
    assert source.category == "juice_bottle" and source.dataset == paper.LOCO_SUBSET
    assert "not the official" in source.dataset and "/" not in source.dataset  # "/" separates the category
    subset, overrides = paper.loco_subset_setting(setting)
    declared = PAPER.profile("smoke").grids["loco_subset"]
    assert subset.image_size == declared["image_size"] and subset.max_train == declared["max_train"]
    assert overrides == dict(declared["overrides"])
    subset, overrides = paper.loco_subset_setting(dataclasses.replace(setting, epochs=2), image_size=64, max_train=7)
    assert (subset.image_size, subset.max_train) == (64, 7)
    assert {stage: v["epochs"] for stage, v in overrides["stages"].items()} == {"tokenizer": 2, "mim": 2}


def test_the_main_claim_gets_one_verdict_per_source():
    chance = [50.0, 50.0, 50.0]
    table = pd.concat([
        _rows("synthetic_loco", {"LADMIM": [60.0, 62.0, 61.0], "PatchCore": [66.0, 67.0, 68.0], loco.CHANCE: chance}),
        _rows(paper.LOCO_SUBSET, {"LADMIM": [99.0, 98.0, 99.5], "PatchCore": [90.0, 90.5, 91.0], loco.CHANCE: chance}),
    ], ignore_index=True)
    ids = ["mim_catches_logical", "mim_catches_logical_loco_subset", "mim_catches_logical_mvtec_loco"]
    verdicts = {i: claims.evaluate(PAPER.claim(i), table) for i in ids}
    final = {i: v.iloc[-1] for i, v in verdicts.items()}
    assert final["mim_catches_logical"]["verdict"] == "failed"  # the synthetic set alone: PatchCore is ahead
    # at chance on one source, the claim is not testable there, whatever the other source says
    at_chance = table.assign(value=np.where((table["dataset"] == "synthetic_loco") & (table["method"] == "LADMIM"),
                                            50.0, table["value"]))
    at_chance["boot"] = [b - v + a for b, v, a in zip(table["boot"], table["value"], at_chance["value"])]
    assert claims.evaluate(PAPER.claim("mim_catches_logical"), at_chance).iloc[-1]["verdict"] == "not testable here"
    assert final["mim_catches_logical_loco_subset"]["verdict"] == "held"  # the subset alone
    first = verdicts["mim_catches_logical_loco_subset"].iloc[0]
    assert first["favoured_mean"] == np.mean([99.0, 98.0, 99.5]) and first["data"] == paper.LOCO_SUBSET
    assert final["mim_catches_logical_mvtec_loco"]["verdict"] == "not run"  # no official MVTec LOCO here


def test_no_difference_is_computed_against_the_papers_official_split_cell():
    setting = study.resolve_setting(PAPER, "smoke", synthetic=False)
    ours = _rows(f"{paper.LOCO_SUBSET}/juice_bottle", {"LADMIM": [90.0, 91.0, 92.0]})
    ours = ours.assign(image_size=224, backbone="pdn", scope="category")  # even at the paper's size and backbone
    side = study.side_by_side(PAPER.tables["table2"], results.paper_table("ladmim", "table2"), ours)
    mine = side[side["dataset"] == f"{paper.LOCO_SUBSET}/juice_bottle"]
    assert len(mine) == 1 and mine["diff"].isna().all() and mine["paper"].isna().all()
    official = side[(side["dataset"] == "MVTec LOCO/juice_bottle") & (side["method"] == "LADMIM")
                    & (side["metric"] == "auroc_logical")]
    assert official["paper"].tolist() == [99.0] and official["ours"].isna().all()
    wide = study.paper_vs_ours(setting, "table2", ours, methods=["LADMIM"])
    assert not wide.astype(str).apply(lambda c: c.str.contains("Δ")).any().any()
