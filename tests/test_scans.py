import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from adlib import scans
from adlib.scans import (
    CURVES,
    TRANSFORMS,
    draw_scan,
    from_sequence,
    inverse,
    mambaad_directions,
    scan_order,
    step_lengths,
    to_sequence,
    varad_directions,
)

SIZES = [(1, 1), (1, 7), (7, 1), (2, 2), (5, 5), (6, 4), (16, 16), (13, 9), (4, 5), (9, 13)]


def _paper_hilbert(n: int) -> np.ndarray:
    """MambaAD eq. (9): the n-order Hilbert matrix (entries 1..4^n give the visiting order)."""
    hm = np.array([[1, 2], [4, 3]])
    for k in range(1, n):
        e, q = np.ones_like(hm), 4**k
        if k % 2 == 0:
            hm = np.block([[hm, q * e + hm.T], [(4 * q + 1) * e - hm[::-1, :], (3 * q + 1) * e - hm[:, ::-1].T]])
        else:
            hm = np.block([[hm, (4 * q + 1) * e - hm[:, ::-1]], [q * e + hm.T, (3 * q + 1) * e - hm.T[:, ::-1]]])
    return hm


def _visit_grid(order: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return inverse(order).view(h, w)


@pytest.mark.parametrize("curve", list(CURVES))
@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("h,w", SIZES)
def test_every_order_is_a_permutation_with_exact_inverse(curve, transform, h, w):
    order = scan_order(curve, h, w, transform)
    assert order.dtype == torch.long and order.shape == (h * w,)
    assert torch.equal(order.sort().values, torch.arange(h * w))
    x = torch.randn(2, 3, h, w)
    seq = to_sequence(x, order)
    assert torch.equal(seq, x.flatten(-2)[..., order])
    assert torch.equal(from_sequence(seq, inverse(order), h, w), x)
    rev = scan_order(curve, h, w, transform, reverse=True)
    assert torch.equal(rev, order.flip(0))


def test_known_small_orders():
    assert _visit_grid(scan_order("raster", 2, 3), 2, 3).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert _visit_grid(scan_order("snake", 3, 3), 3, 3).tolist() == [[0, 1, 2], [5, 4, 3], [6, 7, 8]]
    # JPEG zigzag on 4x4.
    assert _visit_grid(scan_order("zigzag", 4, 4), 4, 4).tolist() == [
        [0, 1, 5, 6],
        [2, 4, 7, 12],
        [3, 8, 11, 13],
        [9, 10, 14, 15],
    ]
    # Morton order: Z inside every 2x2 block, blocks in Z order; absent cells skipped on 3x5.
    assert _visit_grid(scan_order("zorder", 4, 4), 4, 4).tolist() == [
        [0, 1, 4, 5],
        [2, 3, 6, 7],
        [8, 9, 12, 13],
        [10, 11, 14, 15],
    ]
    assert _visit_grid(scan_order("zorder", 3, 5), 3, 5).tolist() == [
        [0, 1, 4, 5, 12],
        [2, 3, 6, 7, 13],
        [8, 9, 10, 11, 14],
    ]
    # Aliases with MambaAD's names.
    assert torch.equal(scan_order("sweep", 3, 4), scan_order("raster", 3, 4))
    assert torch.equal(scan_order("scan", 3, 4), scan_order("snake", 3, 4))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_hilbert_matches_mambaad_equation_9_on_power_of_two_squares(n):
    # Eq. (9) alternates the curve's orientation with the order's parity; ours always starts top-left and
    # ends top-right: equal for even n, the transpose for odd n.
    s = 2**n
    ours = _visit_grid(scan_order("hilbert", s, s), s, s).numpy() + 1
    paper = _paper_hilbert(n)
    assert np.array_equal(ours, paper if n % 2 == 0 else paper.T)


def test_generalized_hilbert_steps_between_neighbours_for_all_sizes():
    for h in range(1, 34):
        for w in range(1, 34):
            order = scan_order("hilbert", h, w)
            dr, dc = step_lengths(order, w)
            if h * w > 1:
                assert int(torch.maximum(dr.abs(), dc.abs()).max()) <= 1, (h, w)
            diagonal = int(((dr.abs() + dc.abs()) == 2).sum())
            # A diagonal step is needed only when the long side is odd and the short side even (> 2);
            # then exactly one.
            expected = 1 if max(h, w) % 2 == 1 and min(h, w) % 2 == 0 and min(h, w) > 2 else 0
            assert diagonal == expected, (h, w, diagonal)
            assert int(order[0]) == 0  # starts top-left, ends at the other corner of the longer side
            short = 1 if min(h, w) == 2 and max(h, w) % 2 == 1 else 0  # 2 x odd: ends one cell short
            assert int(order[-1]) == (w - 1 - short if w >= h else (h - 1 - short) * w)


@pytest.mark.parametrize("h,w", SIZES)
def test_snake_and_zigzag_step_between_neighbours(h, w):
    dr, dc = step_lengths(scan_order("snake", h, w), w)
    assert bool(((dr.abs() + dc.abs()) == 1).all())
    dr, dc = step_lengths(scan_order("zigzag", h, w), w)
    assert bool((torch.maximum(dr.abs(), dc.abs()) == 1).all())


def test_transforms_read_the_rearranged_grid():
    h, w = 3, 5
    x = torch.arange(h * w).view(h, w)
    for name, fn in TRANSFORMS.items():
        assert torch.equal(to_sequence(x, scan_order("raster", h, w, name)), fn(x).reshape(-1)), name
    assert torch.equal(to_sequence(x, scan_order("raster", h, w, "transpose")), x.t().reshape(-1))


@pytest.mark.parametrize("h,w", [(1, 1), (1, 7), (7, 1), (5, 5), (6, 4), (13, 9)])
def test_varad_directions(h, w):
    dirs = varad_directions(h, w)
    assert list(dirs) == ["row_tl", "row_br", "col_tr", "col_bl"]
    x = torch.arange(h * w).view(h, w)
    assert torch.equal(dirs["row_tl"].order, torch.arange(h * w))
    assert torch.equal(dirs["row_br"].order, dirs["row_tl"].order.flip(0))
    expected_col_tr = torch.tensor([r * w + c for c in reversed(range(w)) for r in range(h)])
    assert torch.equal(dirs["col_tr"].order, expected_col_tr)
    assert torch.equal(dirs["col_bl"].order, expected_col_tr.flip(0))
    assert dirs["row_tl"].span == dirs["row_br"].span == w
    assert dirs["col_tr"].span == dirs["col_bl"].span == h
    for name, d in dirs.items():
        assert d.name == name
        assert torch.equal(from_sequence(to_sequence(x, d.order), d.inverse, h, w), x)
    # col_tr starts at the top-right corner and ends bottom-left.
    assert int(dirs["col_tr"].order[0]) == w - 1 and int(dirs["col_tr"].order[-1]) == (h - 1) * w


@pytest.mark.parametrize("curve", list(CURVES))
def test_mambaad_eight_directions(curve):
    h, w = 6, 4
    dirs = mambaad_directions(h, w, curve)
    assert list(dirs) == [
        "forward", "reverse", "wh_forward", "wh_reverse",
        "rot90_forward", "rot90_reverse", "wh_rot90_forward", "wh_rot90_reverse",
    ]  # fmt: skip
    x = torch.randn(2, 8, h, w)
    for name, d in dirs.items():
        assert torch.equal(from_sequence(to_sequence(x, d.order), d.inverse, h, w), x), name
    for fwd in ("forward", "wh_forward", "rot90_forward", "wh_rot90_forward"):
        assert torch.equal(dirs[fwd.replace("forward", "reverse")].order, dirs[fwd].order.flip(0))
    assert torch.equal(dirs["forward"].order, scan_order(curve, h, w))
    assert torch.equal(to_sequence(x, dirs["wh_forward"].order), to_sequence(x.transpose(-1, -2), scan_order(curve, w, h)))
    rot = torch.rot90(x, 1, (-2, -1))
    assert torch.equal(to_sequence(x, dirs["rot90_forward"].order), to_sequence(rot, scan_order(curve, w, h)))
    assert list(mambaad_directions(h, w, curve, count=4)) == list(dirs)[:4]


@pytest.mark.parametrize("curve,distinct", [("raster", 8), ("zorder", 8), ("zigzag", 8), ("snake", 6), ("hilbert", 6)])
def test_mambaad_directions_distinct_sequences_on_square_grids(curve, distinct):
    # Curves symmetric under the end-swapping mirror repeat one reading reversed (see mambaad_directions).
    for s in (8, 16):
        dirs = mambaad_directions(s, s, curve)
        assert len({tuple(d.order.tolist()) for d in dirs.values()}) == distinct
    dirs = mambaad_directions(16, 16, "hilbert")
    assert torch.equal(dirs["wh_rot90_forward"].order, dirs["reverse"].order)


def test_orders_are_cached():
    assert scan_order("hilbert", 13, 9) is scan_order("hilbert", 13, 9)
    assert varad_directions(5, 7)["col_tr"] is varad_directions(5, 7)["col_tr"]


def test_bad_input_errors_name_the_parameter():
    with pytest.raises(ValueError, match="curve"):
        scan_order("spiral", 4, 4)
    with pytest.raises(ValueError, match="transform"):
        scan_order("raster", 4, 4, "mirror")
    with pytest.raises(ValueError, match="grid size"):
        scan_order("raster", 0, 4)
    with pytest.raises(ValueError, match="count"):
        mambaad_directions(4, 4, "hilbert", count=3)


def test_draw_scan_returns_axes_with_the_path():
    import matplotlib.pyplot as plt

    h, w = 5, 6
    ax = draw_scan(scan_order("hilbert", h, w), h, w, title="hilbert")
    assert len(ax.collections) == 1
    segments = ax.collections[0].get_segments()
    assert len(segments) == h * w - 1
    assert np.allclose(segments[0][0], [0, 0])  # starts at the top-left cell (x=col, y=row)
    assert len(ax.lines) == 2  # start and end markers
    fig, given = plt.subplots()
    assert draw_scan(scan_order("raster", 1, 1), 1, 1, ax=given) is given
    with pytest.raises(ValueError, match="h\\*w"):
        draw_scan(scan_order("raster", 2, 2), 3, 3)
    fig = scans.draw_directions(mambaad_directions(8, 8, "hilbert"), 8, 8)
    assert len(fig.axes) == 8 and [ax.get_title() for ax in fig.axes][:2] == ["forward", "reverse"]
    assert all(len(ax.collections) == 1 for ax in fig.axes)
    plt.close("all")
