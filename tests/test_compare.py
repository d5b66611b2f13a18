"""`python -m adlib compare`: several models on a user's folder through the one run path, a CSV and a page with the
metrics (mean ± std over seeds, per category and mean) and every model's maps; a model that cannot run is listed
with its reason while the others run; bad options are one line."""
from __future__ import annotations

import base64
import io
import re

import pandas as pd
import pytest
from PIL import Image

from adlib.app.cli import main
from test_runcache import _category

TINY = ["--image-size", "64", "--epochs", "1", "--set", "pretrained=False", "--set", "decoder_blocks=(1, 1, 1)",
        "--set", "ocbe_blocks=1", "--set", "grid=8", "--set", "codebook_size=8", "--set", "hvq_dim=16",
        "--no-progress"]


@pytest.fixture(scope="module")
def mine(tmp_path_factory):
    """Two categories; 'few' has two training images only, too few for LADMIM to hold any out."""
    root = tmp_path_factory.mktemp("mine") / "parts"
    _category(root, "widget", train=6)
    _category(root, "few", train=2, seed=3)
    return root


def test_compare_writes_the_csv_and_a_page_with_every_models_maps(mine, tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--data-root", str(mine), "--models", "patchcore,rd4ad,ladmim", "--seeds", "0,1",
               "--out", str(out), *TINY])
    printed = capsys.readouterr().out
    assert rc == 0
    rows = pd.read_csv(out / "results.csv")
    assert set(rows["seed"]) == {0, 1} and set(rows["fit"].dropna()) == {"trained"}
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["method"]) == {"PatchCore", "RD4AD", "LADMIM"}
    assert set(summary["category"]) == {"few", "widget", "mean"} and (summary["seeds"] == 2).all()
    for method, part in summary.groupby("method"):
        per = part.set_index("category")
        assert (per["fit_s"] >= 0).all() and (per["images_per_s"] > 0).all()
        if method == "LADMIM":  # not run on 'few': no mean over the categories
            assert pd.isna(per.loc["few", "pixel_auroc"])
            assert pd.isna(per.loc["mean", "pixel_auroc"]) and per.loc["widget", "pixel_auroc"] >= 0
            continue
        assert per.loc["mean", "pixel_auroc"] == pytest.approx(per.loc[["few", "widget"], "pixel_auroc"].mean())
        assert (per["pixel_auroc_std"] >= 0).all()
    page = (out / "index.html").read_text()
    not_run = page.split("Models not run")[1].split("</ul>")[0]
    assert "ladmim" in not_run and "parts/few" in not_run and "no validation split" in not_run
    assert "not run: ladmim" in printed
    for category, models in (("parts/widget", ("PatchCore", "RD4AD", "LADMIM")), ("parts/few", ("PatchCore", "RD4AD"))):
        section = page.split(f"<h3>{category}</h3>")[1].split("</table>")[0]
        assert all(section.count(f"<th>{m}</th>") == 1 for m in models) and section.count("<th>LADMIM</th>") == (
            "LADMIM" in models)
        assert "<th>image</th>" in section and "<th>ground truth</th>" in section
        assert section.count("<th>spot<br>") == 2 and section.count("<th>good<br>") == 2  # defective and good
        images = re.findall(r"base64,([A-Za-z0-9+/=]+)", section)
        assert len(images) == (2 + len(models)) * 4  # image, ground truth and each model, over four test images
        assert Image.open(io.BytesIO(base64.b64decode(images[0]))).size == (128, 128)
    assert "src='http" not in page  # self-contained


def test_a_second_compare_reads_the_fits_from_the_run_cache(mine, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADLIB_RUN_CACHE", "1")
    monkeypatch.setenv("ADLIB_RUN_CACHE_DIR", str(tmp_path / "runs"))
    argv = ["compare", "--data-root", str(mine), "--models", "patchcore", "--categories", "widget", "--image-size",
            "64", "--set", "pretrained=False", "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 0
    assert main(argv + ["--out", str(tmp_path / "b")]) == 0
    first, second = (pd.read_csv(tmp_path / x / "summary.csv") for x in ("a", "b"))
    assert first["fits"].tolist() == ["1 trained"] and second["fits"].tolist() == ["1 cache"]
    assert first["pixel_auroc"].tolist() == second["pixel_auroc"].tolist()


@pytest.mark.parametrize("extra, needle", [
    (("--models", "patchcore,nope"), "--models nope: unknown"),
    (("--set", "no_such_field=1"), "no_such_field"),
    (("--seeds", "a,b"), "--seeds"),
    (("--categories", "widget,absent"), "absent"),
])
def test_bad_options_are_one_line(mine, tmp_path, capsys, extra, needle):
    assert main(["compare", "--data-root", str(mine), "--out", str(tmp_path / "x"), *TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and not (tmp_path / "x" / "index.html").exists()


def test_data_root_is_required(tmp_path, capsys):
    assert main(["compare", "--out", str(tmp_path / "x")]) == 2
    assert "--data-root" in capsys.readouterr().err
