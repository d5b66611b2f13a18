"""adlib.papers.mambaad: profiles, recipes, variant grids against the printed rows, tables and claims."""
from pathlib import Path

import pandas as pd
import pytest

from adlib import papers
from adlib.models import model_config
from adlib.papers import mambaad
from adlib.study import cost

PAPER_DIR = Path(__file__).resolve().parents[1] / "results" / "paper" / "mambaad"
PARTS = {"encoder": "tokenizer", "hfpn": "bottleneck", "decoder": "decoder"}
PRINTED = ["table1", "table2", "table3", "table4", "table5"] + [f"tableA{i}" for i in range(1, 13)]


def printed(table: str) -> pd.DataFrame:
    return pd.read_csv(PAPER_DIR / f"{table}.csv", keep_default_na=False)


def test_registered_with_its_profiles():
    spec = papers.get("mambaad")
    assert spec is mambaad.PAPER and spec.method == "mambaad" and "mambaad" in papers.available()
    smoke, paper = spec.profile("smoke"), spec.profile("paper")
    assert smoke.class_setting == paper.class_setting == "multi-class"
    assert smoke.protocol == paper.protocol == "ader"
    assert smoke.seeds == (0, 1, 2) and smoke.synthetic == ("synthetic_multi",) and smoke.real_categories == ("bottle",)
    assert smoke.backbone == "efficientnet_lite0" and smoke.paper_backbone == paper.backbone == "resnet34"
    assert paper.image_size == 256


def test_recipes():
    paper = papers.home_recipe("mambaad", "paper")
    assert paper.model["backbone"] == "resnet34" and paper.model["image_size"] == 256
    fit = paper.fit
    assert (fit.epochs, fit.batch_size, fit.lr, fit.weight_decay, fit.optimizer) == (500, 16, 0.005, 1e-4, "adamw")
    assert fit.schedule == "step" and fit.step_at == 0.8 and "1000" in paper.notes["epochs"]
    smoke = papers.home_recipe("mambaad", "smoke")
    assert smoke.model["layers"] == (1, 2, 3) and smoke.fit.lr == 0.005
    for name in ("backbone", "image_size", "epochs"):
        assert name in smoke.notes  # every change from the paper says why
    for (model, profile), recipe in mambaad.RECIPES.items():
        if model == "mambaad":
            model_config(model, None, **recipe.model)  # valid fields
    assert ("patchcore", "smoke") in mambaad.RECIPES  # the peers run beside it


def test_every_printed_table_has_a_tablespec():
    spec = mambaad.PAPER
    for table in PRINTED:
        assert table in spec.tables and (PAPER_DIR / f"{table}.csv").is_file()
    assert spec.tables["table1"].class_setting == "multi-class" and spec.tables["table1"].protocol == "ader"


@pytest.mark.parametrize("profile", ["smoke", "paper"])
@pytest.mark.parametrize("table", ["table2", "table3", "table4"])
def test_every_printed_ablation_row_has_a_variant_or_a_reason(profile, table):
    grids = mambaad.PAPER.profile(profile).grids
    variants, not_run = grids[table], grids.get(f"{table}_not_run", {})
    rows = set(printed(table).setting)
    assert rows <= set(variants) | set(not_run), rows - set(variants) - set(not_run)
    assert not set(variants) & set(not_run)
    for label, overrides in variants.items():
        model_config("mambaad", None, **overrides)  # every variant is a valid configuration
    assert grids["defaults"][table] in variants


def test_table2_costs_cover_every_row():
    cost = mambaad.PAPER.profile("smoke").grids["table2_cost"]
    assert set(cost) == set(printed("table2").setting)
    assert all(not o["pretrained"] and o["image_size"] == 256 for o in cost.values())


def test_table4_variants_set_what_their_labels_say():
    grid = mambaad.PAPER.profile("smoke").grids["table4"]
    one = grid["hss=1,skip=no,local=dw,k=3+5+7"]
    assert one == {"hss_per_lss": 1, "residual": False, "local_conv": "dw", "kernel_sizes": (3, 5, 7)}
    assert grid[mambaad.DEFAULT_SETTINGS["table4"]] == {"hss_per_lss": None, "residual": True,
                                                        "local_conv": "dw+1x1", "kernel_sizes": (5, 7)}


def test_every_claim_side_selects_printed_rows():
    for claim in mambaad.PAPER.claims:
        if claim.table not in PRINTED:
            assert claim.table in mambaad.PAPER.tables  # measured only (the complexity fit)
            continue
        df = printed(claim.table)
        for side in (claim.favoured, *claim.against):
            mask = pd.Series(True, index=df.index)
            for key, wanted in side.where.items():
                mask &= df[key] == wanted
            mask &= (df.metric == claim.metric) & (df.level == claim.level)
            if side.where.get("method") == "PatchCore":
                assert not mask.any()  # adlib's peer, not in the paper
                continue
            assert mask.any(), (claim.id, side.label)


def test_the_papers_own_numbers_support_its_claims():
    t1 = printed("table1")
    mad = t1[(t1.dataset == "MVTec AD") & (t1.metric == "mad")].set_index("method").value
    assert mad.idxmax() == "MambaAD"
    t3 = printed("table3")
    image = t3[(t3.level == "image") & (t3.metric == "auroc")].set_index("setting").value
    assert image.idxmax() == "scan=hilbert,dirs=8"


def test_fit_exponent_recovers_a_power_law():
    tokens = [100, 400, 1600, 6400]
    assert cost.fit_exponent(tokens, [3e-4 * t for t in tokens]) == pytest.approx(1.0)
    assert cost.fit_exponent(tokens, [2e-7 * t ** 2 for t in tokens]) == pytest.approx(2.0)


def test_decoder_timing_rows_feed_the_complexity_claim():
    """Small sizes and a small decoder (the real measurement is 00_method's): rows per seed and size, one
    exponent per method and seed, and the claims machinery reads them (a verdict, not 'not run')."""
    import torch

    from adlib.study import claims

    threads = torch.get_num_threads()
    table = cost.decoder_timing("mambaad", (64, 96), seeds=(0, 1), method="MambaAD", backbone="resnet18",
                                pretrained=False, depths=(1, 1, 1, 1), hss_per_lss=1)
    assert torch.get_num_threads() == threads  # the single-thread timing restores the setting
    exps = table[table.metric == "exponent"]
    assert sorted(exps.method) == ["MambaAD", "MambaAD", "attention", "attention"]
    assert set(table[table.metric == "seconds"].setting) == {"size=64", "size=96"}
    tokens = table[(table.metric == "tokens") & (table.method == "MambaAD") & (table.seed == 0)].set_index("setting").value
    assert tokens["size=64"] == 2 * 2 + 4 * 4 + 8 * 8 + 16 * 16  # the four stages' maps at 64 px
    verdict = claims.evaluate(mambaad.PAPER.claim("linear_complexity"), table)
    assert verdict.iloc[0]["n_seeds"] == 2 and verdict.iloc[0]["verdict"] == "inconclusive"  # < 3 seeds


@pytest.mark.slow  # a ResNet34 forward at 256 px under the FLOP counter: about 3 s idle, a minute on a loaded machine
def test_variant_cost_rows_count_the_paper_architecture():
    label = mambaad.DEFAULT_SETTINGS["table2"]
    rows = cost.variant_cost_rows("mambaad", {label: mambaad.PAPER.profile("paper").grids["table2_cost"][label]},
                                  PARTS, "MVTec AD", "MambaAD", forward="forward_features")
    value = rows.set_index("metric").value
    assert round(value["params_m"], 1) == 25.7 and round(value["flops_g"], 1) == 8.3  # Table 5 as printed
    assert set(rows.level) == {"model"} and set(rows.setting) == {label}
    parts = value["params_m_encoder"] + value["params_m_hfpn"] + value["params_m_decoder"]
    assert value["params_m"] == pytest.approx(parts + value["params_m_scan_index"]) and value["scan_gmacs"] > 0
