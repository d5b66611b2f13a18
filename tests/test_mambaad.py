"""MambaAD: shapes at any size, the one-call hybrid scan against a per-direction loop, the release's parameter
counts, training, determinism, checkpoints, and every ablation configuration of Tables 2-4."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from adlib import engine, ssm
from adlib.models import create_model
from adlib.models import mambaad as M

TINY = dict(pretrained=False, expand=1)  # random EfficientNet-Lite0, the smoke profile's width


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Small tensors: one intra-op thread is as fast, and far faster on a loaded machine (no spinning workers).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_ENCODERS: dict = {}


def _model(**kw) -> M.MambaAD:
    """A model with random weights; the frozen random EfficientNet-Lite0 is built once and shared (it is never
    trained), which keeps this file quick."""
    from adlib import backbones
    from adlib.models import model_config

    torch.manual_seed(0)
    config = model_config("mambaad", None, **{**TINY, **kw})
    key = (config.backbone, tuple(config.layers))
    if key not in _ENCODERS:
        _ENCODERS[key] = backbones.create(config.backbone, layers=config.layers, pretrained=False)
    torch.manual_seed(0)
    return M.MambaAD(config, encoder=_ENCODERS[key])


@pytest.mark.parametrize("size,grids", [(256, [64, 32, 16]), (224, [56, 28, 14])])
def test_shapes_at_256_and_224(size, grids):
    m = _model(image_size=size).eval()
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        out = m.explain(x)
    assert [tuple(f.shape) for f in out["features"]] == [(1, c, g, g) for c, g in zip((24, 40, 112), grids)]
    assert [r.shape for r in out["reconstructions"]] == [f.shape for f in out["features"]]
    assert tuple(out["bottleneck"].shape) == (1, 224, grids[2] // 2, grids[2] // 2)  # 8x8 at 256, 7x7 at 224
    assert out["map"].shape == (1, size, size) and out["scores"].shape == (1,)
    assert torch.allclose(out["scores"], out["map"].flatten(1).amax(1))  # plain max
    assert len(out["scale_maps"]) == 3


@pytest.mark.parametrize("hw", [(100, 100), (96, 160), (72, 40)])
def test_any_input_size_including_odd_maps_and_non_square(hw):
    m = _model().eval()
    x = torch.rand(2, 3, *hw)
    with torch.no_grad():
        feats = m.extract(x)
        recon = m.reconstruct(feats)
        pred = m.predict(x)
    assert [r.shape for r in recon] == [f.shape for f in feats]
    assert pred.maps.shape == (2, *hw) and torch.isfinite(pred.maps).all()


def test_resnet34_parameter_counts_equal_the_release():
    # Counted on the release's own MambaAD class (model/mambaad.py, ResNet34 + [3,4,6,3], Hilbert, 8 dirs):
    # encoder to layer3 8,170,304 + MFF_OCE 1,458,304 + MambaUPNet 15,986,624 (+ 39,296 scan-index entries the
    # release registers as nn.Parameter, which make its total 25,654,528: the paper's "25.7 M").
    m = create_model("mambaad", backbone="resnet34", pretrained=False)
    count = lambda mod: sum(p.numel() for p in mod.parameters())
    assert count(m.tokenizer) == 8_170_304
    assert count(m.bottleneck) == 1_458_304
    assert count(m.decoder) == 15_986_624
    assert m.dims == [512, 256, 128, 64]


def test_decoder_structure_follows_the_depth_rule_and_drop_path():
    m = create_model("mambaad", backbone="resnet34", pretrained=False)
    assert [[len(lss.hss) for lss in stage] for stage in m.decoder.stages] == [[3], [2, 2], [3, 3], [3]]
    assert M.lss_sizes(9) == [3, 3, 3] and M.lss_sizes(2) == [2] and M.lss_sizes(4, 1) == [1] * 4
    rates = [[lss.hss[0].drop_path.p for lss in stage] for stage in m.decoder.stages]
    assert rates[0][0] == pytest.approx(0.2) and rates[-1][0] == pytest.approx(0.2 * 2 / 15)
    # PatchExpand2D between stages: 512@8 -> 256@16 -> 128@32 -> 64@64
    assert isinstance(m.decoder.upsample[0], nn.Identity)
    assert [(u.expand.in_features, u.out_dim) for u in m.decoder.upsample[1:]] == [(512, 256), (256, 128), (128, 64)]
    with pytest.raises(ValueError, match="divides by neither"):
        M.lss_sizes(5)


def test_eight_directions_run_in_one_selective_scan_call(monkeypatch):
    m = _model().eval()
    calls = []
    real = ssm.selective_scan

    def spy(u, delta, A, B, C, D=None, **kw):
        calls.append((tuple(u.shape), tuple(B.shape), tuple(A.shape)))
        return real(u, delta, A, B, C, D, **kw)

    monkeypatch.setattr(ssm, "selective_scan", spy)
    with torch.no_grad():
        m.predict(torch.rand(1, 3, 64, 64))
    blocks = m.hss_blocks()
    assert len(calls) == len(blocks) == 16  # one call per HSS block, not one per direction
    for (u, b, a), block in zip(calls, blocks):
        core = block.self_attention
        assert u[1] == 8 * core.d_inner and b[1] == 8 and a == (8 * core.d_inner, 16)


def _per_direction_reference(core: M.SS2D, x: torch.Tensor) -> torch.Tensor:
    """forward_core with one selective scan per direction (the plain loop), for comparison."""
    from adlib.scans import hybrid_directions

    b, d, h, w = x.shape
    out = torch.zeros_like(x.flatten(2))
    dirs = hybrid_directions(h, w, core.scan, core.count, core.variant)
    A = -torch.exp(core.A_logs).view(core.count, d, -1)
    for k, direction in enumerate(dirs.values()):
        seq = x.flatten(2)[..., direction.order]
        dbl = torch.einsum("bdl,cd->bcl", seq, core.x_proj_weight[k])
        dt, B, C = torch.split(dbl, [core.dt_rank, core.d_state, core.d_state], dim=1)
        dt = torch.einsum("brl,dr->bdl", dt, core.dt_projs_weight[k])
        y = ssm.selective_scan(seq, dt, A[k], B, C, core.Ds.view(core.count, d)[k], delta_bias=core.dt_projs_bias[k],
                               delta_softplus=True, impl="reference")
        out += y[..., direction.inverse]
    return out.view(b, d, h, w)


@pytest.mark.parametrize("scan,count,variant", [("hilbert", 8, "release"), ("zigzag+hilbert", 8, "release"),
                                                ("hilbert", 8, "figure"), ("sweep", 2, "release")])
def test_one_call_scan_equals_a_loop_over_directions(scan, count, variant):
    torch.manual_seed(0)
    cfg = M.MambaADConfig(scan=scan, directions=count, direction_set=variant, expand=1)
    core = M.SS2D(8, cfg)
    x = torch.randn(2, core.d_inner, 5, 7)  # non-square, not a power of two
    with torch.no_grad():
        got = core.forward_core(x)
    assert torch.allclose(got, _per_direction_reference(core, x), atol=1e-4, rtol=1e-4)


def test_trace_exposes_each_direction_decoded_back():
    torch.manual_seed(0)
    core = M.SS2D(8, M.MambaADConfig())
    x = torch.randn(1, core.d_inner, 4, 4)
    trace = {}
    with torch.no_grad():
        out = core.forward_core(x, trace)
    assert trace["sequences"].shape == (1, 8, core.d_inner, 16) and trace["decoded"].shape == (1, 8, core.d_inner, 4, 4)
    assert torch.allclose(trace["decoded"].sum(1), out, atol=1e-5)
    # the sequences are the input read along each order
    assert torch.equal(trace["sequences"][0, 3], x.flatten(2)[0][:, trace["orders"][3]])


def test_hs_encode_decode_gradients():
    orders = torch.stack([torch.randperm(6, generator=torch.Generator().manual_seed(s)) for s in range(3)])
    inverses = torch.argsort(orders, dim=1)
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: M._HSEncode.apply(t, orders, inverses), (x,))
    assert torch.autograd.gradcheck(lambda t: M._HSDecode.apply(t, orders, inverses), (y,))
    assert torch.equal(M._HSDecode.apply(M._HSEncode.apply(x, orders, inverses), orders, inverses), 3 * x)


def test_loss_is_five_times_the_sum_of_mses_and_goes_down():
    m = _model(depths=(2, 2, 2, 2), directions=2)
    x = torch.rand(4, 3, 64, 64)
    feats = m.extract(x)
    m.eval()  # no drop path, BatchNorm running statistics: both calls see the same network
    recon = m.reconstruct(feats)
    expected = 5 * sum(torch.mean((r - f) ** 2) for r, f in zip(recon, feats))
    assert torch.allclose(m.loss(feats), expected, rtol=1e-5)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=5e-3, weight_decay=1e-4)
    m.train()
    losses = []
    for _ in range(15):
        loss = m.loss(feats)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.grad is None for p in m.tokenizer.parameters())  # the encoder stays frozen


def test_anomaly_map_is_the_sum_of_one_minus_cosine_smoothed():
    m = _model(smoothing_sigma=0.0).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = m.explain(x)
        feats, recon = out["features"], out["reconstructions"]
        manual = sum(torch.nn.functional.interpolate((1 - torch.nn.functional.cosine_similarity(f, r, dim=1))[:, None],
                                                     size=(64, 64), mode="bilinear", align_corners=True)[:, 0]
                     for f, r in zip(feats, recon))
    assert torch.allclose(out["map"], manual, atol=1e-6)


def test_deterministic_with_a_seed():
    def run():
        m = _model(directions=2, depths=(2, 2, 2, 2))
        data = [{"image": torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)), "mask": torch.zeros(1, 64, 64),
                 "label": 0} for i in range(4)]
        result = engine.fit(m, data, engine.FitConfig(epochs=2, batch_size=2, lr=5e-3, weight_decay=1e-4, seed=3,
                                                      progress=False, disk_cache=False))
        with torch.no_grad():
            return result.losses, m.eval().predict(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(9))).maps

    (l1, m1), (l2, m2) = run(), run()
    assert l1 == l2 and torch.equal(m1, m2)


def test_checkpoint_round_trip(tmp_path):
    m = _model(directions=2, depths=(2, 2, 2, 2)).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for p in m.decoder.parameters():  # move away from the initialisation
            p.add_(0.01 * torch.randn_like(p))
        before = m.predict(x).maps
    path = engine.save_checkpoint(m, tmp_path / "mambaad.pt", epoch=3)
    loaded, epoch = engine.load_checkpoint(path)
    assert epoch == 3 and isinstance(loaded, M.MambaAD)
    with torch.no_grad():
        assert torch.allclose(loaded.eval().predict(x).maps, before, atol=1e-6)


ABLATIONS = {
    # Table 2: backbone and decoder depth
    "resnet18": dict(backbone="resnet18"),
    "depth_2222": dict(depths=(2, 2, 2, 2)),
    "depth_2922": dict(depths=(2, 9, 2, 2)),
    # Table 3: every row
    **{f"tab3_{scan}_{n}": dict(scan=scan, directions=n) for scan, n in [
        ("sweep", 8), ("scan", 8), ("zorder", 8), ("zigzag", 8), ("hilbert", 2), ("hilbert", 4), ("hilbert", 8),
        ("zigzag+hilbert", 8), ("zorder+hilbert", 8), ("scan+hilbert", 8), ("sweep+hilbert", 8),
        ("scan+zorder+zigzag+hilbert", 8)]},
    "figure_directions": dict(direction_set="figure"),
    # Table 4: LSS designs
    "m1_dw_k13": dict(hss_per_lss=1, local_conv="dw", kernel_sizes=(1, 3)),
    "m1_dw_k1357": dict(hss_per_lss=1, local_conv="dw", kernel_sizes=(1, 3, 5, 7)),
    "m1_dw1x1_k357": dict(hss_per_lss=1, local_conv="dw+1x1", kernel_sizes=(3, 5, 7)),
    "m1_noskip_dw_k35": dict(hss_per_lss=1, residual=False, local_conv="dw", kernel_sizes=(3, 5)),
    "m1_noskip_dw1x1_k57": dict(hss_per_lss=1, residual=False, kernel_sizes=(5, 7)),
    "m23_dw_k57": dict(local_conv="dw"),
    "m23_dw1x1_k35": dict(kernel_sizes=(3, 5)),
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_every_ablation_config_builds_trains_and_predicts(name):
    m = _model(**ABLATIONS[name])
    x = torch.rand(1, 3, 64, 64)  # maps 16/8/4, bottleneck 2 x 2 (InstanceNorm needs > 1 pixel in training)
    feats = m.extract(x)
    loss = m.loss(feats)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.decoder.parameters())
    with torch.no_grad():
        assert m.eval().predict(x).maps.shape == (1, 64, 64)


def test_table4_designs_change_the_lss_structure():
    base = _model()
    lss = base.decoder.stages[0][0]
    assert len(lss.local) == 2 and len(lss.local[0]) == 3 and lss.fuse.in_channels == 3 * 224
    only_dw = _model(local_conv="dw", kernel_sizes=(1, 3, 5)).decoder.stages[0][0]
    assert len(only_dw.local) == 3 and only_dw.local[0][0].groups == 224 and only_dw.fuse.in_channels == 4 * 224
    m1 = _model(hss_per_lss=1)
    assert [len(stage) for stage in m1.decoder.stages] == [3, 4, 6, 3]
    noskip = _model(residual=False).decoder.stages[0][0]
    x = torch.zeros(1, 4, 4, 224)
    with torch.no_grad():  # without the residual, X_o is the fused conv alone
        assert not torch.allclose(noskip(x + 1.0) - noskip(x), torch.ones_like(x))


@pytest.mark.parametrize("kw,match", [
    (dict(local_conv="conv"), "local_conv"), (dict(depths=(3, 4, 6)), "depths"), (dict(depths=(3, 5, 6, 3)), "neither"),
    (dict(scan="spiral"), "scan="), (dict(directions=3), "directions=3"), (dict(kernel_sizes=(4,)), "kernel_sizes"),
    (dict(layers=(2, 3)), "three taps"), (dict(direction_set="mirror"), "variant"),
])
def test_bad_configs_raise_errors_naming_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        _model(**kw)


def test_random_weights_disable_the_feature_cache_key():
    assert _model().feature_key() is None


def test_a_release_checkpoint_maps_onto_every_key_with_the_directions_permuted():
    # tests/fixtures/parity/mambaad_keys.json: the release's MAMBAAD state-dict keys and shapes at the paper's
    # size (ResNet34, [3,4,6,3], Hilbert, 8 directions), written from its code by benchmarks/parity/mambaad.py.
    # Random tensors of those shapes must land on every key of adlib's model (the encoder's too), with the
    # release's direction stacking permuted into the paper's order.
    import json
    from pathlib import Path

    from adlib.models import authors

    spec = json.loads((Path(__file__).parent / "fixtures" / "parity" / "mambaad_keys.json").read_text())["paper"]
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(shape, generator=g) if shape else torch.tensor(3)) for k, shape in spec.items()}
    model = authors.from_authors("mambaad", state)
    assert model.config.backbone == "resnet34" and tuple(model.config.depths) == (3, 4, 6, 3)
    mine = model.state_dict()
    assert torch.equal(mine["tokenizer.model.layer3.5.conv2.weight"], state["net_t.layer3.5.conv2.weight"])
    assert torch.equal(mine["bottleneck.down1.0.weight"], state["mff_oce.conv1.weight"])
    assert torch.equal(mine["bottleneck.blocks.2.conv3.weight"], state["mff_oce.bn_layer.2.conv3.weight"])
    assert torch.equal(mine["decoder.upsample.1.expand.weight"], state["net_s.layers_up.1.upsample.expand.weight"])
    release = "net_s.layers_up.2.blocks.1.smm_blocks.2.self_attention."
    ours = "decoder.stages.2.1.hss.2.self_attention."
    x_proj = state[release + "x_proj_weight"]
    assert torch.equal(mine[ours + "x_proj_weight"][1], x_proj[4])  # adlib's "reverse" is the release's 5th
    assert torch.equal(mine[ours + "x_proj_weight"][2], x_proj[1])  # adlib's "wh_forward" is the release's 2nd
    d = mine[ours + "Ds"].numel() // 8
    assert torch.equal(mine[ours + "Ds"][d:2 * d], state[release + "Ds"][4 * d:5 * d])
    assert torch.equal(mine["decoder.stages.3.0.local.1.1.0.weight"], state["net_s.layers_up.3.blocks.0.conv77.0.weight"])
    with pytest.raises(ValueError, match="release's MambaAD"):
        authors.from_authors("mambaad", state, directions=4)
    with pytest.raises(authors.AuthorsCheckpointError, match="does not fit"):
        authors.from_authors("mambaad", state, backbone="resnet18")  # another encoder than the checkpoint's


def test_the_released_weights_in_aders_layout_load_as_the_same_computation():
    # MambaAD issues #30/#31: the released checkpoints name the 7x7 branch's 1x1 convs conv1b3/conv1a3 and hold
    # an extra 3x3 conv33, ADer's copy of the model (model/mambaad.py), whose forward runs
    # conv1a3(conv77(conv1b3(x))) and never calls conv33. Renamed, they are the release's 7x7 branch.
    import json
    from pathlib import Path

    from adlib.models import authors

    listing = json.loads((Path(__file__).parent / "fixtures" / "parity" / "mambaad_keys.json").read_text())
    ader = listing["variants"]["ader_layout"]
    assert any(".conv33." in k for k in ader) and not any(".conv1b7." in k for k in ader)
    g = torch.Generator().manual_seed(1)
    state = {k: (torch.randn(shape, generator=g) if shape else torch.tensor(3)) for k, shape in ader.items()}
    mine = authors.from_authors("mambaad", state).state_dict()
    assert torch.equal(mine["decoder.stages.1.0.local.1.0.0.weight"], state["net_s.layers_up.1.blocks.0.conv1b3.0.weight"])
    assert torch.equal(mine["decoder.stages.1.0.local.1.2.0.weight"], state["net_s.layers_up.1.blocks.0.conv1a3.0.weight"])
    without_conv33 = {k: v for k, v in state.items() if ".conv33." not in k}
    authors.from_authors("mambaad", without_conv33)  # conv33 is ignored, not needed