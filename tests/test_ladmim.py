"""LADMIM (adlib.models.ladmim): shapes, both training stages, frozen HVQ in stage 2, determinism, checkpoints,
the histogram target, masks, and the standardisation statistics from the validation split."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from adlib import engine
from adlib.models import create_model, ladmim
from adlib.models.hvq import to_grid
from toy_tokenizer import ToyTokenizer

SIZE, GRID = 48, 6


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids the cost of thread hand-offs on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ToyGrid(nn.Module):
    """The toy tokenizer's two maps on a GRID x GRID grid (random frozen weights: saved with the model)."""

    def __init__(self) -> None:
        super().__init__()
        self.toy = ToyTokenizer()
        self.weights_id = None

    def forward(self, images):
        return torch.cat([to_grid(f, (GRID, GRID)) for f in self.toy(images)], dim=1)


SMALL = dict(image_size=SIZE, grid=GRID, codebook_size=8, code_dim=8, hvq_dim=16, hvq_dec_dim=16, hvq_ffn=32,
             hvq_heads=2, hvq_dropout=0.0, mim_dim=16, mim_heads=2, mim_attn_dropout=0.0, num_test_masks=3,
             mask_ratio=0.3)


def make(**kw) -> ladmim.LADMIM:
    torch.manual_seed(0)
    return ladmim.LADMIM(ladmim.LADMIMConfig(**{**SMALL, **kw}), tokenizer=ToyGrid())


class Scenes(torch.utils.data.Dataset):
    """Images with one bright square at a random place (normal) or two of them (a 'logical' anomaly)."""

    def __init__(self, n: int, seed: int, anomalous: int = 0) -> None:
        self.items = []
        g = torch.Generator().manual_seed(seed)
        for i in range(n):
            image = torch.full((3, SIZE, SIZE), 0.2) + 0.02 * torch.rand(3, SIZE, SIZE, generator=g)
            squares = 2 if i < anomalous else 1
            for _ in range(squares):
                y, x = torch.randint(0, SIZE - 12, (2,), generator=g).tolist()
                image[:, y:y + 12, x:x + 12] = torch.tensor([0.9, 0.5, 0.1])[:, None, None]
            label = int(i < anomalous)
            self.items.append({"image": image, "mask": torch.full((1, SIZE, SIZE), float(label)), "label": label,
                               "group": "logical" if label else "good", "category": "toy", "path": f"{i}.png",
                               "defect": "logical" if label else "good"})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


FIT = engine.FitConfig(batch_size=4, progress=False, seed=0, stages={"tokenizer": {"epochs": 3, "lr": 3e-3},
                                                                     "mim": {"epochs": 3, "lr": 3e-3}})


def test_registered_and_shapes():
    assert "ladmim" in __import__("adlib.models", fromlist=["MODELS"]).MODELS
    model = make()
    assert model.training_stages() == ("tokenizer", "mim")
    images = Scenes(2, 0)[0]["image"][None].repeat(2, 1, 1, 1)
    assert not model.calibrated
    with pytest.raises(RuntimeError, match="calibration"):
        model.predict(images)
    model.config.scorer = "hvq"
    out = model.explain(images)
    assert out["map"].shape == (2, SIZE, SIZE) and out["scores"].shape == (2,)
    assert out["codes"].shape == (2, 4, GRID, GRID) and int(out["codes"].max()) < 8
    assert out["error_map"].shape == (2, GRID, GRID) and out["mask"].shape == (GRID, GRID)
    assert out["predicted"].shape == out["target"].shape == (2, 4, 8)
    assert out["predicted"].dtype == torch.float64  # as the released code's scoring
    assert torch.allclose(out["predicted"].sum(-1), torch.ones(2, 4, dtype=torch.float64))
    assert torch.allclose(out["target"].sum(-1), torch.ones(2, 4, dtype=torch.float64))
    assert torch.allclose(out["scores"], out["s_hvq"])
    assert torch.allclose(out["s_hvq"], out["error_map"].flatten(1).mean(1))  # S_HVQ = mean error (paper)


def test_hvq_score_rules():
    error = torch.tensor([[1.0, 2.0, 3.0, 10.0], [0.0, 0.0, 0.0, 4.0]])
    out = {"error": error, "distance": torch.tensor([[3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 0.0, 1.0]])}
    assert torch.allclose(ladmim.HVQ_SCORES["mean"](out, 0.5), torch.tensor([4.0, 1.0]))
    assert torch.allclose(ladmim.HVQ_SCORES["max"](out, 0.5), torch.tensor([10.0, 4.0]))
    assert torch.allclose(ladmim.HVQ_SCORES["topk"](out, 0.5), torch.tensor([6.5, 2.0]))
    # the release's max_score: x16 bilinear (corners aligned) to 32 x 32, the best 16 x 16 box mean: a constant
    # stays; one corner token of 1 ramps as (i/31)(j/31), whose bottom-right box mean is (23.5/31)^2
    assert torch.allclose(ladmim.HVQ_SCORES["release"](out, 0.5), torch.tensor([3.0, (23.5 / 31) ** 2]))
    assert make(standardise_on="test").calibration_split() == "test"


def test_histogram_target_on_a_hand_made_example():
    codes = torch.tensor([[0, 1, 1, 2, 3, 3], [2, 2, 2, 2, 0, 1]])
    mask = torch.tensor([[1, 1, 1, 0, 0, 1], [0, 0, 1, 1, 0, 0]], dtype=torch.bool)
    q = ladmim.histogram(codes, mask, 4)
    assert torch.allclose(q, torch.tensor([[0.25, 0.5, 0.0, 0.25], [0.0, 0.0, 1.0, 0.0]]))


def test_histogram_loss_is_eq12():
    model = make()
    model.start_stage("mim")
    tokens = model.tokens_of(model.extract(Scenes(2, 1)[0]["image"][None].repeat(2, 1, 1, 1)))
    masks = torch.zeros(2, GRID * GRID, dtype=torch.bool)
    masks[:, :7] = True
    p_out, _ = model.mim(tokens, masks)
    predicted = model.head(p_out).view(2, 4, 8).softmax(-1)
    codes = model.hvq.codes(tokens)
    target = torch.stack([ladmim.histogram(codes[:, l], masks, 8) for l in range(4)], dim=1)
    expected = (predicted - target).abs().sum(dim=(1, 2))
    assert torch.allclose(model.mim_errors(tokens, masks, {}).float(), expected)


def test_masks():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        m = ladmim.block_mask(24, 24, 115, 38, g)
        assert 38 <= int(m.sum()) <= 115
    assert int(ladmim.random_mask(24, 24, 115, g).sum()) == 115
    # the release's sampler fills up with single tokens: exactly r N (here blocks alone stop short)
    short = [int(ladmim.block_mask(8, 8, 50, 30, torch.Generator().manual_seed(i)).sum()) for i in range(10)]
    exact = [int(ladmim.block_mask(8, 8, 50, 30, torch.Generator().manual_seed(i), exact=True).sum())
             for i in range(10)]
    assert min(short) < 50 and exact == [50] * 10
    board = ladmim.checkerboard_mask(24, 24, 3, g)
    assert int(board.sum()) == 288 and not torch.equal(board[:3, :3], board[:3, 3:6])
    model = make(mask="block", num_test_masks=5)
    masks = model.test_masks()
    assert masks.shape == (5, GRID * GRID) and torch.equal(masks, make(mask="block", num_test_masks=5).test_masks())


def test_both_stages_reduce_their_losses_and_hvq_is_frozen_in_stage_2():
    model = make()
    snapshot = {}

    def callback(epoch, m):
        if epoch == fit.stages["tokenizer"]["epochs"]:
            snapshot.update({k: v.detach().clone() for k, v in m.hvq.state_dict().items()})
            snapshot["mim"] = m.mim.embed.weight.detach().clone()
        return {"usage": m.codebook_usage(reset=True)}

    fit = engine.FitConfig(batch_size=4, progress=False, seed=0, stages={"tokenizer": {"epochs": 5, "lr": 3e-3},
                                                                         "mim": {"epochs": 5, "lr": 3e-3}})
    result = engine.fit(model, Scenes(8, 2), fit, callback=callback)
    for stage in ("tokenizer", "mim"):
        losses = result.stage_losses[stage]
        assert losses[-1] < 0.8 * losses[0], (stage, losses)
    after = model.hvq.state_dict()
    assert all(torch.equal(after[k], v) for k, v in snapshot.items() if k != "mim"), "HVQ-Trans changed in stage 2"
    assert not torch.equal(model.mim.embed.weight, snapshot["mim"])
    assert not any(p.requires_grad for p in model.hvq.parameters())
    usage = result.history[0]["usage"]
    assert len(usage) == 4 and all(0 < u["used"] <= 1 for u in usage)
    assert result.history[-1]["usage"][0]["used"] == 0.0  # no codebook use counted while HVQ is frozen


def test_standardisation_statistics_come_from_the_calibration_split():
    model = make()
    validation = Scenes(6, 3)
    engine.fit(model, Scenes(8, 2), FIT, calibration=validation)
    assert model.calibrated
    batch = torch.stack([validation[i]["image"] for i in range(6)])
    parts = model.score_parts(model.extract(batch))
    assert model.hvq_mean.item() == pytest.approx(parts["s_hvq"].mean().item(), rel=1e-5)
    # population std, as the released code's np.std
    assert model.mim_std.item() == pytest.approx(parts["s_mim"].std(correction=0).item(), rel=1e-4)
    scores = model.predict(batch).scores
    z = (parts["s_hvq"] - parts["s_hvq"].mean()) / parts["s_hvq"].std(correction=0) + \
        (parts["s_mim"] - parts["s_mim"].mean()) / parts["s_mim"].std(correction=0)
    assert torch.allclose(scores, z.float(), atol=1e-4)
    assert abs(float(scores.mean())) < 1e-4  # standardised on these very images
    stats = ladmim.standardisation(torch.tensor([2.0]), torch.tensor([1.0, 1.0]))
    assert stats["hvq_std"] == 1.0 and stats["mim_std"] == 1.0  # degenerate spreads fall back to 1


def test_a_saved_tokenizer_skips_stage_one_and_gives_the_same_codes(tmp_path):
    """MIM ablations reuse one HVQ-Trans per seed: loaded, frozen, the tokenizer stage skipped."""
    full = make()
    engine.fit(full, Scenes(8, 2), FIT)
    path = tmp_path / "hvq.pt"
    full.save_tokenizer(path)
    variant = make(hvq_checkpoint=str(path), target="code")
    assert variant.training_stages() == ("mim",)
    before = {k: v.clone() for k, v in variant.hvq.state_dict().items()}
    result = engine.fit(variant, Scenes(8, 2), FIT)
    assert set(result.stage_losses) == {"mim"}
    assert all(torch.equal(before[k], v) for k, v in variant.hvq.state_dict().items())  # frozen in the MIM stage
    tokens = full.tokens_of(full.extract(Scenes(2, 5)[0]["image"][None]))
    assert torch.equal(full.hvq.codes(tokens), variant.hvq.codes(tokens))
    with pytest.raises(ValueError, match="codebook_size"):
        make(hvq_checkpoint=str(path), codebook_size=4)


def test_deterministic_with_a_seed_and_checkpoint_round_trip(tmp_path):
    test = Scenes(6, 4, anomalous=3)
    images = torch.stack([test[i]["image"] for i in range(6)])
    runs = []
    for _ in range(2):
        engine.seed_everything(0)
        model = make()
        engine.fit(model, Scenes(8, 2), FIT, calibration=Scenes(4, 3))
        runs.append(model.predict(images).scores)
    assert torch.equal(runs[0], runs[1])
    path = engine.save_checkpoint(model, tmp_path / "ladmim.pt", epoch=6)
    fresh = make(mask_seed=0)
    fresh.hvq.quantizers[0].codebook.data.zero_()
    loaded, epoch = engine.load_checkpoint(path, model=fresh)
    assert epoch == 6 and loaded.calibrated
    assert not loaded.training  # a loaded checkpoint is ready to evaluate
    loaded.train()  # the scores must not depend on the mode (issue 23)
    assert torch.equal(loaded.predict(images).scores, runs[1])
    assert torch.equal(loaded.predict(images).maps, model.predict(images).maps)
    assert loaded.training  # predict left the mode as it was


@pytest.mark.parametrize("target", ["code", "feature", "pixel"])
def test_other_prediction_targets_train_and_score(target):
    model = make(target=target, scorer="mim")
    features = model.extract(torch.stack([Scenes(2, 5)[i]["image"] for i in range(2)]))
    assert ("pixels" in features) == (target == "pixel")
    if target == "pixel":
        assert features["pixels"].shape == (2, 3 * 8 * 8, GRID, GRID)
    model.start_stage("mim")
    model.train()
    loss = model.loss(features)
    loss.backward()
    assert math.isfinite(loss.item()) and model.head.weight.grad.abs().sum() > 0
    model.eval()
    assert model.score_parts(features)["s_mim"].shape == (2,)


def test_mim_scores_a_wrong_count_higher_after_training():
    """Two squares where normal images have one: the histogram of a masked region is not what the visible rest
    predicts, so S_MIM rises (a weak, seeded check of the logical detector on the toy scenes)."""
    model = make(scorer="mim", mask_ratio=0.3, num_test_masks=8)
    fit = engine.FitConfig(batch_size=8, progress=False, seed=0, stages={"tokenizer": {"epochs": 6, "lr": 3e-3},
                                                                         "mim": {"epochs": 20, "lr": 3e-3}})
    engine.fit(model, Scenes(16, 6), fit)
    test = Scenes(20, 7, anomalous=10)
    scores = model.predict(torch.stack([test[i]["image"] for i in range(20)])).scores
    assert scores[:10].mean() > scores[10:].mean()


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="target"):
        make(target="nope")
    with pytest.raises(ValueError, match="mask_ratio"):
        make(mask_ratio=1.5)
    with pytest.raises(ValueError, match="mim_levels"):
        make(mim_levels=(0, 5))
    with pytest.raises(ValueError, match="image_size"):
        make().extract(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="grid"):
        ladmim.LADMIM(ladmim.LADMIMConfig(**{**SMALL, "grid": 5}), tokenizer=ToyGrid())


def test_registry_builds_the_offline_backbone_on_a_24_grid():
    model = create_model("ladmim", pretrained=False, codebook_size=8, hvq_dim=16, hvq_dec_dim=16, hvq_ffn=32,
                         hvq_heads=2, mim_dim=16, mim_heads=2)
    assert model.in_dim == 152 and model.tokens == 576 and model.feature_key() is None


def test_evaluation_keeps_the_raw_scores_equal_to_a_second_pass():
    """engine.evaluate keeps LADMIM's S_HVQ and S_MIM (predict_parts), so Tab. 5 needs no second pass."""
    model = make()
    engine.fit(model, Scenes(8, 2), FIT, calibration=Scenes(6, 3))
    test = Scenes(6, 4, anomalous=3)
    result = engine.evaluate(model, test, batch_size=4, progress=False, pixel=False)
    again = ladmim.score_components(model, test, batch_size=3)
    assert set(result.parts) == {"s_hvq", "s_mim"} and len(result.parts["s_mim"]) == len(test)
    for key in ("s_hvq", "s_mim"):
        assert result.parts[key] == pytest.approx(again[key], rel=1e-5)
    combined = model.combine(torch.as_tensor(result.parts["s_hvq"]), torch.as_tensor(result.parts["s_mim"]))
    assert result.scores == pytest.approx(combined.numpy(), rel=1e-5, abs=1e-6)


def test_codes_precomputed_for_the_mim_stage_train_the_same_as_codes_per_step():
    """engine's stage_features hook: the frozen HVQ-Trans' codes are computed once for the MIM stage; the losses
    equal those of a fit that computes them in every step (feature cache off)."""
    losses = {}
    for cached in (True, False):
        model = make()
        config = engine.FitConfig(**{**FIT.__dict__, "cache_features": cached})
        result = engine.fit(model, Scenes(8, 2), config)
        losses[cached] = result.stage_losses
    assert losses[True]["tokenizer"] == pytest.approx(losses[False]["tokenizer"], rel=1e-5)
    assert losses[True]["mim"] == pytest.approx(losses[False]["mim"], rel=1e-4)
    model = make()
    engine.fit(model, Scenes(8, 2), FIT)
    features = model.extract(torch.stack([Scenes(4, 5)[i]["image"] for i in range(4)]))
    model.start_stage("mim")
    added = model.stage_features(features, chunk=3)
    assert torch.equal(added["codes"], model.hvq.codes(model.tokens_of(features))[:, model.levels])
    model.start_stage("tokenizer")
    assert "codes" not in model.stage_features(features)  # codes move while HVQ-Trans trains
