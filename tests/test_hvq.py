"""HVQ-Trans (adlib.models.hvq): quantiser, hierarchy, straight-through gradients, PDN and its weights loader."""
from __future__ import annotations

import torch
from torch import nn

import pytest

from adlib.models import hvq


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids the cost of thread hand-offs on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_quantizer_picks_the_nearest_code_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    q = hvq.VectorQuantizer(8, 4, init="random", restart=False)
    x = torch.randn(2, 5, 4, requires_grad=True)
    z, idx, book, commit = q(x)
    dist = torch.cdist(x.detach().reshape(-1, 4), q.codebook.detach())
    assert torch.equal(idx.reshape(-1), dist.argmin(1))
    assert torch.allclose(z, q.codebook[idx])  # forward value: the code
    (z * torch.arange(4.0)).sum().backward()
    assert torch.allclose(x.grad, torch.arange(4.0).expand(2, 5, 4))  # backward: identity (straight through)
    assert commit.item() == pytest.approx(((x - q.codebook[idx]) ** 2).mean().item(), rel=1e-5)
    assert book.item() == pytest.approx(commit.item(), rel=1e-5)


def test_data_init_restart_of_dead_codes_and_usage():
    torch.manual_seed(0)
    q = hvq.VectorQuantizer(16, 3, init="data", restart=True).train()
    x = torch.randn(64, 3)
    q(x)
    assert bool(q.initialised) and all(any(torch.equal(c, v) for v in x) for c in q.codebook.detach())
    far = torch.full((1, 3), 100.0)
    q.codebook.data[0] = far  # a code no input is near: dies and is moved onto the data
    for _ in range(30):
        q(x)
    assert (q.codebook[0] - far).norm() > 50
    usage = q.usage()
    assert 0 < usage["used"] <= 1 and 1 <= usage["perplexity"] <= 16
    q.eval()
    before = q.codebook.detach().clone()
    q(x + 5)
    assert torch.equal(before, q.codebook.detach())  # no updates outside training


def test_ema_codebook_moves_to_the_assigned_mean_without_gradients():
    torch.manual_seed(0)
    q = hvq.VectorQuantizer(2, 2, update="ema", decay=0.5, init="random", restart=False).train()
    q.codebook.data = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    q.ema_sum.copy_(q.codebook.data)
    x = torch.tensor([[1.0, 1.0], [1.0, 3.0]])
    for _ in range(10):
        _, _, book, _ = q(x)
    assert not q.codebook.requires_grad and book.item() == 0.0
    assert torch.allclose(q.codebook[0], torch.tensor([1.0, 2.0]), atol=1e-2)  # the mean of its two vectors


def _model(**kw):
    torch.manual_seed(0)
    args = dict(in_dim=12, tokens=16, dim=16, heads=2, ffn=32, layers=4, dec_dim=16, codebook_size=8, code_dim=8,
                dropout=0.0)
    args.update(kw)
    return hvq.HVQTrans(**args)


def test_hierarchy_shapes_and_the_top_code_reading_of_eq4():
    model = _model().train()
    # lower levels quantise [h^{l-1}, z^L] (width dim + code_dim), the top level h^L
    assert [p.in_features for p in model.psi] == [16 + 8] * 3 + [16]
    out = model(torch.randn(3, 16, 12))
    assert out["codes"].shape == (3, 4, 16) and out["codes"].max() < 8
    assert out["recon"].shape == (3, 16, 12) and out["error"].shape == (3, 16)
    loss = out["recon_loss"] + out["codebook_loss"] + out["commitment_loss"]
    assert torch.allclose(out["loss"], loss)
    out["loss"].backward()
    assert model.encoder[0].linear1.weight.grad.abs().sum() > 0  # reached through the straight-through codes
    model.eval()
    tokens = torch.randn(2, 16, 12)
    codes = model.codes(tokens)
    top = model.quantizers[3].codebook
    model.quantizers[3].codebook.data = top.data + 2 * torch.randn_like(top)  # other top codes: other lower codes
    assert not torch.equal(model.codes(tokens)[:, :3], codes[:, :3])


def test_training_reduces_the_reconstruction_loss_and_freezing_stops_gradients():
    model = _model()
    tokens = torch.randn(8, 16, 12)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    first = None
    for _ in range(40):
        loss = model.train()(tokens)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    model.set_trainable(False)
    assert not any(p.requires_grad for p in model.parameters())
    model.set_trainable(True)
    ema = _model(codebook_update="ema")
    ema.set_trainable(True)
    assert not any(q.codebook.requires_grad for q in ema.quantizers)


def test_pdn_shape_at_224_px_and_the_paper_grid():
    pdn = hvq.PDN()
    assert sum(p.numel() for p in pdn.parameters()) == pytest.approx(2.68e6, rel=0.01)
    with torch.no_grad():
        assert pdn(torch.rand(1, 3, 224, 224)).shape == (1, 384, 48, 48)
    grid = hvq.FeatureGrid("pdn", None, pretrained=False, weights=None, grid=(24, 24))
    with torch.no_grad():
        assert grid(torch.rand(2, 3, 224, 224)).shape == (2, 384, 24, 24)
    assert grid.identity is None and grid.out_channels == 384


def test_pdn_weights_loader_reads_anomalib_and_sequential_files(tmp_path):
    torch.manual_seed(1)
    source = hvq.PDN()
    anomalib_file = tmp_path / "pretrained_teacher_small.pth"
    torch.save(source.state_dict(), anomalib_file)
    sequential = nn.Sequential(nn.Conv2d(3, 128, 4), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(128, 256, 4), nn.ReLU(),
                               nn.AvgPool2d(2), nn.Conv2d(256, 256, 3), nn.ReLU(), nn.Conv2d(256, 384, 4))
    for i, conv in zip((0, 3, 6, 8), (source.conv1, source.conv2, source.conv3, source.conv4)):
        sequential[i].load_state_dict(conv.state_dict())
    sequential_file = tmp_path / "teacher_small.pth"
    torch.save(sequential.state_dict(), sequential_file)
    x = torch.rand(1, 3, 64, 64)
    for path in (anomalib_file, sequential_file):
        grid = hvq.FeatureGrid("pdn", None, pretrained=True, weights=str(path), grid=(4, 4))
        with torch.no_grad():
            assert torch.allclose(grid.net(x), source(x))
        assert grid.identity and "grid=(4, 4)" in grid.identity
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    from adlib.backbones import CheckpointMismatchError, WeightsUnavailableError

    with pytest.raises(CheckpointMismatchError, match="does not match the small PDN"):
        hvq.load_pdn_weights(hvq.PDN(), bad)
    with pytest.raises(FileNotFoundError, match="pretrained_teacher_small.pth"):
        hvq.load_pdn_weights(hvq.PDN(), tmp_path / "missing.pth")
    with pytest.raises(WeightsUnavailableError, match="weights=PATH"):
        hvq.FeatureGrid("pdn", None, pretrained=True, weights=None, grid=(24, 24))


def test_efficientnet_grid_at_192_px():
    grid = hvq.FeatureGrid("efficientnet_lite0", None, pretrained=False, weights=None, grid=(24, 24))
    with torch.no_grad():
        out = grid(torch.rand(1, 3, 192, 192))
    assert out.shape == (1, 40 + 112, 24, 24)
    assert hvq.to_grid(torch.ones(1, 2, 48, 48), (24, 24)).shape == (1, 2, 24, 24)


def test_code_layout_is_hvq_trans_released_structure():
    """layout='code' (HVQ_TR_switch): no psi, L + 1 codebooks (o^1..o^L of width 2 dim on [h^{l-1}, z^top], a
    top one of width dim), a row/column position embedding, a 2 dim wide decoder with a final norm."""
    model = _model(layout="code", dim=8, heads=2, codebook_update="ema", codebook_init="normal",
                   codebook_restart=False, commitment=0.25).eval()
    assert len(model.psi) == 0 and [q.dim for q in model.quantizers] == [16] * 4 + [8]
    assert model.row_embed.weight.shape == (4, 4) and model.position().shape == (1, 16, 8)
    assert model.gamma.in_features == 16 and model.dec_norm.normalized_shape == (16,)
    out = model(torch.randn(2, 16, 12))
    assert out["codes"].shape == (2, 4, 16) and out["top_codes"].shape == (2, 16)
    assert torch.allclose(out["distance"].pow(2) / 12, out["error"], rtol=1e-5)
    # token (i, j) gets [col_j, row_i]
    expected = torch.cat([model.col_embed.weight[2], model.row_embed.weight[1]])
    assert torch.equal(model.position()[0, 1 * 4 + 2], expected)
    with pytest.raises(ValueError, match="grid"):
        _model(layout="code", tokens=15)


def test_per_image_ema_updates_the_codebook_between_the_images_of_a_batch():
    """HVQ-Trans quantises the images of a batch one by one (its per-class loop), each against the codebook the
    previous image's EMA update left: per_image=True does the same."""
    torch.manual_seed(0)
    batched = hvq.VectorQuantizer(4, 2, update="ema", decay=0.5, init="normal", restart=False, per_image=True)
    single = hvq.VectorQuantizer(4, 2, update="ema", decay=0.5, init="normal", restart=False)
    single.load_state_dict(batched.state_dict())
    x = torch.randn(3, 5, 2)
    out = batched.train()(x)
    codes = [single.train()(image)[1] for image in x]
    assert torch.equal(out[1], torch.stack(codes)) and torch.equal(batched.codebook, single.codebook)
    assert not torch.equal(batched.ema_count, torch.zeros(4))  # HVQ-Trans' counts start at zero ("normal")
