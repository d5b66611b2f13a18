"""RD4AD: the mirrored structure, the loss, maps, and the engine (one-class, multi-class, both protocols)."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import ConcatDataset

from adlib import engine
from adlib.models import create_model
from adlib.models.rd4ad import RD4AD, RD4ADConfig
from toy_tokenizer import ToyTokenizer


class Blobs(torch.utils.data.Dataset):
    """Smooth random images; test items (odd indices) get a bright square with its mask."""

    def __init__(self, n: int, size: int = 32, test: bool = False, seed: int = 0, category: str = "toy") -> None:
        g = torch.Generator().manual_seed(seed)
        low = torch.rand(n, 3, 4, 4, generator=g) * 0.3 + 0.35
        self.images = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        self.masks = torch.zeros(n, 1, size, size)
        self.category = category
        if test:
            s = size // 4
            self.images[1::2, :, s : 2 * s, s : 2 * s] = torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1)
            self.masks[1::2, :, s : 2 * s, s : 2 * s] = 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "mask": self.masks[i], "label": int(self.masks[i].any()),
                "path": f"{self.category}/{i}", "category": self.category}


def toy_model(**overrides) -> RD4AD:
    torch.manual_seed(0)
    config = RD4ADConfig(**{"image_size": 32, "pretrained": False, "decoder_blocks": (1, 1), "ocbe_blocks": 1,
                            **overrides})
    return RD4AD(config, tokenizer=ToyTokenizer())


FIT = dict(epochs=3, batch_size=4, lr=5e-3, optimizer="adam", betas=(0.5, 0.999), weight_decay=0.0, progress=False)


def test_structure_mirrors_the_teacher_on_the_offline_backbone():
    model = RD4AD(RD4ADConfig(image_size=64, pretrained=False))
    assert model.channels == [24, 40, 112] and model.grids == [(16, 16), (8, 8), (4, 4)]  # strides 4, 8, 16
    images = torch.rand(2, 3, 64, 64)
    teacher = model.extract(images)
    embedding = model.ocbe(teacher)
    assert embedding.shape == (2, 224, 2, 2)  # 2 x the deepest width, one stride below it
    student = model.decoder(embedding)
    assert [s.shape for s in student] == [t.shape for t in teacher]
    assert [len(stage) for stage in model.decoder.stages] == [3, 4, 6]  # the official block counts
    out = model.explain(images)
    assert out["map"].shape == (2, 64, 64) and out["scores"].shape == (2,)
    assert [m.shape for m in out["level_maps"]] == [(2, 16, 16), (2, 8, 8), (2, 4, 4)]
    assert torch.allclose(out["scores"], out["map"].flatten(1).amax(1))


def test_paper_teacher_widths():
    """WideResNet-50 layer1-3 (256, 512, 1024): OCBE to 2048 at stride 32, bottleneck width 0.5 x out."""
    model = RD4AD(RD4ADConfig(backbone="wide_resnet50", pretrained=False, image_size=64))
    assert model.channels == [256, 512, 1024]
    first = model.ocbe.stage[0]
    assert (first.conv1.in_channels, first.conv1.out_channels, first.conv3.out_channels) == (3072, 1024, 2048)
    assert [stage[0].conv3.out_channels for stage in model.decoder.stages] == [1024, 512, 256]
    assert [stage[0].conv1.out_channels for stage in model.decoder.stages] == [512, 256, 128]


def test_loss_variants_and_map_are_one_minus_cosine():
    model = toy_model().eval()
    images = torch.rand(2, 3, 32, 32)
    teacher = model.extract(images)
    student = model.forward_features(teacher)
    flat = sum((1 - torch.nn.functional.cosine_similarity(t.flatten(1), s.flatten(1))).mean() for t, s in zip(teacher, student))
    assert torch.allclose(model.loss(teacher), flat)
    per_position = toy_model(loss="per_position").eval()
    per_position.load_state_dict(model.state_dict())
    manual = sum((1 - torch.nn.functional.cosine_similarity(t, s, dim=1)).mean() for t, s in zip(teacher, student))
    assert torch.allclose(per_position.loss(teacher), manual)
    assert not torch.allclose(per_position.loss(teacher), flat)
    # a student that equals the teacher gives a zero map
    model.forward_features = lambda feats: [f.clone() for f in feats]
    assert model.explain(images)["map"].abs().max() < 1e-5


def test_loss_goes_down_and_fits_are_deterministic():
    data = Blobs(8)
    maps = []
    for _ in range(2):
        model = toy_model()
        result = engine.fit(model, data, engine.FitConfig(**FIT))
        assert result.losses[-1] < result.losses[0]
        maps.append(model.predict(Blobs(4, test=True).images).maps)
    assert torch.equal(maps[0], maps[1])


def test_checkpoint_round_trip(tmp_path):
    model = toy_model()
    engine.fit(model, Blobs(8), engine.FitConfig(**{**FIT, "epochs": 1}))
    path = engine.save_checkpoint(model, tmp_path / "rd.pt", epoch=1)
    fresh = toy_model()
    fresh.ocbe.stage[0].conv1.weight.data.zero_()  # differs before loading
    engine.load_checkpoint(path, model=fresh)
    fresh.eval()  # BatchNorm: running statistics, as engine.evaluate sets
    images = Blobs(4, test=True).images
    assert torch.equal(fresh.predict(images).maps, model.predict(images).maps)


def test_one_class_and_multi_class_on_the_engine():
    model = toy_model()
    engine.fit(model, Blobs(8), engine.FitConfig(**FIT))
    for protocol in ("exact", "ader"):
        result = engine.evaluate(model, Blobs(6, test=True), batch_size=3, progress=False, protocol=protocol)
        assert 0 <= result.pixel["auroc"] <= 1 and result.protocol == protocol
    cats = {"a": 0, "b": 1}
    train = ConcatDataset([Blobs(6, seed=s, category=c) for c, s in cats.items()])
    tests = {c: Blobs(4, test=True, seed=10 + s, category=c) for c, s in cats.items()}
    multi = toy_model()
    engine.fit(multi, train, engine.FitConfig(**FIT))
    for protocol in ("exact", "ader"):
        result = engine.evaluate(multi, tests, batch_size=2, progress=False, protocol=protocol)
        assert set(result.categories) == {"a", "b"} and result.pooled is not None
        assert result.pixel["auroc"] == pytest.approx(sum(m.pixel["auroc"] for m in result.categories.values()) / 2)


def test_feature_key_enables_the_disk_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADLIB_CACHE", str(tmp_path))
    assert toy_model().feature_key() is None  # no weights identity: no disk cache
    config = dict(image_size=64, decoder_blocks=(1, 1, 1), ocbe_blocks=1)
    model = create_model("rd4ad", **config)  # the offline ImageNet teacher
    key = model.feature_key()
    assert key and "efficientnet_lite0" in key and "image_size=64" in key
    data = Blobs(4, size=64)
    fit = engine.FitConfig(**{**FIT, "epochs": 2})
    assert engine.fit(model, data, fit).disk_hits == 0
    again = create_model("rd4ad", **config)
    assert again.feature_key() == key
    assert engine.fit(again, data, fit).disk_hits == 4


def test_bad_configs_are_clear():
    with pytest.raises(ValueError, match="loss"):
        toy_model(loss="mse")
    with pytest.raises(ValueError, match="decoder_blocks"):
        toy_model(decoder_blocks=(1, 1, 1))
    with pytest.raises(ValueError, match="image_size"):
        RD4AD(RD4ADConfig(image_size=40, pretrained=False, decoder_blocks=(1, 1), ocbe_blocks=1),
              tokenizer=ToyTokenizer())
    with pytest.raises(ValueError, match="was built for"):
        toy_model().extract(torch.rand(1, 3, 64, 64))
