"""`python -m adlib run`: end to end on a tiny generated MVTec-layout dataset, and clear errors on bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from adlib.app.cli import main


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """widget/{train/good, test/good, test/spot, ground_truth/spot}: smooth textures, spots as defects."""
    root = tmp_path_factory.mktemp("tiny") / "tinyset"
    rng = np.random.default_rng(0)
    cat = root / "widget"

    def texture() -> np.ndarray:
        small = rng.uniform(90, 160, size=(4, 4, 3))
        return np.kron(small, np.ones((16, 16, 1))).astype(np.uint8)

    for split, count in [("train/good", 6), ("test/good", 3), ("test/spot", 3)]:
        (cat / split).mkdir(parents=True)
        for i in range(count):
            img = texture()
            if split == "test/spot":
                img[20:36, 24:40] = (255, 20, 20)
                mask = np.zeros((64, 64), np.uint8)
                mask[20:36, 24:40] = 255
                (cat / "ground_truth/spot").mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(cat / "ground_truth/spot" / f"{i:03d}_mask.png")
            Image.fromarray(img).save(cat / split / f"{i:03d}.png")
    return root


def _run(tiny_root, tmp_path, model, *extra):
    out = tmp_path / f"{model}.json"
    rc = main(["run", model, "--data-root", str(tiny_root), "--category", "widget", "--image-size", "64",
               "--json", str(out), "--no-progress", "--set", "pretrained=False", *extra])
    return rc, out


@pytest.mark.parametrize("model, extra", [
    ("patchcore", ()),
    ("varad", ("--epochs", "1", "--batch-size", "3", "--set", "m=1", "--set", "d_state=4")),
])
def test_run_writes_the_documented_json(tiny_root, tmp_path, capsys, model, extra):
    rc, out = _run(tiny_root, tmp_path, model, *extra)
    assert rc == 0
    record = json.loads(out.read_text())
    assert set(record["image"]) >= {"auroc", "ap", "f1max"}
    assert set(record["pixel"]) >= {"auroc", "ap", "f1max", "aupro"}
    assert all(0.0 <= v <= 1.0 for v in [*record["image"].values(), *record["pixel"].values()])
    assert record["model"] == model and record["category"] == "widget" and record["profile"] == "smoke"
    assert record["config"]["model"]["image_size"] == 64 and record["config"]["model"]["pretrained"] is False
    assert record["timing"]["train_s"] >= 0 and record["timing"]["fps"] > 0
    assert "provenance" in record and record["fit"]["train_images"] == 6
    printed = capsys.readouterr().out
    assert "auroc" in printed and "pixel" in printed


@pytest.mark.parametrize("extra, needle", [
    (("--category", "nope"), "--category"),
    (("--set", "not_a_field=1"), "not_a_field"),
    (("--image-size", "0"), "--image-size"),
    (("--set", "adapter=lora"), "LoRA"),
    (("--set", "m=40"), "m="),
    (("--device", "nonsense"), "--device"),
])
def test_bad_input_is_one_clear_line(tiny_root, tmp_path, capsys, extra, needle):
    out = tmp_path / "x.json"
    args = ["run", "varad", "--data-root", str(tiny_root), "--category", "widget", "--no-progress",
            "--set", "pretrained=False", "--image-size", "64", "--json", str(out)]
    rc = main(args + list(extra))
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err
    assert not out.exists()


def test_missing_data_root_and_unknown_model(tmp_path, capsys):
    assert main(["run", "patchcore", "--data-root", str(tmp_path / "absent"), "--category", "x"]) == 2
    assert "--data-root" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "not_a_model"])
    assert exit_info.value.code == 2
    assert "not_a_model" in capsys.readouterr().err
