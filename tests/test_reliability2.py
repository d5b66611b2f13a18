"""Issue 25: soft-edged masks, typed --set and -p values, a feature cache that keeps reruns bit-exact, oversized
images, an incomplete MVTec LOCO copy, undeclared notebook parameters under plain papermill, and the minor ones
(a download's folder mode, a checkpoint that says which run wrote it). One regression test (or more) per case."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adlib.app.cli import main
from adlib.data import AnomalyDataset, DatasetError
from test_reliability import _category, _run, check_split, no_fit  # noqa: F401 (no_fit is a fixture)

REPO = Path(__file__).resolve().parents[1]


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_data(monkeypatch):
    """No dataset may be opened: the checks come first."""
    import adlib.data

    def fail(*args, **kwargs):
        raise AssertionError("a dataset was opened before the problem was reported")

    monkeypatch.setattr(adlib.data, "AnomalyDataset", fail)


# ------------------------------------------------------------------------------------------ 1. soft masks
def _soften(cat: Path) -> None:
    """Give every mask antialiased edges, as a resized or JPEG-saved mask has: values between 0 and 255."""
    for path in sorted((cat / "ground_truth").rglob("*.png")):
        mask = Image.open(path).convert("L")
        small = mask.resize((mask.width // 4, mask.height // 4), Image.BILINEAR)
        small.resize(mask.size, Image.BILINEAR).save(path)


def test_soft_masks_are_read_with_a_threshold(tmp_path):
    cat = _category(tmp_path)
    _soften(cat)
    values = np.unique(np.asarray(Image.open(cat / "ground_truth/spot/000_mask.png")))
    assert len(values) > 2 and 0 < values[1] < 127  # soft edges indeed
    with pytest.raises(DatasetError, match=r"not binary.*--mask-threshold T"):
        check_split(AnomalyDataset(tmp_path, "widget", "test"))
    test = AnomalyDataset(tmp_path, "widget", "test", mask_threshold=127)
    assert test.layout.mask_threshold == 127 and check_split(test).pixel_metrics
    item = test[test.labels.index(1)]
    raw = np.asarray(Image.open(item["path"].replace("test/spot", "ground_truth/spot").replace(".png", "_mask.png")))
    assert item["mask"].sum() == (raw > 127).sum() > 0
    with pytest.raises(ValueError, match="mask_threshold=-1"):
        AnomalyDataset(tmp_path, "widget", "test", mask_threshold=-1)


def test_run_takes_mask_threshold_and_records_it(tmp_path, capsys):
    """Issue 25 "done when": `adlib run patchcore --data-root D --category c --mask-threshold 127` runs on a
    dataset whose masks have soft edges; without the option the refusal names it, before training."""
    cat = _category(tmp_path)
    _soften(cat)
    out = tmp_path / "r.json"
    from adlib import engine

    fit = engine.fit
    engine.fit = lambda *a, **k: pytest.fail("trained although a mask is refused")
    try:
        assert main(_run(tmp_path, "--json", str(out))) == 2
    finally:
        engine.fit = fit
    assert "--mask-threshold T" in _one_line(capsys.readouterr().err) and not out.exists()
    assert main(_run(tmp_path, "--mask-threshold", "127", "--json", str(out))) == 0
    captured = capsys.readouterr()
    assert "masks read with --mask-threshold 127" in captured.out
    record = json.loads(out.read_text())
    assert record["test_split"]["widget"]["mask_threshold"] == 127.0 and record["pixel"]["auroc"] > 0.5
    assert main(_run(tmp_path, "--mask-threshold", "-3")) == 2
    assert "--mask-threshold -3.0: expected a number >= 0" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ 2. typed --set
@pytest.mark.parametrize("setting, expected", [
    ("m=abc", "--set m=abc: expected an integer"),
    ("m=2.5", "--set m=2.5: expected an integer"),
    ("directions=7", "--set directions=7: expected a tuple of strings"),
    ("weight_decay=abc", "--set weight_decay=abc: expected a number"),
    ("step_at=abc", "--set step_at=abc: expected a number"),
    ("betas=1", "--set betas=1: expected a tuple of 2 numbers, e.g. betas=0.9,0.999"),
    ("stages=5", "--set stages=5: expected a dict"),
    ("epochs=0", "--set epochs=0: expected a positive integer"),
    ("pretrained=maybe", "--set pretrained=maybe: expected True or False"),
    ("stages={'train': {'lr': 'abc'}}", "stage 'train': lr='abc': expected a number"),
    ("m=0", "--set m=0 is refused: m=0: the prediction step must be >= 1"),  # the model's own range check
    ("lr=-1", "--set lr=-1 is refused"),
])
def test_a_bad_set_value_is_one_line_before_any_data_is_read(tmp_path, capsys, no_fit, no_data, setting, expected):
    _category(tmp_path)
    assert main(_run(tmp_path, "--set", setting, model="varad")) == 2
    line = _one_line(capsys.readouterr().err)
    assert expected in line, line


def test_typed_set_values_reach_the_configs(tmp_path):
    import argparse

    from adlib import papers
    from adlib.app import run

    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    args = parser.parse_args(["varad", "--set", "betas=0.9,0.99", "--set", "directions=row_tl,col_tr",
                              "--set", "m=2", "--set", "lr=1e-3", "--set", "layers=2,3", "--set", "hidden_dim=None",
                              "--set", "pretrained=false", "--epochs", "2"])
    preset = run._apply("varad", papers.home_recipe("varad", "smoke"), run._overrides(args), args)
    assert preset.fit.betas == (0.9, 0.99) and preset.fit.lr == 1e-3 and preset.fit.epochs == 2
    assert preset.model.directions == ("row_tl", "col_tr") and preset.model.m == 2
    assert preset.model.layers == (2, 3) and preset.model.hidden_dim is None and preset.model.pretrained is False


def test_study_configs_and_model_config_share_the_typed_check():
    from adlib import engine
    from adlib.config import ConfigValueError
    from adlib.models import model_config

    with pytest.raises(ConfigValueError, match=r"m=2.5: expected an integer"):
        model_config("varad", None, m=2.5)
    with pytest.raises(ValueError, match=r"directions=\('nope',\): expected a non-empty subset"):
        model_config("varad", None, directions=["nope"])  # the model's own _validate, before any weight is built
    assert model_config("varad", None, directions=["row_tl"]).directions == ("row_tl",)
    with pytest.raises(ConfigValueError, match=r"betas=1: expected a tuple of 2 numbers"):
        engine.FitConfig(betas=1)
    with pytest.raises(ValueError, match=r"stage 'mim': unknown parameter\(s\) \['lrr'\]"):
        engine.FitConfig(stages={"mim": {"lrr": 1}})
    from adlib import papers, study

    setting = study.resolve_setting(papers.get("varad"), synthetic=False)
    with pytest.raises(ConfigValueError, match="weight_decay='abc': expected a number"):
        study.configs(setting, "varad", weight_decay="abc")
    config, fit = study.configs(setting, "varad", betas=[0.5, 0.9], m=2)
    assert fit.betas == (0.5, 0.9) and config.m == 2


@pytest.mark.parametrize("hint, text, value", [
    ("int | tuple[int, int]", "64", 64), ("int | tuple[int, int]", "(64, 96)", (64, 96)),
    ("tuple | None", "layer2,layer3", ("layer2", "layer3")), ("tuple | None", "None", None),
    ("str | None", "None", None), ("str", "1", "1"), ("float", "3", 3.0), ("bool", "True", True),
    ("Literal['a', 'b']", "b", "b"), ("Sequence[int] | None", "0,1,2", [0, 1, 2]),
    ("Sequence[int] | None", "[0, 1]", [0, 1]), ("dict[str, dict[str, Any]]", "{'a': {'lr': 1}}", {"a": {"lr": 1}}),
])
def test_config_values_from_text(hint, text, value):
    from typing import Any, Literal, Sequence  # noqa: F401 (read by eval)

    from adlib.config import coerce

    got = coerce("x", text, eval(hint), from_text=True)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("hint, text", [("int", "2.5"), ("int", "True"), ("tuple[float, float]", "1"),
                                        ("tuple[str, ...]", "7"), ("Literal['a', 'b']", "c"), ("float", "nan"),
                                        ("Sequence[int] | None", "(")])
def test_config_values_of_the_wrong_type(hint, text):
    from typing import Literal, Sequence  # noqa: F401 (read by eval)

    from adlib.config import ConfigValueError, coerce

    with pytest.raises(ConfigValueError) as caught:
        coerce("x", text, eval(hint), from_text=True)
    assert str(caught.value).startswith(f"x={text}: expected ")


# ------------------------------------------------------------------------------------------ 2. reproduce -p
def test_reproduce_p_values_are_typed_and_checked_before_the_kernel():
    from adlib.app import reproduce
    from adlib.study.parameters import ParameterError

    notebook = REPO / "notebooks" / "varad" / "02_main_results.ipynb"
    base = {"profile": "smoke", "data_root": None, "device": "cpu", "seed": 0, "output_root": "/tmp/out"}
    assert reproduce.notebook_parameters(notebook, {**base, "seeds": (0, 1)}, "varad")["seeds"] == [0, 1]
    assert reproduce.notebook_parameters(notebook, {**base, "seeds": [0, 1, 2]}, "varad")["seeds"] == [0, 1, 2]
    for extra, message in [
        ({"seeds": "("}, "parameter seeds='(': expected a sequence of integers"),
        ({"epochs": "x"}, "parameter epochs='x': expected an integer or None"),
        ({"backbone": "nosuch"}, "parameter backbone='nosuch': no such backbone; known: "),
        ({"category": "nosuch"}, "category='nosuch' is not in this profile's data"),
        ({"image_size": -3}, "image_size=-3: expected a positive integer"),
        ({"categroy": "washer"}, "categroy passed but not declared"),
    ]:
        with pytest.raises(ParameterError, match=re.escape(message)):
            reproduce.notebook_parameters(notebook, {**base, **extra}, "varad")


def test_cli_p_seeds_reach_the_notebook_as_a_list(tmp_path):
    """`adlib reproduce -p seeds 0,1` gave "invalid literal for int()": papermill wrote the tuple as a string."""
    import argparse

    import papermill

    from adlib.app import reproduce

    parser = argparse.ArgumentParser()
    reproduce.add_arguments(parser)
    parameters = reproduce.config_from_args(parser.parse_args(["-p", "seeds", "0,1"])).parameters
    notebook = _fixture_notebook(tmp_path, "seeds = None", "print(repr(seeds))")
    given = reproduce.notebook_parameters(notebook, parameters)
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(notebook), str(out), parameters=given, kernel_name="python3", progress_bar=False)
    assert "[0, 1]\n" in _printed(out)


# ------------------------------------------------------------------------------------------ 3. feature cache
def _bottle_copy(tmp_path: Path) -> tuple[Path, str]:
    """A small copy of the shared MVTec AD bottle (10 train, 3 good and 3 broken_large test images), or
    generated textures where that data is absent."""
    source = Path(os.environ.get("ADLIB_DATA", "/work/shared/data")) / "mvtec_ad" / "bottle"
    if not source.is_dir():
        _category(tmp_path / "copy", train=10)
        return tmp_path / "copy", "widget"
    dst = tmp_path / "copy" / "bottle"
    for sub, n in [("train/good", 10), ("test/good", 3), ("test/broken_large", 3)]:
        (dst / sub).mkdir(parents=True)
        for path in sorted((source / sub).iterdir())[:n]:
            shutil.copy(path, dst / sub / path.name)
            if "broken" in sub:
                (dst / "ground_truth/broken_large").mkdir(parents=True, exist_ok=True)
                shutil.copy(source / "ground_truth/broken_large" / f"{path.stem}_mask.png", dst / "ground_truth/broken_large")
    return tmp_path / "copy", "bottle"


def test_a_cache_filled_in_any_order_gives_the_same_metrics(tmp_path, monkeypatch, capsys):
    """Issue 25 case A: varad at 64 px, 1 epoch, on a small bottle copy: the cache filled by a 3-image run
    first, then the full run, then the cache off, then all from the cache: identical JSON metrics."""
    from adlib import featcache

    monkeypatch.setattr(featcache, "cache_root", lambda: tmp_path / "cache")
    root, category = _bottle_copy(tmp_path)
    run = ["run", "varad", "--data-root", str(root), "--category", category, "--image-size", "64", "--epochs", "1",
           "--batch-size", "4", "--no-progress", "--set", "m=1", "--seed", "0",
           "--set", "error=l2"]  # the paper's map: the whitened one re-reads the training features to calibrate
    assert main(run + ["--max-train-images", "3"]) == 0
    records = {}
    for name, cache in [("after_subset", "1"), ("off", "0"), ("all_cached", "1")]:
        monkeypatch.setenv("ADLIB_FEATURE_CACHE", cache)
        assert main(run + ["--json", str(tmp_path / f"{name}.json")]) == 0
        records[name] = json.loads((tmp_path / f"{name}.json").read_text())
    capsys.readouterr()
    assert records["after_subset"]["fit"]["disk_cache_hits"] == 3
    assert records["all_cached"]["fit"]["disk_cache_hits"] == 10 and records["off"]["fit"]["disk_cache_hits"] == 0
    assert records["after_subset"]["metrics"] == records["off"]["metrics"] == records["all_cached"]["metrics"]


def _store_with_entries(tmp_path):
    from adlib import featcache

    store = featcache.FeatureStore("key-a", root=tmp_path)
    features = [torch.arange(6.0).reshape(2, 3), torch.ones(4)]
    store.put("a" * 32, features)
    store.put("b" * 32, [2 * f for f in features])
    return store, features


def test_damaged_foreign_and_wrong_shaped_cache_entries_are_recomputed(tmp_path):
    from adlib import featcache

    store, features = _store_with_entries(tmp_path)
    fresh = featcache.FeatureStore("key-a", root=tmp_path)
    assert all(torch.equal(x, y) for x, y in zip(fresh.get("a" * 32), features)) and fresh.hits == 1
    a, b = store._path("a" * 32), store._path("b" * 32)
    other_key = featcache.FeatureStore("key-b", root=tmp_path)
    other_key.put("a" * 32, features)
    cases = {
        "holds the features of another image": lambda: shutil.copy(b, a),  # a valid file of another image
        "belongs to another feature key": lambda: shutil.copy(other_key._path("a" * 32), a),
        "is unreadable": lambda: a.write_bytes(a.read_bytes()[:100]),
        "bytes differ from those it records": lambda: _edit(a, lambda e: e["features"][0].add_(1)),
        "shapes differ from those it records": lambda: _edit(a, lambda e: e["features"].__setitem__(1, torch.ones(5))),
    }
    for needle, damage in cases.items():
        store.put("a" * 32, features)
        damage()
        check = featcache.FeatureStore("key-a", root=tmp_path)
        with pytest.warns(UserWarning, match=needle):
            assert check.get("a" * 32) is None
        assert check.rejected == 1 and check.misses == 1
    # a valid entry of the right key and image but another shape than this key's features
    store.put("a" * 32, [torch.zeros(3, 3), torch.ones(4)])
    check = featcache.FeatureStore("key-a", root=tmp_path)
    check.verify("c" * 32, features)
    with pytest.warns(UserWarning, match="another shape than this key's"):
        assert check.get("a" * 32) is None


def _edit(path: Path, change) -> None:
    entry = torch.load(path, weights_only=True)
    change(entry)
    torch.save(entry, path)


def test_the_engine_recomputes_a_bad_entry_and_trains(tmp_path, monkeypatch):
    """A wrong-shaped entry crashed with "stack expects each tensor to be equal size"; a stale one (other bits
    under the same key) is found by the fresh extraction of the store's first image."""
    from adlib import engine, featcache
    from test_engine import Blobs

    monkeypatch.setattr(featcache, "cache_root", lambda: tmp_path)
    from adlib.models import create_model

    model = create_model("patchcore", image_size=64, coreset_ratio=0.5)
    data = Blobs(4, size=64)
    fit = engine.FitConfig(epochs=1, batch_size=2, progress=False)
    engine.fit(model, data, fit)
    store = engine._disk_store(model, fit, torch.device("cpu"))
    digests = [featcache.image_hash(data[i]["image"]) for i in range(4)]
    good = store.get(digests[2])
    store.put(digests[2], [torch.zeros(1, 2, 3) for _ in good])  # a valid entry of a wrong shape
    with pytest.warns(UserWarning, match="another shape than this key's"):
        assert engine.fit(create_model("patchcore", image_size=64, coreset_ratio=0.5), data, fit).disk_hits == 3
    store.put(digests[0], [t + 1 for t in good])  # the store's first image: other bits than a fresh extraction
    with pytest.warns(UserWarning, match="differs from its features computed now"):
        assert engine.fit(create_model("patchcore", image_size=64, coreset_ratio=0.5), data, fit).disk_hits == 0
    assert "threads=" in store.key and "torch " in store.key and featcache.FOLDER == "features-v2"


def test_extracted_features_do_not_depend_on_the_batch():
    from adlib import engine
    from adlib.models import create_model

    model = create_model("patchcore", image_size=64).eval()
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        together = engine.extract_frozen(model, images)[0]
        alone = engine.extract_frozen(model, images[3:4])[0]
    assert all(torch.equal(t[3:4], a) for t, a in zip(together, alone))


# ------------------------------------------------------------------------------------------ 4. oversized images
def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header says width x height (no pixel data: a decoder would fail, a size check comes first)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IEND", b""))


def test_an_image_above_the_pixel_limit_in_the_test_split_fails_before_training(tmp_path, capsys, no_fit):
    cat = _category(tmp_path)
    big = cat / "test/good/001.png"
    _png_header_only(big, 14000, 14000)
    assert main(_run(tmp_path)) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"image {big} is 14000x14000 px (196.0 Mpx), above the limit of 178956970 px" in line
    assert "ADLIB_MAX_IMAGE_PIXELS=196000000 (0: no limit)" in line


def test_an_image_above_the_pixel_limit_in_the_training_split_and_how_to_raise_it(tmp_path, capsys, monkeypatch):
    cat = _category(tmp_path)
    monkeypatch.setenv("ADLIB_MAX_IMAGE_PIXELS", "4000")  # the 64 x 64 images are above it
    assert main(_run(tmp_path)) == 2  # the test split is checked first
    assert "above the limit of 4000 px" in _one_line(capsys.readouterr().err)
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(cat / "train/good/002.png")
    monkeypatch.setenv("ADLIB_MAX_IMAGE_PIXELS", "5000")  # test images pass, one training image does not
    assert main(_run(tmp_path)) == 2
    line = _one_line(capsys.readouterr().err)
    assert "train/good/002.png is 80x80 px" in line and "ADLIB_MAX_IMAGE_PIXELS=6400" in line
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's own guard lower than the images
    monkeypatch.setenv("ADLIB_MAX_IMAGE_PIXELS", "0")  # raised: no limit
    assert main(_run(tmp_path, "--set", "coreset_ratio=0.5")) == 0
    assert Image.MAX_IMAGE_PIXELS == 1000  # Pillow's setting is left as it was


# ------------------------------------------------------------------------------------------ 5. LOCO without validation
def _loco_like(root: Path, validation: bool) -> Path:
    cat = _category(root, name="juice", defects=0)
    if validation:
        shutil.copytree(cat / "train/good", cat / "validation/good")
    (cat / "test/logical_anomalies").mkdir(parents=True)
    for i in range(2):
        shutil.copy(cat / "train/good/000.png", cat / f"test/logical_anomalies/{i:03d}.png")
        (cat / f"ground_truth/logical_anomalies/{i:03d}").mkdir(parents=True)
        Image.fromarray(np.full((64, 64), 237, np.uint8)).save(cat / f"ground_truth/logical_anomalies/{i:03d}/000.png")
    return cat


def test_a_loco_copy_without_validation_is_named_as_such(tmp_path, capsys, no_fit):
    _loco_like(tmp_path / "full", validation=True)
    assert AnomalyDataset(tmp_path / "full", "juice", "test").layout.name == "mvtec_loco"
    _category(tmp_path / "plain")
    assert AnomalyDataset(tmp_path / "plain", "widget", "test").layout.name == "mvtec"
    _loco_like(tmp_path / "cut", validation=False)
    with pytest.raises(DatasetError, match=r"marks of the mvtec_loco layout .* but no validation/good/"):
        AnomalyDataset(tmp_path / "cut", "juice", "test")
    assert main(_run(tmp_path / "cut", category="juice")) == 2
    line = _one_line(capsys.readouterr().err)
    assert "mvtec_loco" in line and "no validation/good/" in line and "has no mask" not in line


# ------------------------------------------------------------------------------------------ 6. notebooks
def _fixture_notebook(tmp_path: Path, parameters: str, *cells: str) -> Path:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [new_code_cell(parameters, metadata={"tags": ["parameters"]}), *map(new_code_cell, cells)]
    path = tmp_path / "fixture.ipynb"
    nbformat.write(nb, path)
    return path


def _printed(notebook: Path) -> list[str]:
    """The text a notebook's cells printed, one entry per output."""
    cells = json.loads(notebook.read_text())["cells"]
    return ["".join(o["text"]) for c in cells for o in c.get("outputs", []) if "text" in o]


def test_plain_papermill_with_an_undeclared_parameter_fails_in_the_first_cell(tmp_path):
    import papermill
    from papermill.exceptions import PapermillExecutionError

    marker = tmp_path / "heavy_work_started"
    notebook = _fixture_notebook(
        tmp_path, 'category = None\nseeds = None\nbackbone = None',
        "from adlib import study\nstudy.check_parameters(globals())",
        f"open({str(marker)!r}, 'w').write('x')")
    out = tmp_path / "out.ipynb"
    with pytest.raises(PapermillExecutionError) as caught:
        papermill.execute_notebook(str(notebook), str(out), parameters={"categroy": "washer"}, progress_bar=False)
    assert caught.value.ename == "ParameterError" and caught.value.cell_index == 2  # parameters, injected, check
    assert "categroy passed but not declared" in caught.value.evalue and not marker.exists()


def test_the_notebook_check_reads_the_injected_cell():
    """What check_parameters sees in a kernel: the cells run so far (IPython's ``In``), the current one last."""
    from adlib.study import check_parameters
    from adlib.study.parameters import ParameterError

    params = 'category = None\nseeds = None\nbackbone = None'
    namespace = {"In": ["", params, "# Parameters\nbackbone = \"nosuch\"\n", "check"], "backbone": "nosuch"}
    with pytest.raises(ParameterError, match="parameter backbone='nosuch': no such backbone"):
        check_parameters(namespace)
    namespace = {"In": ["", params, "# Parameters\nseeds = \"0,1\"\ncategory = \"x\"\n", "check"],
                 "seeds": "0,1", "category": "x"}
    check_parameters(namespace)
    assert namespace["seeds"] == [0, 1] and namespace["category"] == "x"
    namespace = {"In": ["", params, "check"], "seeds": "not checked"}  # nothing injected: an interactive session
    check_parameters(namespace)
    assert namespace["seeds"] == "not checked"


def test_every_notebook_checks_its_parameters_right_after_the_parameters_cell():
    for path in sorted((REPO / "notebooks").glob("*/*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        at = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
        first = next(c for c in cells[at + 1:] if c["cell_type"] == "code")
        source = "".join(first["source"])
        assert "study.check_parameters(globals())" in source, path
        assert source.index("check_parameters") < source.index("resolve_setting"), path


def test_a_real_notebook_under_plain_papermill_stops_at_a_bad_parameter(tmp_path):
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebook = REPO / "notebooks" / "vitad" / "00_method.ipynb"
    start = time.time()
    with pytest.raises(PapermillExecutionError) as caught:
        papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), parameters={"categroy": "washer"},
                                   cwd=str(notebook.parent), progress_bar=False)
    assert caught.value.ename == "ParameterError" and "categroy passed but not declared" in caught.value.evalue
    cells = json.loads((tmp_path / "out.ipynb").read_text())["cells"]
    ran = [c for c in cells if c["cell_type"] == "code" and c.get("execution_count")]
    assert "check_parameters" in "".join(ran[-1]["source"]) and len(ran) == 3  # parameters, injected, this one
    assert time.time() - start < 120


# ------------------------------------------------------------------------------------------ 7. minor
def test_a_download_without_a_top_folder_gets_the_usual_folder_mode(tmp_path):
    import hashlib
    import tarfile

    from adlib.data.download import download_dataset

    archive = tmp_path / "btad.tar.gz"
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(buffer, format="PNG")
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("01/train/ok/0000.png", "01/test/ok/0000.png"):
            info = tarfile.TarInfo(name)
            info.size = len(buffer.getvalue())
            tar.addfile(info, io.BytesIO(buffer.getvalue()))
    target = download_dataset("btad", tmp_path / "data", url=archive.as_uri(),
                              sha256=hashlib.sha256(archive.read_bytes()).hexdigest(), progress=False)
    umask = os.umask(0o022)
    os.umask(umask)
    assert (target / "01" / "train").is_dir()
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700


def test_a_checkpoint_names_the_run_that_wrote_it(tmp_path, capsys, monkeypatch):
    """A run killed mid-training leaves its newer checkpoint beside the older run's JSON: the run ids differ."""
    from adlib import engine

    _category(tmp_path)
    ckpt, out = tmp_path / "model.pt", tmp_path / "r.json"
    extra = ("--checkpoint", str(ckpt), "--json", str(out), "--epochs", "2", "--set", "m=1", "--set", "d_state=4")
    assert main(_run(tmp_path, *extra, model="varad")) == 0
    record = json.loads(out.read_text())
    saved = torch.load(ckpt, weights_only=False)
    assert saved["extra"]["run_id"] == record["fit"]["run_id"] and saved["epoch"] == 2

    real = engine.save_checkpoint

    def killed(model, path, epoch, extra=None):  # the process dies right after the first epoch's checkpoint
        real(model, path, epoch, extra)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        main(_run(tmp_path, *extra, model="varad"))
    newer = torch.load(ckpt, weights_only=False)
    assert newer["epoch"] == 1 and newer["extra"]["run_id"] != json.loads(out.read_text())["fit"]["run_id"]
