"""ViTAD (adlib/models/vitad.py): shapes, encoder taps and decoder pairing, loss and map formulas, training,
determinism, checkpoints, and every ablated configuration. Random weights and small images throughout."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adlib import backbones, engine
from adlib.models import create_model
import numpy as np
from adlib.models.vitad import Block, ViTAD, ViTADConfig, parameter_groups


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def tiny_vit(layers=(3, 6, 9, 12), final_norm: bool = False) -> backbones.FeatureExtractor:
    """A random ViT-Ti/16 (192 wide, 3 heads, 12 blocks) as an adlib encoder: ViT-S's structure, 4x cheaper."""
    import timm

    spec = backbones.BackboneSpec("vit_tiny_test", "vit_tiny_patch16_224", "vit", tuple(layers))
    model = timm.create_model(spec.timm_id, pretrained=False, dynamic_img_size=True)
    return backbones.FeatureExtractor(spec, model, layers, final_norm=final_norm)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return tiny_vit()


def vitad(encoder=None, **overrides) -> ViTAD:
    """ViTAD at 64 px (4 x 4 tokens) on ``encoder``; one block per decoder division unless set (fast tests)."""
    torch.manual_seed(0)
    stages = overrides.get("restraint_stages", (1, 2, 3))
    config = ViTADConfig(**{"image_size": 64, "pretrained": False, "decoder_divisions": (1,) * len(stages),
                            **overrides})
    return ViTAD(config, encoder=encoder)


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int = 64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        base = torch.rand(1, 3, size, size, generator=g)
        self.images = (base + 0.1 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": torch.zeros(1, *self.images.shape[-2:]), "label": 0, "path": str(i)}


# ----------------------------------------------------------------------------------------- architecture


def test_default_is_the_paper_architecture():
    """DINO ViT-S/16 at 256 px (random weights): 16 x 16 tokens of width 384, taps 3/6/9/12, 9 decoder blocks of
    ViT-S width with 6 heads, one 384 -> 384 Linear fuser, no read-out layers."""
    model = create_model("vitad", pretrained=False)
    assert model.stage_taps == [3, 6, 9, 12] and model.used_stages == [1, 2, 3, 4]
    assert model.grid == (16, 16) and model.width == 384 and model.prefix == 0
    assert len(model.decoder.blocks) == 9 and model.decoder.taps == {3, 6, 9}
    assert model.decoder.blocks[0].attn.heads == 6
    assert isinstance(model.fuser.linear, torch.nn.Linear) and model.fuser.linear.in_features == 384
    assert all(isinstance(r, torch.nn.Identity) for r in model.readouts)
    assert model.decoder.pos_embed.shape == (1, 256, 384)
    groups = parameter_groups(model)
    assert groups["fuser"] == 384 * 384 + 384
    assert groups["decoder"] == 9 * 1_774_464 + 256 * 384  # nine ViT-S blocks and the position embedding
    assert groups["readouts"] == 0
    assert not any(p.requires_grad for p in model.tokenizer.parameters())


def test_shapes(encoder):
    model = vitad(encoder)
    images = torch.rand(2, 3, 64, 64)
    feats = model.extract(images)
    assert [tuple(f.shape) for f in feats] == [(2, 16, 192)] * 4
    out = model.explain(images)
    assert [tuple(m.shape) for m in out["stage_maps"]] == [(2, 4, 4)] * 3
    assert tuple(out["map"].shape) == (2, 64, 64) and tuple(out["scores"].shape) == (2,)
    pred = model.predict(images)
    assert torch.equal(pred.maps, out["map"]) and torch.equal(pred.scores, out["scores"])
    with pytest.raises(ValueError, match="image_size=64"):
        model.extract(torch.rand(1, 3, 80, 80))


def test_restraint_taps_are_raw_block_outputs_without_class_token(encoder):
    """Stages 1-4 are the outputs of blocks 3/6/9/12 before the final norm, patch tokens only: exactly what
    adlib.backbones returns for those taps (its own ViT path, final_norm=False)."""
    model = vitad(encoder)
    images = torch.rand(2, 3, 64, 64)
    ours = model.extract(images)
    theirs = encoder(images)  # (B, C, h, w) per tap
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b.flatten(2).transpose(1, 2))


def test_after_norm_and_class_token_variants():
    images = torch.rand(2, 3, 64, 64)
    normed = tiny_vit(final_norm=True)
    after = vitad(normed, before_norm=False)
    for a, b in zip(after.extract(images), normed(images)):
        torch.testing.assert_close(a, b.flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match="final norm"):
        vitad(tiny_vit(), before_norm=False)
    with_cls = vitad(tiny_vit(), remove_cls=False)
    assert with_cls.prefix == 1 and all(f.shape[1] == 17 for f in with_cls.extract(images))
    assert with_cls.decoder.pos_embed.shape[1] == 17
    assert tuple(with_cls.predict(images).maps.shape) == (2, 64, 64)


def test_stem_is_the_patch_embedding_with_position(encoder):
    model = vitad(encoder, restraint_stages=(0, 1, 2, 3))
    images = torch.rand(1, 3, 64, 64)
    vit = encoder.model
    x = (images - encoder.mean) / encoder.std
    stem = vit._pos_embed(vit.patch_embed(x))[:, vit.num_prefix_tokens:]
    torch.testing.assert_close(model.extract(images)[0], stem)


def test_decoder_pairing_is_reversed(encoder):
    """Decoder block 9 reconstructs stage 1, block 6 stage 2, block 3 stage 3 (ADer's out[::-1])."""
    model = vitad(encoder, decoder_divisions=(3, 3, 3)).eval()
    feats = model.extract(torch.rand(2, 3, 64, 64))
    out = model.forward_features(feats)
    x = out["fused"] + model.decoder.pos_embed
    after = {}
    for i, block in enumerate(model.decoder.blocks, start=1):
        x = block(x)
        after[i] = x
    for stage, block in ((1, 9), (2, 6), (3, 3)):
        torch.testing.assert_close(out["reconstructions"][stage - 1], after[block])
    torch.testing.assert_close(out["fused"], model.fuser.linear(feats[3]))


def test_block_matches_timm():
    """Our ViT block computes what timm's Block computes with the same weights."""
    from timm.models.vision_transformer import Block as TimmBlock

    torch.manual_seed(1)
    ours, theirs = Block(96, 3), TimmBlock(96, 3, qkv_bias=True)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 10, 96)
    torch.testing.assert_close(ours(x), theirs(x))


def test_loss_and_map_formulas(encoder):
    """Cos_f = mean over the batch of 1 - cos(flattened stages), summed over stages; the map is the sum of the
    stages' per-position cosine distances, upsampled (align_corners=True), blurred (sigma 4); the score is the
    max of a 16 x 16 stride-1 average pooling."""
    model = vitad(encoder).eval()
    feats = model.extract(torch.rand(3, 3, 64, 64))
    out = model.forward_features(feats)
    expected = sum((1 - F.cosine_similarity(t.flatten(1), r.flatten(1), dim=1)).mean()
                   for t, r in zip(out["targets"], out["reconstructions"]))
    torch.testing.assert_close(model.loss(feats), expected)
    maps = [1 - F.cosine_similarity(t, r, dim=-1).reshape(3, 4, 4) for t, r in zip(out["targets"], out["reconstructions"])]
    total = sum(F.interpolate(m[:, None], size=(64, 64), mode="bilinear", align_corners=True)[:, 0] for m in maps)
    # scipy's gaussian_filter, as ADer's evaluator calls it (its "reflect" border repeats the edge sample)
    from scipy.ndimage import gaussian_filter

    total = torch.from_numpy(np.stack([gaussian_filter(m, sigma=4.0) for m in total.detach().double().numpy()])).float()
    _, smoothed = model.anomaly_map(model.stage_maps(out["targets"], out["reconstructions"]))
    torch.testing.assert_close(smoothed, total)
    scores = F.avg_pool2d(total[:, None], 16, stride=1).flatten(1).amax(1)
    torch.testing.assert_close(model.image_scores(total), scores)


@pytest.mark.parametrize("loss", ["cos_pos", "l1", "mse"])
def test_other_losses(encoder, loss):
    model = vitad(encoder, loss=loss)
    feats = model.extract(torch.rand(2, 3, 64, 64))
    out = model.forward_features(feats)
    t, r = out["targets"][0], out["reconstructions"][0]
    per_position = {"cos_pos": 1 - F.cosine_similarity(t, r, dim=-1), "l1": (t - r).abs().mean(-1),
                    "mse": (t - r).pow(2).mean(-1)}[loss]
    torch.testing.assert_close(model.stage_maps([t], [r])[0], per_position.reshape(2, 4, 4))
    assert torch.isfinite(model.loss(feats))


# ------------------------------------------------------------------------------------------------ training


def test_loss_goes_down_and_only_fuser_and_decoder_train(encoder):
    model = vitad(encoder)
    before = {k: v.clone() for k, v in model.tokenizer.state_dict().items()}
    result = engine.fit(model, Images(8), engine.FitConfig(epochs=6, batch_size=4, lr=1e-3, progress=False))
    assert result.losses[-1] < 0.6 * result.losses[0], result.losses
    assert result.cached  # frozen features were computed once
    assert all(torch.equal(v, model.tokenizer.state_dict()[k]) for k, v in before.items())


def test_deterministic_with_a_seed(encoder):
    config = engine.FitConfig(epochs=2, batch_size=4, lr=1e-3, seed=3, progress=False)
    runs = []
    for _ in range(2):
        engine.seed_everything(3)
        model = ViTAD(ViTADConfig(image_size=64, pretrained=False, decoder_divisions=(1, 1, 1)), encoder=encoder)
        losses = engine.fit(model, Images(8), config).losses
        runs.append((losses, model.predict(Images(2, seed=1).images)))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1].maps, runs[1][1].maps)


def test_checkpoint_round_trip(tmp_path):
    """A random encoder is saved whole (its weights differ per seed); fuser, decoder and encoder come back."""
    torch.manual_seed(0)
    model = create_model("vitad", backbone="efficientnet_lite0", image_size=32, pretrained=False, decoder_dim=32,
                         decoder_divisions=(1, 1, 1))
    engine.fit(model, Images(4, size=32), engine.FitConfig(epochs=1, batch_size=4, progress=False))
    path = engine.save_checkpoint(model, tmp_path / "vitad.pt", epoch=1)
    loaded, epoch = engine.load_checkpoint(path)
    images = Images(2, size=32, seed=5).images
    assert epoch == 1 and isinstance(loaded, ViTAD)
    torch.testing.assert_close(loaded.predict(images).maps, model.eval().predict(images).maps)


def test_pretrained_encoder_is_left_out_of_checkpoints():
    model = create_model("vitad", backbone="efficientnet_lite0", image_size=64, decoder_dim=64,
                         decoder_divisions=(1, 1, 1))
    state = model.checkpoint_state()
    assert not any(k.startswith("tokenizer.") for k in state)
    assert any(k.startswith("decoder.") for k in state) and any(k.startswith("fuser.") for k in state)
    assert model.feature_key() is not None and "stages=[1, 2, 3, 4]" in model.feature_key()


# ---------------------------------------------------------------------------------- CNN (smoke) encoder


def test_cnn_encoder_is_made_columnar():
    """EfficientNet-Lite0 stages 1-4 (strides 4/8/16/32) are resampled to the stride-16 grid; widths differ, so
    each restraint stage gets a Linear read-out from the decoder width."""
    model = create_model("vitad", backbone="efficientnet_lite0", pretrained=False, image_size=64, decoder_dim=64,
                         decoder_divisions=(1, 1, 1))
    images = torch.rand(2, 3, 64, 64)
    feats = model.extract(images)
    assert model.grid == (4, 4) and [f.shape[1:] for f in feats] == [(16, 24), (16, 40), (16, 112), (16, 320)]
    raw = model.tokenizer(images)
    torch.testing.assert_close(feats[0], F.adaptive_avg_pool2d(raw[0], (4, 4)).flatten(2).transpose(1, 2))
    torch.testing.assert_close(feats[2], raw[2].flatten(2).transpose(1, 2))
    up = F.interpolate(raw[3], size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(feats[3], up.flatten(2).transpose(1, 2))
    assert [r.out_features for r in model.readouts] == [24, 40, 112]
    assert tuple(model.predict(images).maps.shape) == (2, 64, 64)
    stem = create_model("vitad", backbone="efficientnet_lite0", pretrained=False, image_size=64, decoder_dim=32,
                        restraint_stages=(0, 1, 2, 3), decoder_divisions=(1, 1, 1, 1))
    assert stem.extract(torch.rand(1, 3, 64, 64))[0].shape[-1] == 16  # the stride-2 stage


# ---------------------------------------------------------------------------------- every ablated design

VARIANTS = {
    # Tab. II restraint stages (decoder divisions mirror the encoder: stage s <- 4 - s divisions)
    "stages=3": {"restraint_stages": (3,)},
    "stages=2+3": {"restraint_stages": (2, 3)},
    "stages=0+1+2+3": {"restraint_stages": (0, 1, 2, 3)},
    # Tab. III micro factors
    "add_linear=no": {"fuser_linear": False},
    "pos_embed=no": {"pos_embed": False},
    "remove_cls=no": {"remove_cls": False},
    # Tab. VIII fusers
    "fuser=cat,layers=0+1+2+3+4": {"fuser_stages": (0, 1, 2, 3, 4)},
    "fuser=add,layers=1+2+3+4": {"fuser": "add", "fuser_stages": (1, 2, 3, 4)},
    "fuser=vit,depth=3": {"fuser": "vit", "fuser_depth": 3},
    "fuser=conv,depth=1": {"fuser": "conv", "fuser_depth": 1},
    # Tab. X depth and division
    "encoder=1x3,decoder=1x3": {"layers": (3,), "restraint_stages": (1,), "decoder_divisions": (3,)},
    "encoder=2x3,decoder=1x3": {"layers": (3, 6), "restraint_stages": (1,), "decoder_divisions": (3,)},
    "encoder=6x2,decoder=5x2": {"layers": (2, 4, 6, 8, 10, 12), "restraint_stages": (1, 2, 3, 4, 5),
                                "decoder_divisions": (2, 2, 2, 2, 2)},
    "encoder=4x3,decoder=2-3-4": {"decoder_divisions": (2, 3, 4)},
    # Tab. XI losses
    "loss=L1": {"loss": "l1"}, "loss=MSE": {"loss": "mse"}, "loss=Cosp": {"loss": "cos_pos"},
    # Tab. XII augmentation
    **{f"augmentation={a}": {"augmentation": a} for a in ("cc+cj", "cc+rhf", "cc+rr", "rrc", "all")},
    # decoder width / heads
    "decoder_dim=96": {"decoder_dim": 96, "decoder_heads": 2},
}


@pytest.mark.parametrize("label", list(VARIANTS))
def test_every_variant_builds_trains_and_predicts(encoder, label):
    model = vitad(encoder, **VARIANTS[label]).train()
    feats = model.extract(torch.rand(2, 3, 64, 64))
    loss = model.loss(feats)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None for p in model.decoder.parameters())
    pred = model.eval().predict(torch.rand(2, 3, 64, 64))
    assert tuple(pred.maps.shape) == (2, 64, 64) and torch.isfinite(pred.maps).all()


def test_variants_change_what_they_say(encoder):
    assert not vitad(encoder, pos_embed=False).decoder.pos_embed
    assert isinstance(vitad(encoder, fuser_linear=False).fuser.linear, torch.nn.Identity)
    assert vitad(encoder, fuser_stages=(1, 2, 3, 4)).fuser.linear.in_features == 4 * 192
    assert len(vitad(encoder, decoder_divisions=(2, 3, 4)).decoder.blocks) == 9
    assert vitad(encoder, decoder_divisions=(2, 3, 4)).decoder.taps == {2, 5, 9}
    two = vitad(encoder, layers=(3, 6), restraint_stages=(1,), decoder_divisions=(3,))
    assert two.used_stages == [1, 2] and two.fuser_stages == (2,)


def test_augmentation_only_in_training(encoder):
    model = vitad(encoder, augmentation="cc+cj")
    assert not model.cacheable  # augmented features differ every epoch
    images = torch.rand(2, 3, 64, 64)
    torch.manual_seed(0)
    train_feats = model.train().extract(images)
    eval_feats = model.eval().extract(images)
    assert not torch.allclose(train_feats[0], eval_feats[0])
    torch.testing.assert_close(eval_feats[0], model.eval().extract(images)[0])


def test_scale_follows_the_encoder():
    """Tab. IX: the decoder's width and heads follow the encoder (ViT-Ti: 192 wide, 3 heads)."""
    model = vitad(tiny_vit())
    assert model.width == 192 and model.decoder.blocks[0].attn.heads == 3


@pytest.mark.parametrize("overrides,message", [
    ({"decoder_divisions": (3, 3)}, "each division reconstructs one stage"),
    ({"restraint_stages": (1, 5)}, "do not exist"),
    ({"fuser": "concat"}, "fuser='concat' is not valid"),
    ({"loss": "cos"}, "loss='cos' is not valid"),
    ({"augmentation": "flip"}, "augmentation='flip' is not valid"),
    ({"layers": (6, 3)}, "increasing"),
    ({"fuser_linear": False, "fuser_stages": (3, 4), "decoder_dim": 192}, "fuser_linear=False"),
    ({"fuser": "conv", "remove_cls": False}, "remove_cls=True"),
])
def test_clear_errors(encoder, overrides, message):
    with pytest.raises(ValueError, match=message):
        vitad(encoder, **overrides)


def test_cnn_rejects_vit_only_options():
    with pytest.raises(ValueError, match="ViT encoders only"):
        create_model("vitad", backbone="efficientnet_lite0", pretrained=False, image_size=64, remove_cls=False)
    with pytest.raises(ValueError, match="equal width"):
        create_model("vitad", backbone="efficientnet_lite0", pretrained=False, image_size=64, fuser="add",
                     fuser_stages=(3, 4))
