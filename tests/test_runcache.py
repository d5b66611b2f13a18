"""The one run path and its cache on disk: every registered model round-trips bit for bit through a checkpoint
(issue 23 item 7) and through the run cache (a cached fit gives the fresh fit's numbers, ``==``); the cache key,
its lock between processes, its size bound; LADMIM's calibration split; ``adlib run`` records where its fit came
from; ``--weights-from`` evaluates a checkpoint in the authors' key names without training (issue 22 item 4)."""
from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adlib import engine
from adlib.app.cli import main
from adlib.app.run import recipe_setting
from adlib.models import available_models, create_model
from adlib.study import DataSource, run_grid, run_one, runcache

SIZE = 64
# Per model: a CPU-sized config at 64 px with random backbone weights (the fits take seconds).
TINY: dict[str, dict] = {
    "patchcore": {},
    "varad": {"m": 1, "d_state": 4},
    "ladmim": {"grid": 8, "codebook_size": 8, "code_dim": 8, "hvq_dim": 16, "hvq_dec_dim": 16, "hvq_ffn": 32,
               "hvq_heads": 2, "mim_dim": 16, "mim_heads": 2, "num_test_masks": 2},
    "mambaad": {"expand": 1},
    "rd4ad": {"decoder_blocks": (1, 1, 1), "ocbe_blocks": 1},
    "uniad": {"hidden_dim": 32, "num_heads": 4, "num_encoder_layers": 1, "num_decoder_layers": 1,
              "dim_feedforward": 64, "feature_stride": 8, "neighbor_size": (3, 3)},
    "vitad": {"backbone": "efficientnet_lite0", "decoder_dim": 32, "decoder_heads": 2, "decoder_divisions": (1, 1, 1)},
}


def test_every_registered_model_has_a_tiny_config():
    assert set(TINY) == set(available_models())


def _category(root: Path, name: str = "widget", train: int = 6, validation: int = 0, seed: int = 0,
              defect: str = "spot") -> Path:
    """<root>/<name>/{train/good, test/good, test/<defect>, ground_truth/<defect>[, validation/good]}: textures,
    red spots as defects."""
    rng = np.random.default_rng(seed)
    cat = root / name

    def texture() -> np.ndarray:
        small = rng.uniform(90, 160, size=(4, 4, 3))
        return np.kron(small, np.ones((16, 16, 1))).astype(np.uint8)

    for split, count in [("train/good", train), ("validation/good", validation), ("test/good", 2),
                         (f"test/{defect}", 2)]:
        for i in range(count):
            (cat / split).mkdir(parents=True, exist_ok=True)
            img = texture()
            if split == f"test/{defect}":
                img[20:36, 24:40] = (255, 20, 20)
                mask = np.zeros((64, 64), np.uint8)
                mask[20:36, 24:40] = 255
                # a validation split makes it the MVTec LOCO layout: a folder of masks per image
                where = cat / "ground_truth" / defect / (f"{i:03d}" if validation else "")
                where.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(where / ("000.png" if validation else f"{i:03d}_mask.png"))
            Image.fromarray(img).save(cat / split / f"{i:03d}.png")
    return cat


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "tinyset"
    _category(root)
    return root


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "runs"
    monkeypatch.setenv("ADLIB_RUN_CACHE", "1")
    monkeypatch.setenv("ADLIB_RUN_CACHE_DIR", str(folder))
    return folder


def _setting(model: str):
    return recipe_setting(model, "smoke", image_size=SIZE, backbone=TINY[model].get("backbone"))


def _run(model: str, root: Path, category: str = "widget", **kwargs):
    options = {"pretrained": False, "epochs": 1, "batch_size": 2, **TINY[model], **kwargs}
    if model == "ladmim":  # the recipe sets epochs per stage
        options["stages"] = {"tokenizer": {"epochs": 1}, "mim": {"epochs": 1}}
    return run_one(_setting(model), DataSource("tinyset", root, category), model, keep_maps=2, **options)


def _same_evaluation(a, b) -> None:
    assert a.keys() == b.keys()
    for protocol in a:
        x, y = a[protocol], b[protocol]
        assert x.image == y.image and x.pixel == y.pixel, protocol
        assert np.array_equal(x.scores, y.scores) and x.paths == y.paths
        assert x.maps.keys() == y.maps.keys() and len(x.maps) > 0
        assert all(np.array_equal(x.maps[k], y.maps[k]) for k in x.maps)
        assert x.parts.keys() == y.parts.keys() and all(np.array_equal(x.parts[k], y.parts[k]) for k in x.parts)


@pytest.mark.parametrize("model", sorted(TINY))
def test_checkpoint_round_trip_is_bit_exact(model, tiny_root, tmp_path):
    """Fit briefly, save, load into a fresh model built from the file: the same maps and scores, ``torch.equal``,
    at several batch sizes. (LADMIM differed in the last bits while a loaded model was left in training mode and
    in its first training stage, either of which sends HVQ-Trans' attention down another kernel: a loaded model
    is now in the mode and stage a fit ends in, ``AnomalyModel.load_checkpoint_state``.)"""
    run = _run(model, tiny_root, cache=False)
    images = torch.stack([run.test[i]["image"] for i in range(len(run.test))])
    path = engine.save_checkpoint(run.model, tmp_path / f"{model}.pt", epoch=1)
    loaded, epoch = engine.load_checkpoint(path)
    assert epoch == 1 and type(loaded) is type(run.model) and loaded is not run.model
    for batch in (images, images[:2], images[2:3]):  # kernels may depend on the batch size: several
        with torch.no_grad():
            ours, theirs = run.model.predict(batch), loaded.predict(batch)  # as fit and load leave them
        assert torch.equal(ours.maps, theirs.maps) and torch.equal(ours.scores, theirs.scores)


@pytest.mark.parametrize("model", sorted(TINY))
def test_a_cached_fit_gives_the_fresh_fits_numbers_bit_for_bit(model, tiny_root, cache_dir, monkeypatch):
    """Fresh (cache off) against read from the cache and evaluated again: ``==`` on every metric, score and map."""
    monkeypatch.setenv("ADLIB_RUN_CACHE", "fit")  # fits only: the cached model itself is evaluated
    fresh = _run(model, tiny_root, cache=False)
    first = _run(model, tiny_root)
    cached = _run(model, tiny_root)
    assert (fresh.fit_from, first.fit_from, cached.fit_from) == ("trained", "trained", "cache")
    assert cached.evaluation_from == "computed" and cached.fit.losses == fresh.fit.losses
    _same_evaluation(fresh.evaluations, cached.evaluations)
    rows = [{k: v for k, v in r.items() if k != "fit"} for r in cached.rows() if r["level"] != "model"]
    expected = [{k: v for k, v in r.items() if k != "fit"} for r in fresh.rows() if r["level"] != "model"]
    assert len(rows) == len(expected)
    for ours, theirs in zip(rows, expected):  # the test-image resamples (``boot``) are arrays: compared exactly too
        assert ours.keys() == theirs.keys()
        for key, value in ours.items():
            if isinstance(value, np.ndarray):
                assert np.array_equal(value, theirs[key]), key
            else:
                assert value == theirs[key] or (value != value and theirs[key] != theirs[key]), key
    assert {r["fit"] for r in cached.rows()} == {"cache"} and {r["fit"] for r in fresh.rows()} == {"trained"}


def test_the_key_holds_what_determines_the_fit_and_not_the_protocol(tiny_root, tmp_path, cache_dir, monkeypatch):
    first = _run("patchcore", tiny_root, protocols=("exact",))
    assert first.fit_from == "trained" and first.evaluation_from == "computed"
    again = _run("patchcore", tiny_root, protocols=("exact",))
    assert again.fit_from == "cache" and again.evaluation_from == "cache"  # and the evaluation too
    _same_evaluation(first.evaluations, again.evaluations)
    # a cached evaluation keeps the test-image resamples the claims need (rows carry them as arrays)
    boots = [(r["boot"], s["boot"]) for r, s in zip(first.rows(), again.rows()) if r["level"] != "model"]
    assert boots and all(isinstance(b, np.ndarray) and np.array_equal(b, c) for b, c in boots)
    other_protocol = _run("patchcore", tiny_root, protocols=("ader",))
    assert other_protocol.fit_from == "cache" and other_protocol.evaluation_from == "computed"
    assert _run("patchcore", tiny_root, seed=1).fit_from == "trained"  # the seed
    assert _run("patchcore", tiny_root, coreset_ratio=0.5).fit_from == "trained"  # the model config
    assert _run("patchcore", tiny_root, max_train_images=4).fit_from == "trained"  # the FitConfig
    assert _run("patchcore", tiny_root, progress=True).fit_from == "cache"  # progress bars change nothing
    changed = tmp_path / "changed"  # the same files but one training image's bytes
    import shutil

    shutil.copytree(tiny_root, changed / "tinyset")
    image = changed / "tinyset/widget/train/good/003.png"
    Image.fromarray(255 - np.asarray(Image.open(image))).save(image)
    assert _run("patchcore", changed / "tinyset").fit_from == "trained"
    monkeypatch.setattr(runcache, "_SOURCE_HASH", "another adlib")  # an edited source file
    assert _run("patchcore", tiny_root).fit_from == "trained"
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # another thread count may change the last bits: another fit
    try:
        assert _run("patchcore", tiny_root).fit_from == "trained"
    finally:
        torch.set_num_threads(threads)
    entries = runcache.RunCache(cache_dir).entries()
    assert len(entries) == 7  # the first fit, and one per change that must train
    key = json.loads((entries[0][3] / "key.json").read_text())
    assert {"model", "config", "fit", "train", "source", "runtime"} <= set(key) and "protocol" not in json.dumps(key)


def test_off_and_callbacks_train(tiny_root, cache_dir, monkeypatch):
    assert _run("patchcore", tiny_root).fit_from == "trained"
    monkeypatch.setenv("ADLIB_RUN_CACHE", "0")
    assert _run("patchcore", tiny_root).fit_from == "trained"
    monkeypatch.setenv("ADLIB_RUN_CACHE", "1")
    assert _run("patchcore", tiny_root).fit_from == "cache"
    seen = []
    watched = _run("rd4ad", tiny_root, callback=lambda epoch, m: seen.append(epoch))
    assert watched.fit_from == "trained" and seen == [1]
    assert _run("rd4ad", tiny_root, callback=lambda epoch, m: seen.append(epoch)).fit_from == "trained"


def test_rows_and_the_grid_say_where_each_fit_came_from(tiny_root, cache_dir):
    setting = _setting("patchcore")
    source = DataSource("tinyset", tiny_root, "widget")
    log: list[str] = []
    variants = {"a": {"pretrained": False}, "b": {"pretrained": False}}
    table = run_grid(setting, variants, [source], models=("patchcore",), cache={}, log=log.append)
    assert set(table[table["setting"] == "a"]["fit"]) == {"trained"}
    assert set(table[table["setting"] == "b"]["fit"]) == {"reused"}
    again = run_grid(setting, {"a": {"pretrained": False}}, [source], models=("patchcore",), log=log.append)
    assert set(again["fit"]) == {"cache"} and "fit read from the run cache" in log[-1]
    assert again["value"].tolist() == table[table["setting"] == "a"]["value"].tolist()


def _fit_in_a_child(root: str, folder: str, queue) -> None:
    os.environ.update(ADLIB_RUN_CACHE="1", ADLIB_RUN_CACHE_DIR=folder, OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    run = _run("patchcore", Path(root))
    queue.put((run.fit_from, run.evaluation.pixel["auroc"]))


@pytest.mark.slow
def test_two_processes_asking_for_one_fit_train_it_once(tiny_root, tmp_path):
    """``adlib reproduce --jobs 2``: two kernels want the same fit; one trains, the other waits and reads it."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    children = [context.Process(target=_fit_in_a_child, args=(str(tiny_root), str(tmp_path / "runs"), queue))
                for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(300)
    outcomes = [queue.get(timeout=5) for _ in children]
    assert sorted(o[0] for o in outcomes) == ["cache", "trained"]
    assert outcomes[0][1] == outcomes[1][1]


def test_eviction_removes_the_least_recently_used_entries(tmp_path):
    import fcntl
    import time

    cache = runcache.RunCache(tmp_path)
    for i, key in enumerate(["aa" + "0" * 62, "bb" + "1" * 62, "cc" + "2" * 62, "dd" + "3" * 62]):
        folder = cache.entry_folder(key)
        folder.mkdir(parents=True)
        (folder / "fit.pt").write_bytes(b"x" * 1000)
        os.utime(folder / "fit.pt", (time.time() - 100 + i, time.time() - 100 + i))
    oldest, second, third, newest = sorted(e[2] for e in cache.entries())
    cache.lock_path(oldest).parent.mkdir(parents=True, exist_ok=True)
    with open(cache.lock_path(oldest), "a+") as held:  # another process reads the oldest entry now
        fcntl.flock(held, fcntl.LOCK_EX)
        removed = cache.evict(limit=2500)
    assert removed == [second, third]  # the oldest is held: skipped; the two next go; 2000 bytes remain
    assert sorted(e[2] for e in cache.entries()) == [oldest, newest]
    assert cache.evict(limit=1500, keep=oldest) == [newest]


def test_ladmim_calibrates_on_the_validation_split_or_on_held_out_training_images(tmp_path):
    _category(tmp_path / "data", "plain", train=10)
    _category(tmp_path / "data", "loco", train=6, validation=3, seed=1)
    _category(tmp_path / "data", "tiny", train=2, seed=2)
    held = _run("ladmim", tmp_path / "data", "plain")
    assert held.calibration == "held out from train/good: 2 of 10 normal images (the data has no validation split)"
    assert held.train_images == 8 and held.model.calibrated
    validation = _run("ladmim", tmp_path / "data", "loco")
    assert validation.calibration == "the validation split (3 normal images)" and validation.train_images == 6
    with pytest.raises(ValueError, match="no validation split and only 2 training image"):
        _run("ladmim", tmp_path / "data", "tiny")
    assert _run("patchcore", tmp_path / "data", "plain").calibration == ""


def test_varad_whitened_map_is_calibrated_by_the_run_path_on_its_training_images(tiny_root, cache_dir):
    """calibration_plan alone chooses VarAD's calibration images (the engine does not); the key holds them."""
    fresh = _run("varad", tiny_root, error="mahalanobis")
    assert fresh.calibration == f"the training images ({fresh.train_images} normal images)"
    assert fresh.model.calibrated and fresh.fit_from == "trained"
    cached = _run("varad", tiny_root, error="mahalanobis")
    assert cached.fit_from == "cache" and cached.model.calibrated
    _same_evaluation(fresh.evaluations, cached.evaluations)
    keys = [json.loads((e[3] / "key.json").read_text()) for e in runcache.RunCache(cache_dir).entries()]
    assert len(keys) == 1 and keys[0]["calibration"] and keys[0]["calibration"] == keys[0]["train"]
    assert _run("varad", tiny_root, error="l2").calibration == ""  # Eq. 9's L2 map needs no calibration


def test_adlib_run_says_whether_the_fit_was_trained_or_read(tiny_root, tmp_path, cache_dir, capsys):
    argv = ["run", "patchcore", "--data-root", str(tiny_root), "--category", "widget", "--image-size", "64",
            "--no-progress", "--set", "pretrained=False"]
    for expected in ("trained", "cache"):
        out = tmp_path / f"{expected}.json"
        assert main(argv + ["--json", str(out)]) == 0
        record = json.loads(out.read_text())
        assert record["fit"]["from"] == expected and record["fits"][expected] == 1
        assert f"(fit: 1 {'trained' if expected == 'trained' else 'read from the run cache'})" in capsys.readouterr().out
    assert main(argv + ["--no-cache", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["fit"]["from"] == "trained"


def test_run_evaluates_a_checkpoint_in_the_authors_key_names_without_training(tiny_root, tmp_path, monkeypatch,
                                                                              capsys):
    """A made-up key map for RD4AD: adlib's keys under another prefix, as an authors' checkpoint would name them."""
    from adlib.models import authors, rd4ad

    def fail(*args, **kwargs):
        raise AssertionError("a checkpoint is evaluated, never trained")

    config = {"pretrained": False, "image_size": SIZE, **TINY["rd4ad"]}
    torch.manual_seed(3)
    reference = create_model("rd4ad", **config).eval()
    key_map = lambda cfg: {k: f"net_t.{k}" for k in create_model("rd4ad", cfg).state_dict()}
    monkeypatch.setattr(rd4ad, "authors_key_map", key_map, raising=False)
    monkeypatch.delattr(rd4ad, "authors_config", raising=False)
    monkeypatch.delattr(rd4ad, "authors_ignored", raising=False)
    checkpoint = tmp_path / "released.pth"
    torch.save({"state_dict": {f"net_t.{k}": v for k, v in reference.state_dict().items()}}, checkpoint)
    assert authors.load("rd4ad", str(checkpoint), **config) is not None
    monkeypatch.setattr(engine, "fit", fail)
    out = tmp_path / "r.json"
    argv = ["run", "rd4ad", "--data-root", str(tiny_root), "--category", "widget", "--no-progress",
            "--weights-from", str(checkpoint), "--weights-format", "authors", "--json", str(out)]
    argv += [f"--set={k}={v!r}" for k, v in config.items() if k != "image_size"] + ["--image-size", str(SIZE)]
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert record["fit"]["from"] == "weights" and record["weights"]["format"] == "authors"
    assert record["fit"]["train_images"] == 0 and "not trained" in capsys.readouterr().out
    from adlib.data import AnomalyDataset

    direct = engine.evaluate(reference, AnomalyDataset(tiny_root, "widget", "test", image_size=SIZE), progress=False)
    assert record["pixel"] == direct.pixel and record["image"] == direct.image
    monkeypatch.setattr(rd4ad, "authors_key_map", lambda cfg: {**key_map(cfg), "extra.weight": "net_t.extra"})
    assert main(argv) == 2  # a key map the model does not fit: one line, before any work
    assert "the key map names adlib keys the model lacks" in capsys.readouterr().err


def test_the_runtime_report_counts_fits_trained_and_read(tiny_root, cache_dir):
    """A notebook's kernel reports its fits through ``results.runtime()``; the run record merges the reports."""
    from adlib import results
    from adlib.app.reproduce import merge_runtime

    before = runcache.counts()
    _run("patchcore", tiny_root)
    _run("patchcore", tiny_root)
    fits = results.runtime()["fits"]
    assert fits["trained"] - before["trained"] == 1 and fits["cache"] - before["cache"] == 1
    lines = [{"time": 1, "runtime": {"fits": {"trained": 1, "cache": 0}}},
             {"time": 2, "runtime": {"fits": {"trained": 2, "cache": 3}}}]
    assert merge_runtime(lines)["fits"] == {"trained": 2, "cache": 3}


def test_adlib_run_on_the_loco_layout_prints_the_group_aurocs_and_the_calibration(tmp_path, capsys):
    """MVTec LOCO's layout: the logical AUROC (adlib.loco) printed and in --json; LADMIM on its validation split."""
    _category(tmp_path / "loco", "box", train=6, validation=3, defect="logical_anomalies")
    out = tmp_path / "r.json"
    options = [f"--set={k}={v!r}" for k, v in TINY["ladmim"].items()]
    assert main(["run", "ladmim", "--data-root", str(tmp_path / "loco"), "--category", "box", "--image-size", "64",
                 "--epochs", "1", "--no-progress", "--set", "pretrained=False", *options, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["loco"]["logical"] == record["image"]["auroc"]  # good against logical anomalies only
    assert f"logical {100 * record['loco']['logical']:.1f}" in printed
    assert "overall" not in record["loco"]  # no structural anomaly here: no (LA + SA) / 2
    assert record["calibration"] == "the validation split (3 normal images)" and "calibration: the validation" in printed
    assert all(s["epochs"] == 1 for s in record["config"]["fit"]["stages"].values())  # --epochs: every stage


def test_a_config_field_naming_a_file_enters_the_key_by_its_content(tmp_path):
    """LADMIM's ablations point ``hvq_checkpoint`` at a tokenizer written under each run's output folder: the same
    tokenizer elsewhere is the same fit, another tokenizer at the same path is not."""
    from adlib.models import model_config

    layer = torch.nn.Linear(3, 4)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        torch.save({"state": {k: v.clone() for k, v in layer.state_dict().items()}}, tmp_path / folder / "t.pt")
    config = lambda path: model_config("ladmim", None, hvq_checkpoint=str(path))
    digest = lambda path: runcache._config(config(path))["hvq_checkpoint"]
    assert digest(tmp_path / "a/t.pt") == digest(tmp_path / "b/t.pt") and digest(tmp_path / "a/t.pt").startswith("file")
    with torch.no_grad():
        layer.weight[0, 0] += 1
    torch.save({"state": layer.state_dict()}, tmp_path / "c.pt")
    assert digest(tmp_path / "c.pt") != digest(tmp_path / "a/t.pt")
    assert runcache._config(model_config("ladmim"))["hvq_checkpoint"] is None
