"""PatchCore: greedy coreset picks the farthest points, kNN distances are right, it fits on the same engine."""
from __future__ import annotations

import pytest
import torch

from adlib import engine
from adlib.models.patchcore import PatchCore, PatchCoreConfig, greedy_coreset, nearest_distances
from toy_tokenizer import ToyTokenizer


def test_coreset_picks_the_far_points():
    g = torch.Generator().manual_seed(0)
    cluster = torch.rand(20, 2, generator=g) * 0.1
    far = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    points = torch.cat([cluster, far])
    for seed in range(5):  # whatever the random start, the far points are chosen within 4 picks
        picked = set(greedy_coreset(points, 4, projection_dim=None, seed=seed).tolist())
        assert {20, 21, 22} <= picked


def test_coreset_order_is_farthest_first():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [2.5, 0.0]])
    picked = greedy_coreset(points, 4, projection_dim=None, seed=0).tolist()
    expected = [picked[0]]
    while len(expected) < 4:  # brute force greedy k-center from the same start
        d = torch.cdist(points, points[expected]).min(dim=1).values
        expected.append(int(d.argmax()))
    assert picked == expected
    assert len(set(picked)) == 4


def test_coreset_with_projection_keeps_extremes():
    g = torch.Generator().manual_seed(1)
    points = torch.randn(200, 64, generator=g) * 0.01
    points[7] += 5.0
    assert 7 in greedy_coreset(points, 2, projection_dim=16, seed=3).tolist()


def test_nearest_distances_match_brute_force():
    g = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(50, 8, generator=g), torch.randn(30, 8, generator=g)
    dist, idx = nearest_distances(queries, bank, k=3, chunk_size=7)
    full = torch.cdist(queries, bank)
    assert torch.allclose(dist[:, 0], full.min(dim=1).values, atol=1e-5)
    assert torch.equal(idx[:, 0], full.argmin(dim=1))
    assert torch.allclose(dist, full.sort(dim=1).values[:, :3], atol=1e-5)
    q = torch.tensor([[3.0, 4.0]])
    d, i = nearest_distances(q, torch.tensor([[0.0, 0.0], [3.0, 0.0]]))
    assert float(d) == pytest.approx(4.0) and int(i) == 1


class Squares(torch.utils.data.Dataset):
    def __init__(self, n: int, test: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, 4, 4, generator=g).repeat_interleave(8, -1).repeat_interleave(8, -2) * 0.2 + 0.4
        self.masks = torch.zeros(n, 1, 32, 32)
        if test:
            self.images[1::2, :, 16:24, 8:16] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
            self.masks[1::2, :, 16:24, 8:16] = 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "mask": self.masks[i], "label": int(self.masks[i].any()), "path": str(i)}


@pytest.mark.parametrize("reweight", [False, True])
def test_patchcore_on_the_engine(reweight, tmp_path):
    model = PatchCore(PatchCoreConfig(image_size=32, coreset_ratio=0.25, reweight=reweight, pretrained=False),
                      tokenizer=ToyTokenizer())
    result = engine.fit(model, Squares(8), engine.FitConfig(batch_size=4, progress=False))
    assert result.epochs == 1 and not result.losses
    assert model.memory_bank.shape == (round(0.25 * 8 * 8 * 8), 20)  # 8 images x (8 x 8) patches x (8 + 12) channels
    maps, scores = model.predict(Squares(4, test=True).images)
    assert maps.shape == (4, 32, 32) and scores.shape == (4,)
    assert scores[1] > scores[0] and scores[3] > scores[2]
    evaluated = engine.evaluate(model, Squares(4, test=True), batch_size=2, progress=False)
    assert evaluated.image["auroc"] == 1.0 and evaluated.pixel["auroc"] > 0.9
    # the memory bank travels with the checkpoint
    path = engine.save_checkpoint(model, tmp_path / "pc.pt", epoch=1)
    fresh = PatchCore(model.config, tokenizer=ToyTokenizer())
    engine.load_checkpoint(path, model=fresh)
    assert torch.equal(fresh.memory_bank, model.memory_bank)
    assert torch.equal(fresh.predict(Squares(2, test=True).images).maps, model.predict(Squares(2, test=True).images).maps)


def test_patchcore_scores_are_nearest_neighbour_distances():
    model = PatchCore(PatchCoreConfig(image_size=32, coreset_ratio=1.0, smoothing_sigma=0), tokenizer=ToyTokenizer())
    engine.fit(model, Squares(2), engine.FitConfig(batch_size=2, progress=False))
    images = Squares(2).images
    scores, _ = model.patch_scores(images)
    assert scores.max() < 5e-3  # training patches are in the bank (cdist via matmul: ~1e-3 rounding)
    assert model.predict(images).scores.max() < 5e-3


def test_unfitted_and_bad_config():
    model = PatchCore(PatchCoreConfig(image_size=32), tokenizer=ToyTokenizer())
    with pytest.raises(RuntimeError, match="fit"):
        model.predict(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="coreset_ratio"):
        PatchCore(PatchCoreConfig(coreset_ratio=0), tokenizer=ToyTokenizer())


def _coreset_cases():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(30, 48, generator=g) * 3
    clustered = centres.repeat_interleave(60, 0) + 0.5 * torch.randn(1800, 48, generator=g)
    manifold = torch.randn(1800, 3, generator=g) @ torch.randn(3, 48, generator=g)  # low intrinsic dimension
    gaussian = torch.randn(1200, 48, generator=g)  # little to prune: mostly full passes
    # exact ties everywhere; 2003 rows: the BLAS kernel's leftover rows exist in the full product
    duplicates = torch.randn(100, 48, generator=g).repeat(20, 1)
    duplicates = torch.cat([duplicates, duplicates[:3]])
    positive = torch.rand(1800, 160, generator=g).pow(3) * 4  # non-negative and skewed, like ReLU6 features
    return {"clustered": clustered, "manifold": manifold, "gaussian": gaussian, "duplicates": duplicates,
            "positive": positive}


@pytest.mark.parametrize("name, threads", [(name, 1) for name in sorted(_coreset_cases())]
                         + [("duplicates", 2), ("clustered", 2)])  # the kernel splits rows over threads
def test_fast_coreset_picks_exactly_the_reference(name, threads):
    """The pruned greedy selection returns the reference's indices, in order, for projected and raw
    features, with the full-pass branch always, never (but for the kernel's leftover rows), or by default."""
    from adlib.models.patchcore import greedy_coreset_reference

    features = _coreset_cases()[name]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for projection_dim, count, seed in ((32, 80, 0), (None, 60, 3)):
            expected = greedy_coreset_reference(features, count, projection_dim, seed)
            for fraction in (0.0, 0.25, 1.0):
                picked = greedy_coreset(features, count, projection_dim, seed, full_pass_fraction=fraction)
                assert torch.equal(picked, expected), (name, projection_dim, seed, fraction)
    finally:
        torch.set_num_threads(old)


def test_fast_coreset_on_backbone_patches():
    """Locally aware patches of the smoke backbone (random weights here: no weights file in tests)."""
    from adlib.models.patchcore import greedy_coreset_reference

    model = PatchCore(PatchCoreConfig(image_size=64, pretrained=False))
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = model.embed(model.extract(images))
    patches = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])  # 6 x 8 x 8 patches x 152 channels
    expected = greedy_coreset_reference(patches, 60, 128, 0)
    assert torch.equal(greedy_coreset(patches, 60, 128, 0, full_pass_fraction=1.0), expected)
    assert torch.equal(greedy_coreset(patches, 60, 128, 0), expected)


def test_memory_bank_is_a_buffer_that_takes_a_checkpoints_length():
    model = PatchCore(PatchCoreConfig(image_size=32, coreset_ratio=0.25), tokenizer=ToyTokenizer())
    assert model.memory_bank.shape == (0, 20) and not model.fitted
    bank = torch.randn(7, 20)
    model.load_state_dict({**model.state_dict(), "memory_bank": bank})
    assert model.fitted and torch.equal(model.memory_bank, bank)
    assert "memory_bank" in model.checkpoint_state()


def test_border_mean_counts_the_padding_and_the_map_upsampling_switch():
    """Both reference codes divide a border patch's 3 x 3 sum by 9 (zero padding); anomalib upsamples the
    patch scores by nearest neighbour (map_upsample='nearest'), the paper and its authors bilinearly."""
    features = [torch.ones(1, 2, 4, 4)]
    model = PatchCore(PatchCoreConfig(image_size=32), tokenizer=ToyTokenizer())
    assert model.embed(features)[0, 0, 0, 0] == pytest.approx(4 / 9) and model.embed(features)[0, 0, 1, 1] == 1
    model.config.pool_include_pad = False
    assert model.embed(features)[0, 0, 0, 0] == 1
    scores = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    nearest = PatchCore(PatchCoreConfig(image_size=4, smoothing_sigma=0, map_upsample="nearest"),
                        tokenizer=ToyTokenizer()).anomaly_map(scores)
    assert torch.equal(nearest[0], scores[0].repeat_interleave(2, 0).repeat_interleave(2, 1))
    bilinear = PatchCore(PatchCoreConfig(image_size=4, smoothing_sigma=0), tokenizer=ToyTokenizer()).anomaly_map(scores)
    assert bilinear[0, 0, 1] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="map_upsample"):
        PatchCore(PatchCoreConfig(map_upsample="cubic"), tokenizer=ToyTokenizer())
