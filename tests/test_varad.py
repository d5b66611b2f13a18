"""VarAD: shapes on CNN and ViT tokenizers, the causal gap, inverse-scan averaging, adapters, config errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from toy_tokenizer import ToyTokenizer
from adlib.models.varad import ADAPTERS, ChannelStandardiser, HierarchyPredictor, ResidualWhitener, VarAD, VarADConfig


def toy_model(**overrides) -> VarAD:
    torch.manual_seed(0)
    config = VarADConfig(**{"image_size": (32, 48), "m": 1, "pretrained": False, **overrides})
    return VarAD(config, tokenizer=ToyTokenizer())


def test_shapes_toy_tokenizer_with_two_grids():
    model = toy_model()
    assert model.grids == [(8, 12), (4, 6)]
    assert model.predictors[0].gaps == {"row_tl": 12, "row_br": 12, "col_tr": 8, "col_bl": 8}  # M = m * span
    out = model.explain(torch.rand(2, 3, 32, 48))
    assert out["map"].shape == (2, 32, 48) and out["scores"].shape == (2,)
    assert [e.shape for e in out["errors"]] == [(2, 8, 12), (2, 4, 6)]
    assert [m.shape for m in out["error_maps"]] == [(2, 32, 48)] * 2
    assert set(out["predictions"][1]) == {"row_tl", "row_br", "col_tr", "col_bl"}
    assert out["predictions"][1]["col_bl"].shape == (2, 12, 4, 6)
    assert torch.all(out["map"] >= 0)


def test_shapes_cnn_backbone():
    backbones = pytest.importorskip("adlib.backbones")
    torch.manual_seed(0)
    model = VarAD(VarADConfig(backbone="efficientnet_lite0", pretrained=False, image_size=(64, 96), m=1))
    assert len(set(model.grids)) == len(model.grids) > 1, "a CNN tokenizer gives one grid per hierarchy"
    out = model.explain(torch.rand(1, 3, 64, 96))
    assert out["map"].shape == (1, 64, 96)
    for tokens, (h, w), c in zip(out["tokens"], model.grids, model.channels):
        assert tokens.shape == (1, c, h, w)
    del backbones


def test_shapes_vit_backbone_and_lora():
    pytest.importorskip("adlib.backbones")
    torch.manual_seed(0)
    config = VarADConfig(backbone="dinov2_vits14", layers=(4, 8, 12), pretrained=False, image_size=56, m=1,
                         adapter="lora+linear", lora_rank=2)
    model = VarAD(config)
    assert model.grids == [(4, 4)] * 3 and model.channels == [384] * 3
    assert not model.cacheable, "LoRA trains inside the backbone: its features cannot be cached"
    images = torch.rand(1, 3, 56, 56)
    loss = model.loss(model.extract(images))
    loss.backward()
    lora = [p for n, p in model.named_parameters() if "lora_b" in n]
    assert lora and all(p.grad is not None for p in lora)
    frozen = [p for n, p in model.tokenizer.named_parameters() if "lora" not in n]
    assert all(not p.requires_grad for p in frozen)
    assert model.explain(images)["map"].shape == (1, 56, 56)


def test_lora_on_cnn_is_a_clear_error():
    with pytest.raises(ValueError, match="LoRA"):
        toy_model(adapter="lora")


@pytest.mark.parametrize("shared", [True, False])
def test_causal_gap(shared):
    """Prediction l depends on v_1..v_{l-M} only: changing v_{l-M+1}.. never changes it, v_{l-M} does."""
    torch.manual_seed(0)
    gap, length, channels = 3, 16, 6
    config = VarADConfig(depth=2, share_predictor=shared)
    predictor = HierarchyPredictor(channels, {"row_tl": gap, "col_tr": gap + 1}, config).eval()
    seq = torch.randn(1, length, channels)
    base = predictor.predict("row_tl", seq)
    assert base.shape == seq.shape
    for l in range(1, length + 1):  # 1-based position of the predicted token
        changed = seq.clone()
        changed[:, max(l - gap, 0):] += torch.randn(1, length - max(l - gap, 0), channels)  # v_{l-M+1} .. v_L
        assert torch.allclose(predictor.predict("row_tl", changed)[:, l - 1], base[:, l - 1], atol=1e-6), l
        if l - gap >= 1:
            nearer = seq.clone()
            nearer[:, l - gap - 1] += torch.randn(channels)  # v_{l-M} itself
            assert not torch.allclose(predictor.predict("row_tl", nearer)[:, l - 1], base[:, l - 1], atol=1e-6), l


def test_causal_gap_through_the_model():
    """Within the model: changing a token right before a position (within M) does not change its prediction."""
    model = toy_model(directions=("row_tl",), m=1).eval()
    h, w = model.grids[0]
    feats = [f.clone() for f in model.extract(torch.rand(1, 3, 32, 48))]
    base = model.forward_tokens(feats)["predictions"][0]["row_tl"]
    r, c = 5, 7  # predicted cell; M = w tokens before it in row-major order are hidden from it
    changed = [f.clone() for f in feats]
    flat = changed[0].flatten(2)
    idx = r * w + c
    flat[:, :, idx - w + 1 : idx + 1] += torch.randn(flat.shape[1], w)
    changed[0] = flat.view_as(feats[0])
    again = model.forward_tokens(changed)["predictions"][0]["row_tl"]
    assert torch.allclose(again[..., r, c], base[..., r, c], atol=1e-5)
    assert not torch.allclose(again[..., r + 1, c], base[..., r + 1, c], atol=1e-5)


class _Echo(nn.Module):
    """Predictor stub: 'predicts' each sequence as itself, plus a per-direction offset."""

    def __init__(self, offsets: dict[str, float]) -> None:
        super().__init__()
        self.offsets = offsets

    def forward(self, seqs):
        return {name: seq + self.offsets[name] for name, seq in seqs.items()}


def test_inverse_scan_and_average_put_tokens_back():
    model = toy_model(adapter="none")
    offsets = {"row_tl": 1.0, "row_br": 2.0, "col_tr": 3.0, "col_bl": 6.0}
    model.predictors = nn.ModuleList(_Echo(offsets) for _ in model.grids)
    out = model.forward_tokens(model.extract(torch.rand(2, 3, 32, 48)))
    for tokens, predicted, per_dir in zip(out["tokens"], out["predicted"], out["predictions"]):
        for name, grid in per_dir.items():
            assert torch.allclose(grid, tokens + offsets[name])
        assert torch.allclose(predicted, tokens + 3.0)  # mean of the offsets
    c0, c1 = model.channels
    assert torch.allclose(out["errors"][0], torch.full_like(out["errors"][0], 9.0 * c0))
    assert torch.allclose(out["errors"][1], torch.full_like(out["errors"][1], 9.0 * c1))


def test_channel_mean_reduction_divides_each_hierarchy_by_its_width():
    model = toy_model(adapter="none", channel_reduction="mean")
    offsets = {"row_tl": 1.0, "row_br": 2.0, "col_tr": 3.0, "col_bl": 6.0}
    model.predictors = nn.ModuleList(_Echo(offsets) for _ in model.grids)
    out = model.forward_tokens(model.extract(torch.rand(2, 3, 32, 48)))
    assert model.channels[0] != model.channels[1]
    for errors in out["errors"]:  # the same 3.0 offset on every channel: 9 whatever the width
        assert torch.allclose(errors, torch.full_like(errors, 9.0))


def test_channel_standardiser_pools_the_training_tokens_and_freezes_outside_training():
    torch.manual_seed(0)
    std = ChannelStandardiser(3)
    batches = [torch.randn(2, 3, 4, 5) * torch.tensor([1.0, 5.0, 0.1]).view(1, 3, 1, 1) + 2.0 for _ in range(3)]
    assert torch.equal(std.eval()(batches[0]), batches[0]), "identity before any statistics"
    std.train()
    for x in batches:
        std(x)
    pooled = torch.cat(batches).transpose(0, 1).flatten(1).double()
    expected = (torch.cat(batches) - pooled.mean(1).float().view(1, 3, 1, 1)) / \
        (pooled.var(1, unbiased=False).float().view(1, 3, 1, 1) + std.eps).sqrt()
    with torch.no_grad():  # no gradient: statistics are used, not updated
        out = std(torch.cat(batches))
    assert std.count == pooled.shape[1]
    assert torch.allclose(out, expected, atol=1e-5)
    std.eval()
    with torch.enable_grad():
        std(torch.randn(1, 3, 4, 5) * 100)
    assert std.count == pooled.shape[1], "eval mode never updates the statistics"


def test_channel_token_norm_statistics_train_and_checkpoint():
    model = toy_model(token_norm="channel")
    feats = model.extract(torch.rand(2, 3, 32, 48))
    model.train()
    model.loss(feats).backward()
    assert all(s.count == 2 * h * w for s, (h, w) in zip(model.standardisers, model.grids))
    state = model.checkpoint_state()
    assert any(k.startswith("standardisers.") and k.endswith("total") for k in state)
    fresh = toy_model(token_norm="channel")
    fresh.load_checkpoint_state(state)
    model.eval()
    assert torch.allclose(fresh.eval().explain(torch.rand(1, 3, 32, 48) * 0 + 0.5)["map"],
                          model.explain(torch.rand(1, 3, 32, 48) * 0 + 0.5)["map"])


def test_whitener_weighs_directions_of_large_normal_residuals_less():
    torch.manual_seed(0)
    scale = torch.tensor([10.0, 1.0, 1.0]).view(1, 3, 1, 1)
    whitener = ResidualWhitener(3, shrinkage=0.0)
    unit = torch.eye(3).view(3, 3, 1, 1)  # three residuals, one per channel
    assert torch.allclose(whitener(unit)[:, 0, 0], torch.full((3,), 1 / 3))  # before calibration: |r|^2 / C
    for _ in range(32):
        whitener.update(torch.randn(8, 3, 5, 5) * scale + 2.0)
    whitener.finish()
    assert torch.allclose(whitener.mean, torch.full((3,), 2.0), atol=0.5)
    normal = whitener(torch.randn(64, 3, 5, 5) * scale + 2.0)
    assert abs(float(normal.mean()) - 1.0) < 0.1  # normal residuals score about 1 on average
    scores = whitener(unit + 2.0)[:, 0, 0]  # the same step along channel 0 (large normal spread) or 1, 2
    assert scores[0] * 50 < scores[1] and scores[0] * 50 < scores[2]
    shrunk = ResidualWhitener(3, shrinkage=1.0)
    shrunk.load_state_dict({**whitener.state_dict(), "whitening": torch.eye(3)})
    shrunk.finish()  # full shrinkage: one variance for every channel, the L2 norm up to a constant
    assert torch.allclose(shrunk.whitening, shrunk.whitening[0, 0] * torch.eye(3), atol=1e-6)


def test_mahalanobis_error_is_calibrated_on_the_training_images_and_changes_the_map():
    from adlib import engine

    images = [{"image": torch.rand(3, 32, 48)} for _ in range(3)]
    plain = toy_model()
    assert plain.calibration_split() is None
    fitted = toy_model(error="mahalanobis")
    assert fitted.calibration_split() == "train"
    config = engine.FitConfig(epochs=1, batch_size=2, progress=False, disk_cache=False)
    engine.fit(plain, images, config)
    engine.fit(fitted, images, config)  # no calibration set given: the engine does not choose one
    with pytest.raises(RuntimeError, match="calibration="):
        fitted.explain(torch.rand(1, 3, 32, 48))
    engine.calibrate(fitted, images, config)  # what run_one's calibration_plan hands to engine.fit
    assert all(int(w.count) == 3 * h * w_ for w, (h, w_) in zip(fitted.whiteners, fitted.grids))
    assert not any(torch.allclose(w.whitening, torch.eye(len(w.whitening))) for w in fitted.whiteners)
    test = torch.rand(2, 3, 32, 48)
    a, b = plain.explain(test), fitted.explain(test)
    assert all(torch.allclose(x, y) for x, y in zip(a["errors"], b["errors"]))  # same training, same Eq. 9 errors
    assert a["token_scores"] is a["errors"] and not torch.allclose(a["map"], b["map"])
    assert torch.allclose(fitted.partial_map(b, 1), b["map"][1], atol=1e-5)
    fresh = toy_model(error="mahalanobis")
    fresh.load_checkpoint_state(fitted.checkpoint_state())  # the statistics travel in checkpoints
    assert torch.allclose(fresh.eval().explain(test)["map"], b["map"], atol=1e-5)


def test_patchcore_tokens_are_the_features_patchcore_scores():
    from adlib.models.patchcore import PatchCore, PatchCoreConfig

    taps = toy_model()
    model = toy_model(tokens="patchcore")
    assert model.grids == taps.grids[:1] and model.channels == [sum(taps.channels)]  # one hierarchy, finest grid
    feats = model.extract(torch.rand(2, 3, 32, 48))
    patchcore = PatchCore(PatchCoreConfig(pretrained=False, image_size=(32, 48), embed_dim=None))
    (ours,) = model.hierarchies(feats)
    assert torch.allclose(ours, patchcore.embed(feats))
    assert model.explain(torch.rand(1, 3, 32, 48))["map"].shape == (1, 32, 48)


def test_direction_subset_and_bos_choices():
    model = toy_model(directions=("col_bl",), bos="broadcast", share_predictor=False, depth=2)
    assert set(model.predictors[0].gaps) == {"col_bl"}
    assert model.predictors[0].bos["col_bl"].shape == (1, 8)
    assert toy_model().predictors[0].bos["col_tr"].shape == (8, 8)  # M x C
    out = model.explain(torch.rand(1, 3, 32, 48))
    assert out["map"].shape == (1, 32, 48)


@pytest.mark.parametrize("name", sorted(n for n, spec in ADAPTERS.items() if not spec.lora))
def test_adapters_start_at_identity(name):
    model = toy_model(adapter=name)
    feats = model.extract(torch.rand(1, 3, 32, 48))
    out = model.forward_tokens(feats)
    for f, hat in zip(out["tokens"], out["adapted"]):
        assert torch.allclose(f, hat)  # zero-initialised phi: F_hat = F at the start
    raw = toy_model(adapter=name, token_norm="none")
    assert all(torch.allclose(f, hat) for f, hat in zip(feats, raw.forward_tokens(feats)["adapted"]))


def test_target_choice_controls_gradient_into_the_target():
    feats = toy_model().extract(torch.rand(1, 3, 32, 48))
    for target, grad_through_target in [("detached", False), ("adapted", True)]:
        model = toy_model(target=target, adapter_init="default")
        out = model.forward_tokens(feats)
        assert out["targets"][0].requires_grad is grad_through_target


@pytest.mark.parametrize("overrides, parameter", [
    ({"adapter": "mlp"}, "adapter"), ({"m": 9}, "m="), ({"directions": ("diag",)}, "directions"),
    ({"score_rule": "median"}, "score rule"), ({"target": "x"}, "target"), ({"m": 0}, "m="),
    ({"error": "l1"}, "error"), ({"tokens": "fused"}, "tokens"), ({"error_shrinkage": 1.5}, "error_shrinkage"),
])
def test_bad_config_names_the_parameter(overrides, parameter):
    with pytest.raises(ValueError, match=parameter):
        toy_model(**overrides)


def test_wrong_input_size_is_a_clear_error():
    with pytest.raises(ValueError, match="image_size"):
        toy_model().predict(torch.rand(1, 3, 32, 32))


@pytest.mark.slow
def test_bottle_smoke_target(tmp_path):
    """The issue's target: smoke VarAD on real MVTec AD bottle reaches 0.95 image and pixel AUROC."""
    data = os.environ.get("ADLIB_DATA")
    if not data or not (Path(data) / "mvtec_ad" / "bottle").is_dir():
        pytest.skip("needs ADLIB_DATA with mvtec_ad/bottle")
    from adlib.app.cli import main

    out = tmp_path / "varad.json"
    rc = main(["run", "varad", "--data-root", str(Path(data) / "mvtec_ad"), "--category", "bottle",
               "--profile", "smoke", "--json", str(out), "--no-progress"])
    assert rc == 0
    record = json.loads(out.read_text())
    assert record["image"]["auroc"] >= 0.95 and record["pixel"]["auroc"] >= 0.95, record


def test_the_cost_of_a_whitened_varad_is_measured_on_random_weights():
    """study.speed calibrates a model scored with normal images' statistics on random images before timing it
    (an uncalibrated whitened VarAD refuses to score)."""
    from adlib import papers, study

    setting = study.resolve_setting(papers.get("varad"), "smoke", image_size=128)
    cost = study.speed(setting, "varad", images=1, m=1, d_state=4, error="mahalanobis")
    assert cost["params_m"] > 0 and cost["flops_g"] > 0 and cost["fps"] > 0
