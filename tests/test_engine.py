"""The engine: training reduces the loss, features are cached once, checkpoints round-trip, seeds repeat."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from adlib import engine
from toy_tokenizer import ToyTokenizer
from adlib.models.varad import VarAD, VarADConfig


class Blobs(Dataset):
    """Smooth random textures; test items get a bright square (label 1) on every other image."""

    def __init__(self, n: int, test: bool = False, size: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        base = torch.rand(n, 3, size // 8, size // 8, generator=g)
        self.images = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear") * 0.4 + 0.3
        self.masks = torch.zeros(n, 1, size, size)
        if test:
            self.images[::2, :, 8:16, 8:16] = 1.0
            self.masks[::2, :, 8:16, 8:16] = 1.0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "mask": self.masks[i], "label": int(self.masks[i].any()), "path": f"img{i}"}


class CountingTokenizer(ToyTokenizer):
    calls = 0

    def forward(self, images):
        type(self).calls += 1
        return super().forward(images)


def make_model(seed: int = 0, **overrides) -> VarAD:
    torch.manual_seed(seed)
    config = VarADConfig(**{"image_size": 32, "m": 1, "pretrained": False, "d_state": 4, **overrides})
    return VarAD(config, tokenizer=CountingTokenizer())


def quick(**overrides) -> engine.FitConfig:
    return engine.FitConfig(**{"epochs": 3, "batch_size": 4, "progress": False, "lr": 3e-3, **overrides})


def test_training_reduces_the_loss():
    result = engine.fit(make_model(), Blobs(8), quick(epochs=6))
    assert result.epochs == 6 and len(result.losses) == 6
    assert result.losses[-1] < 0.7 * result.losses[0]
    assert result.train_seconds > 0 and result.cached


@pytest.mark.parametrize("cache, budget, expected_calls", [(True, 4096.0, 8), (False, 4096.0, 24), (True, 0.0, 24)])
def test_frozen_features_are_computed_once(cache, budget, expected_calls):
    model = make_model()
    CountingTokenizer.calls = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = engine.fit(model, Blobs(8), quick(cache_features=cache, cache_budget_mb=budget))
    # Frozen features are extracted one image at a time (engine.extract_frozen): 8 calls per pass over the 8
    # images; cached = one pass, else one per epoch (3). An over-budget cache stops after its first batch of 4
    # and falls back: 4 + 24 calls.
    if budget == 0.0:
        expected_calls = 4 + 24
        assert any("cache_budget_mb" in str(w.message) for w in caught)
    assert CountingTokenizer.calls == expected_calls
    assert result.cached is (cache and budget > 0)


def test_cached_and_uncached_training_agree():
    a, b = make_model(), make_model()
    ra = engine.fit(a, Blobs(8), quick(cache_features=True))
    rb = engine.fit(b, Blobs(8), quick(cache_features=False))
    assert ra.losses == rb.losses  # the same bits: features are extracted image by image on both paths


def test_checkpoint_round_trip(tmp_path):
    model = make_model()
    engine.fit(model, Blobs(8), quick(checkpoint=str(tmp_path / "ckpt.pt")))
    images = Blobs(2, test=True).images
    expected = model.predict(images)
    other = make_model(seed=1)  # different initial weights
    assert not torch.allclose(other.predict(images).maps, expected.maps)
    loaded, epoch = engine.load_checkpoint(tmp_path / "ckpt.pt", model=other)
    assert epoch == 3
    got = loaded.predict(images)
    assert torch.allclose(got.maps, expected.maps) and torch.allclose(got.scores, expected.scores)
    assert not list(tmp_path.glob("*.tmp")), "atomic write leaves no temporary file"


def test_checkpoint_for_another_model_is_refused(tmp_path):
    path = engine.save_checkpoint(make_model(), tmp_path / "c.pt", epoch=1)
    from adlib.models.patchcore import PatchCore, PatchCoreConfig

    with pytest.raises(ValueError, match="varad"):
        engine.load_checkpoint(path, model=PatchCore(PatchCoreConfig(image_size=32), tokenizer=ToyTokenizer()))


def _run(seed: int) -> engine.EvalResult:
    model = make_model(seed=seed)
    engine.fit(model, Blobs(8), quick(seed=seed))
    return engine.evaluate(model, Blobs(6, test=True), batch_size=4, progress=False, keep_maps=1, map_size=16)


def test_same_seed_same_numbers_and_streamed_evaluation():
    first, second = _run(0), _run(0)
    assert first.image == second.image and first.pixel == second.pixel
    assert np.array_equal(first.scores, second.scores)
    assert set(first.pixel) >= {"auroc", "ap", "f1max", "aupro"} and set(first.image) >= {"auroc", "ap", "f1max"}
    assert first.scores.shape == (6,) and list(first.labels) == [1, 0, 1, 0, 1, 0]
    assert len(first.maps) == 2 and all(m.shape == (16, 16) for m in first.maps.values())  # one good, one bad
    assert first.fps > 0
    assert not np.array_equal(_run(1).scores, first.scores)


def test_max_train_images_and_bad_schedule():
    result = engine.fit(make_model(), Blobs(8), quick(epochs=1, max_train_images=4))
    assert result.train_images == 4
    with pytest.raises(ValueError, match="schedule"):
        engine.fit(make_model(), Blobs(4), quick(schedule="linear"))


def test_cosine_schedule_runs():
    result = engine.fit(make_model(), Blobs(4), quick(epochs=2, schedule="cosine"))
    assert len(result.losses) == 2


class _PartsModel(torch.nn.Module):
    """Score = a + b, where a is the mean and b the max of the image; predict_parts also returns a and b."""

    def predict_parts(self, images):
        a, b = images.mean(dim=(1, 2, 3)), images.amax(dim=(1, 2, 3))
        return (images[:, 0], a + b), {"a": a, "b": b}

    def predict(self, images):
        return self.predict_parts(images)[0]


def test_evaluate_keeps_a_models_score_parts_per_image_in_order():
    data = Blobs(6, seed=1)
    result = engine.evaluate(_PartsModel(), data, batch_size=4, progress=False, pixel=False)
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    assert result.parts["a"] == pytest.approx(images.mean(dim=(1, 2, 3)).numpy(), rel=1e-6)
    assert result.scores == pytest.approx(result.parts["a"] + result.parts["b"], rel=1e-6)
    plain = engine.evaluate(make_model(), data, batch_size=4, progress=False, pixel=False)
    assert plain.parts == {}  # models without predict_parts keep nothing
