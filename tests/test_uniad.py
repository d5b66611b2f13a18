"""UniAD: the neck, the neighbour mask, feature jitter, maps and scores, and the engine (one-/multi-class)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset

from adlib import engine
from adlib.models import create_model
from adlib.models.uniad import UniAD, UniADConfig, window_mask
from test_rd4ad import Blobs
from toy_tokenizer import ToyTokenizer

SMALL = dict(hidden_dim=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=64)


def toy_model(**overrides) -> UniAD:
    torch.manual_seed(0)
    config = UniADConfig(**{"image_size": 64, "feature_stride": 8, "pretrained": False, **SMALL, **overrides})
    return UniAD(config, tokenizer=ToyTokenizer())


FIT = dict(epochs=3, batch_size=4, lr=1e-3, weight_decay=1e-4, grad_clip=0.1, progress=False)


def test_window_mask_matches_the_official_loop():
    h, w, (hm, wm) = 5, 6, (3, 5)
    expected = torch.zeros(h, w, h, w, dtype=torch.bool)  # UniAD's generate_mask: the window is masked
    for i in range(h):
        for j in range(w):
            expected[i, j, max(i - hm // 2, 0): min(i + hm // 2 + 1, h), max(j - wm // 2, 0): min(j + wm // 2 + 1, w)] = True
    assert torch.equal(window_mask(h, w, (hm, wm)), expected.view(h * w, h * w))


def test_shapes_on_the_offline_backbone_and_b4_widths():
    model = UniAD(UniADConfig(image_size=128, pretrained=False, **SMALL))
    assert model.channels == 16 + 24 + 40 + 112 and model.grid == (8, 8)  # Lite0 stages at strides 2-16
    images = torch.rand(2, 3, 128, 128)
    out = model.explain(images)
    assert out["features"].shape == out["reconstruction"].shape == (2, 192, 8, 8)
    assert out["error"].shape == (2, 8, 8) and out["map"].shape == (2, 128, 128)
    pooled = F.avg_pool2d(out["map"][:, None], 16, stride=1).flatten(1).amax(1)
    assert torch.allclose(out["scores"], pooled)
    b4 = UniAD(UniADConfig(backbone="efficientnet_b4", image_size=128, pretrained=False, **SMALL))
    assert b4.channels == 272  # UniAD's 24 + 32 + 56 + 160


def test_map_is_the_l2_reconstruction_error():
    model = toy_model().eval()
    images = torch.rand(2, 3, 64, 64)
    out = model.explain(images)
    assert torch.allclose(out["error"], (out["reconstruction"] - out["features"]).norm(dim=1), atol=1e-6)
    up = F.interpolate(out["error"][:, None], size=(64, 64), mode="bilinear", align_corners=True)[:, 0]
    assert torch.allclose(out["map"], up)


def test_token_norm_reconstructs_normalised_tokens():
    model = toy_model(token_norm="layernorm").eval()
    out = model.explain(torch.rand(2, 3, 64, 64) * 5)
    tokens = out["features"]
    assert torch.allclose(tokens.mean(dim=1), torch.zeros(2, 8, 8), atol=1e-5)
    assert torch.allclose(tokens.var(dim=1, unbiased=False), torch.ones(2, 8, 8), atol=1e-3)


def test_jitter_only_in_training():
    model = toy_model()
    tokens = torch.rand(2, 10, 16)
    model.train()
    assert not torch.equal(model.jitter(tokens), tokens)
    model.eval()
    assert torch.equal(model.jitter(tokens), tokens)
    model = toy_model(jitter_prob=0.0).train()
    assert torch.equal(model.jitter(tokens), tokens)


def test_masked_attention_ignores_the_neighbourhood():
    """Attention weights inside each query's 7 x 7 window are zero; the others sum to one."""
    model = toy_model().eval()
    layer = model.encoder[0]
    x = torch.randn(1, 64, 32)
    _, weights = layer.attn(x, x, x, attn_mask=model.mask, need_weights=True, average_attn_weights=True)
    assert float(weights[0][model.mask].abs().max()) == 0.0
    assert torch.allclose(weights.sum(-1), torch.ones(1, 64))


def test_loss_goes_down_and_fits_are_deterministic():
    data = Blobs(8, size=64)
    maps = []
    for _ in range(2):
        model = toy_model()
        result = engine.fit(model, data, engine.FitConfig(**FIT))
        assert result.losses[-1] < result.losses[0]
        maps.append(model.predict(Blobs(4, size=64, test=True).images).maps)
    assert torch.equal(maps[0], maps[1])


def test_checkpoint_round_trip(tmp_path):
    model = toy_model()
    engine.fit(model, Blobs(8, size=64), engine.FitConfig(**{**FIT, "epochs": 1}))
    path = engine.save_checkpoint(model, tmp_path / "uniad.pt", epoch=1)
    fresh = toy_model(jitter_scale=20.0)
    engine.load_checkpoint(path, model=fresh)
    fresh.eval()
    images = Blobs(4, size=64, test=True).images
    assert torch.equal(fresh.predict(images).maps, model.predict(images).maps)


def test_one_class_and_multi_class_on_the_engine():
    model = toy_model()
    engine.fit(model, Blobs(8, size=64), engine.FitConfig(**FIT))
    for protocol in ("exact", "ader"):
        result = engine.evaluate(model, Blobs(6, size=64, test=True), batch_size=3, progress=False, protocol=protocol)
        assert 0 <= result.pixel["auroc"] <= 1 and result.protocol == protocol
    cats = {"a": 0, "b": 1}
    train = ConcatDataset([Blobs(6, size=64, seed=s, category=c) for c, s in cats.items()])
    tests = {c: Blobs(4, size=64, test=True, seed=10 + s, category=c) for c, s in cats.items()}
    multi = toy_model()
    engine.fit(multi, train, engine.FitConfig(**FIT))
    for protocol in ("exact", "ader"):
        result = engine.evaluate(multi, tests, batch_size=2, progress=False, protocol=protocol)
        assert set(result.categories) == {"a", "b"} and result.pooled is not None
        assert result.image["auroc"] == pytest.approx(sum(m.image["auroc"] for m in result.categories.values()) / 2)


def test_feature_key_enables_the_disk_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADLIB_CACHE", str(tmp_path))
    assert toy_model().feature_key() is None  # no weights identity: no disk cache
    config = dict(image_size=128, **SMALL)
    model = create_model("uniad", **config)  # the offline ImageNet EfficientNet-Lite0
    key = model.feature_key()
    assert key and "efficientnet_lite0" in key and "image_size=128" in key and "fused_stride=16" in key
    data = Blobs(4, size=128)
    fit = engine.FitConfig(**{**FIT, "epochs": 2})
    assert engine.fit(model, data, fit).disk_hits == 0
    again = create_model("uniad", **config)
    assert engine.fit(again, data, fit).disk_hits == 4
    cached = engine.extract_all(again, data, fit, torch.device("cpu"))[0]
    assert cached.shape == (4, 192, 8, 8)  # the fused neck output is what is cached


def test_bad_configs_are_clear():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        toy_model(hidden_dim=30)
    with pytest.raises(ValueError, match="feature_stride"):
        toy_model(image_size=60)
    with pytest.raises(ValueError, match="neighbor_size"):
        toy_model(image_size=32)  # a 4 x 4 grid: a 7 x 7 window hides every position
    with pytest.raises(ValueError, match="pos_embed"):
        toy_model(pos_embed="rope")
    with pytest.raises(ValueError, match="was built for"):
        toy_model().extract(torch.rand(1, 3, 32, 32))
