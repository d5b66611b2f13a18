"""ViTAD paper helpers (adlib/papers/vitad.py): Table IV's properties derived from the built architectures agree
with the paper's printed cells, and the rule of each cell is recorded; the structure diagram draws its boxes;
the real-data setting follows the profile's declaration."""
from __future__ import annotations

import pytest

from adlib import papers, plots, results, study
from adlib.papers import vitad as vitad_paper


@pytest.fixture(scope="module")
def setting():
    return study.resolve_setting(papers.get("vitad"), profile="smoke")


@pytest.mark.parametrize("method", ["vitad", "uniad"])
def test_table4_properties_match_the_paper(setting, method):
    rows = vitad_paper.property_rows(setting, methods=(method,))
    name = setting.paper.methods[method]
    assert set(rows["metric"]) == set(vitad_paper.PROPERTY_COLUMNS)
    assert rows["note"].str.len().gt(0).all()
    paper = results.paper_table("vitad", "table4")
    paper = paper[paper["method"] == name].set_index("metric")["value"]
    ours = rows.set_index("metric")["value"]
    assert ours.to_dict() == paper.loc[ours.index].to_dict()


def test_table4_patchcore_is_embedding_based(setting):
    rows = vitad_paper.property_rows(setting, methods=("patchcore",)).set_index("metric")["value"]
    assert rows["category_emb"] == 1.0 and rows["category_rec"] == 0.0 and rows["pyramidal_decoder"] == 0.0


def test_box_rows_draws_every_box():
    fig = plots.box_rows({"a": [("E", "x"), ("F", "y"), ("D", "z")], "b": [("only", "w")]}, title="t")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert {"E", "F", "D", "only", "a", "b"} <= set(texts)
    with pytest.raises(ValueError, match="no rows"):
        plots.box_rows({})


def test_real_data_setting_follows_the_profile_and_explicit_values(setting):
    real = vitad_paper.real_data_setting(setting)
    declared = setting.grids["real_data"]
    assert (real.image_size, real.max_train, real.max_test, real.epochs) == (
        declared["image_size"], declared["max_train"], declared["max_test"], declared["epochs"])
    assert real.image_size != setting.image_size and real.seeds == setting.seeds  # only the declared fields move
    explicit = vitad_paper.real_data_setting(setting, image_size=96, epochs=2)
    assert (explicit.image_size, explicit.epochs) == (96, 2)
    paper = study.resolve_setting(papers.get("vitad"), profile="paper", synthetic=False)
    assert vitad_paper.real_data_setting(paper) == paper  # a profile without real_data keeps its setting
