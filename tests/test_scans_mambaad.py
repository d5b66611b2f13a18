"""MambaAD's scans: the paper's Eq. (9), the release's orders (golden vectors), direction sets, Fig. 3."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from adlib import scans
from adlib.scans import (
    MAMBAAD_METHODS,
    from_sequence,
    hilbert_matrix_eq9,
    hybrid_directions,
    inverse,
    mambaad_directions,
    scan_order,
    stack_directions,
    step_lengths,
    to_sequence,
)

# Visiting orders of MambaAD's released HSCANS (numpy-hilbert-curve 1.0.1, pyzorder 0.0.2), from
# research/anchors.md section 2.4: the j-th sequence element is pixel order[j] (row-major numbering).
GOLDEN = {
    ("hilbert", 2): [0, 2, 3, 1],
    ("hilbert", 4): [0, 1, 5, 4, 8, 12, 13, 9, 10, 14, 15, 11, 7, 6, 2, 3],
    ("hilbert", 8): [0, 8, 9, 1, 2, 3, 11, 10, 18, 19, 27, 26, 25, 17, 16, 24, 32, 33, 41, 40, 48, 56, 57, 49, 50,
                     58, 59, 51, 43, 42, 34, 35, 36, 37, 45, 44, 52, 60, 61, 53, 54, 62, 63, 55, 47, 46, 38, 39, 31,
                     23, 22, 30, 29, 28, 20, 21, 13, 12, 4, 5, 6, 14, 15, 7],
    ("zorder", 4): [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15],
    ("zigzag", 4): [0, 1, 4, 8, 5, 2, 3, 6, 9, 12, 13, 10, 7, 11, 14, 15],
    ("scan", 4): [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11, 15, 14, 13, 12],
}


@pytest.mark.parametrize("method,size", list(GOLDEN))
def test_orders_match_the_release_golden_vectors(method, size):
    assert scan_order(method, size, size).tolist() == GOLDEN[(method, size)]


def test_sweep_is_the_release_raster():
    assert scan_order("sweep", 8, 8).tolist() == list(range(64))


def _is_hilbert_path(visit: np.ndarray) -> bool:
    """A permutation of 1..N whose consecutive values sit in 4-neighbouring cells."""
    n = visit.size
    if sorted(visit.ravel().tolist()) != list(range(1, n + 1)):
        return False
    where = {int(v): divmod(i, visit.shape[1]) for i, v in enumerate(visit.ravel())}
    return all(abs(where[v][0] - where[v + 1][0]) + abs(where[v][1] - where[v + 1][1]) == 1 for v in range(1, n))


def test_eq9_base_case_is_printed_h1():
    assert hilbert_matrix_eq9(1).tolist() == [[1, 2], [4, 3]]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])  # 2x2 .. 32x32 (4x4 to 32x32 are orders 2-5)
def test_eq9_as_printed_is_a_hilbert_path_and_equals_ours_up_to_its_stated_orientation(n):
    paper = hilbert_matrix_eq9(n)
    s = 2**n
    assert paper.shape == (s, s) and _is_hilbert_path(paper)
    ours = inverse(scan_order("hilbert", s, s)).view(s, s).numpy() + 1
    # Eq. (9) alternates orientation with the order's parity: equal for even n, transposed for odd n.
    assert np.array_equal(ours, paper if n % 2 == 0 else paper.T)


def _read_with_visit_matrix(grid: torch.Tensor, visit: np.ndarray) -> torch.Tensor:
    """Sequence of a square grid's cells in the order a visit matrix (entries 1..N) gives."""
    order = torch.from_numpy(np.argsort(visit.ravel(), kind="stable"))
    return grid.reshape(-1)[order]


@pytest.mark.parametrize("n", [2, 3, 4])
def test_eight_directions_are_the_same_set_with_the_papers_eq9_curve(n):
    # Whatever orientation the base curve has (Eq. 9's or ours), the release's 8 readings are the same set.
    s = 2**n
    g = torch.arange(s * s).view(s, s)
    views = [g, g.t(), torch.rot90(g, 1, (0, 1)), torch.rot90(g, 1, (0, 1)).t()]
    paper = set()
    for v in views:
        seq = _read_with_visit_matrix(v, hilbert_matrix_eq9(n))
        paper |= {tuple(seq.tolist()), tuple(seq.flip(0).tolist())}
    ours = {tuple(d.order.tolist()) for d in mambaad_directions(s, s, "hilbert").values()}
    assert ours == paper


@pytest.mark.parametrize("method", MAMBAAD_METHODS)
@pytest.mark.parametrize("h,w", [(7, 7), (14, 14), (7, 9), (6, 10), (8, 8), (1, 5)])
def test_every_method_and_direction_is_a_stored_bijection_at_any_size(method, h, w):
    x = torch.randn(2, 3, h, w)
    for variant in ("release", "figure"):
        for name, d in mambaad_directions(h, w, method, 8, variant).items():
            assert torch.equal(d.order.sort().values, torch.arange(h * w)), (name, variant)
            assert torch.equal(d.inverse, inverse(d.order))
            assert torch.equal(from_sequence(to_sequence(x, d.order), d.inverse, h, w), x)


def test_release_hilbert_set_has_six_distinct_sequences_the_figures_eight():
    for s in (4, 8, 16):
        release = mambaad_directions(s, s, "hilbert", 8, "release")
        figure = mambaad_directions(s, s, "hilbert", 8, "figure")
        assert len({tuple(d.order.tolist()) for d in release.values()}) == 6
        assert len({tuple(d.order.tolist()) for d in figure.values()}) == 8
        # the release's (vii)/(viii) repeat (ii)/(i); the figure's (vii) is the release's (v)
        assert torch.equal(release["wh_rot90_forward"].order, release["reverse"].order)
        assert torch.equal(figure["wh_rot90_forward"].order, release["rot90_forward"].order)
    # printed Fig. 3(a) panel (v) on 4x4: starts bottom-left, steps right then up, ends bottom-right
    v = figure = mambaad_directions(4, 4, "hilbert", 8, "figure")["rot90_forward"].order
    assert [divmod(int(i), 4) for i in v[:4]] == [(3, 0), (3, 1), (2, 1), (2, 0)] and divmod(int(v[-1]), 4) == (3, 3)


@pytest.mark.parametrize("scan,count,expected", [
    ("hilbert", 8, [("hilbert", 8)]),
    ("hilbert", 2, [("hilbert", 2)]),
    ("sweep", 8, [("sweep", 8)]),
    ("zigzag+hilbert", 8, [("zigzag", 4), ("hilbert", 4)]),
    ("scan+zorder+zigzag+hilbert", 8, [("scan", 2), ("zorder", 2), ("zigzag", 2), ("hilbert", 2)]),
])
def test_hybrid_directions_split_table3_rows(scan, count, expected):
    dirs = hybrid_directions(7, 9, scan, count)
    assert len(dirs) == count
    names = [k.split("/") for k in dirs]
    for method, per in expected:
        mine = [d for m, d in names if m == method]
        assert mine == list(mambaad_directions(7, 9, method, per))  # the first `per` of the paper's list
        for d in mine:
            assert torch.equal(dirs[f"{method}/{d}"].order, mambaad_directions(7, 9, method, 8)[d].order)


def test_hybrid_directions_errors_name_the_problem():
    with pytest.raises(ValueError, match="scan="):
        hybrid_directions(4, 4, "spiral", 8)
    with pytest.raises(ValueError, match="scan="):
        hybrid_directions(4, 4, "hilbert+hilbert", 8)
    with pytest.raises(ValueError, match="directions=6"):
        hybrid_directions(4, 4, "zigzag+hilbert", 6)
    with pytest.raises(ValueError, match="variant"):
        mambaad_directions(4, 4, "hilbert", 8, "mirror")


def test_stack_directions_gathers_all_directions_at_once():
    h, w = 5, 6
    dirs = hybrid_directions(h, w, "hilbert", 8)
    orders, inverses = stack_directions(dirs)
    assert orders.shape == inverses.shape == (8, h * w)
    x = torch.randn(2, 3, h * w)
    seqs = x[..., orders]  # (2, 3, K, L) in one gather
    for k, d in enumerate(dirs.values()):
        assert torch.equal(seqs[:, :, k], x[..., d.order])
    back = torch.gather(seqs, 3, inverses.expand(2, 3, -1, -1))
    assert torch.equal(back, x[:, :, None].expand(-1, -1, 8, -1))


def test_hilbert_steps_stay_local_at_non_power_of_two_sizes():
    # 14 x 14 (a 224 px input's stride-16 map): every step a 4-neighbour, no silent holes as in the release
    order = scan_order("hilbert", 14, 14)
    dr, dc = step_lengths(order, 14)
    assert bool(((dr.abs() + dc.abs()) == 1).all())


def test_draw_mambaad_scans_reproduces_fig3_layout():
    import matplotlib.pyplot as plt

    fig = scans.draw_mambaad_scans(8, variant="figure", hilbert_size=4)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 12
    assert titles[0].startswith("(a) hilbert (i)") and titles[7].startswith("hilbert (viii)")
    assert titles[8].startswith("(b) (I) sweep") and titles[11].endswith("zigzag")
    assert len(fig.axes[0].collections[0].get_segments()) == 15  # (a) on 4x4 as printed
    assert len(fig.axes[8].collections[0].get_segments()) == 63  # (b) on 8x8
    assert len(fig.axes[8].texts) == 64  # cell numbers as printed
    full = scans.draw_mambaad_scans(8, every_direction=True)
    assert len(full.axes) == 40 and all(len(ax.collections[0].get_segments()) == 63 for ax in full.axes)
    plt.close("all")
