"""Scan orders: ways to read an (h, w) grid of tokens as a 1-D sequence, with exact inverses.

Convention (shared by every model): an order is a LongTensor of length ``h * w`` with
``seq = flat[..., order]`` where ``flat`` is the row-major flattening of the grid; ``inv = inverse(order)``
undoes it: ``flat = seq[..., inv]``.

Curves (``CURVES``; MambaAD's names in brackets):

- ``raster`` [Sweep]: row by row, each left to right.
- ``snake`` [Scan]: boustrophedon; even rows left to right, odd rows right to left.
- ``zorder`` [Z-order]: cells sorted by the Morton code of (row, col) (bits interleaved, column bit lowest).
  For sizes that are not powers of two this is the power-of-two Z curve with absent cells skipped, so it is
  a valid permutation of any h x w grid (jumps are expected, as in the square case).
- ``zigzag`` [Zigzag]: JPEG's zigzag over anti-diagonals, starting (0, 0) -> (0, 1) -> (1, 0) -> (2, 0) ...
- ``hilbert`` [Hilbert]: the *generalized* Hilbert curve ("gilbert", J. Cerveny's algorithm, written here
  from its description) for any h x w, not a power-of-two curve with cells skipped. It starts at the
  top-left cell and runs along the longer side (ending top-right when w >= h, bottom-left otherwise). On
  2^n x 2^n grids it is MambaAD's eq. (9) Hilbert matrix (for odd n its transpose: eq. (9) flips the
  orientation with the order's parity). Every step goes to a 4-neighbour, except on grids whose longer
  side is odd and shorter side even and > 2: there exactly one step is diagonal (an 8-neighbour). No
  4-neighbour path between those two corners exists there (colour the grid like a chessboard: a path over
  an even number of cells must end on the other colour); on 2 x odd grids the curve instead ends one cell
  short of the corner and keeps 4-neighbour steps. Checked for all sizes up to 33 x 33 in
  ``tests/test_scans.py``.

Orientations (``TRANSFORMS``) rearrange the grid before the curve reads it: ``transpose`` (MambaAD's
"wh"), ``rot90``/``rot180``/``rot270`` (counter-clockwise, as ``torch.rot90``), ``flip_lr``, ``flip_ud``,
``rot90_transpose`` (rotate, then transpose; MambaAD's "wh rotated 90"). Orders are cached by
(curve, h, w, transform, reverse); treat them as read-only and move them to your device
(``order.to(x.device)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterator

import numpy as np
import torch

__all__ = [
    "CURVES",
    "TRANSFORMS",
    "Direction",
    "scan_order",
    "inverse",
    "direction",
    "varad_directions",
    "mambaad_directions",
    "hybrid_directions",
    "stack_directions",
    "hilbert_matrix_eq9",
    "MAMBAAD_METHODS",
    "to_sequence",
    "from_sequence",
    "draw_scan",
    "draw_directions",
    "draw_mambaad_scans",
    "step_lengths",
]


# --------------------------------------------------------------------------------------------- curves
# Each curve maps (h, w) to an int64 numpy array of row-major cell indices in visiting order.


def _raster(h: int, w: int) -> np.ndarray:
    return np.arange(h * w, dtype=np.int64)


def _snake(h: int, w: int) -> np.ndarray:
    grid = np.arange(h * w, dtype=np.int64).reshape(h, w)
    grid[1::2] = grid[1::2, ::-1]
    return grid.reshape(-1)


def _morton_code(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    code = np.zeros_like(rows)
    for bit in range(max(int(max(rows.max(), cols.max())).bit_length(), 1)):
        code |= ((cols >> bit) & 1) << (2 * bit)
        code |= ((rows >> bit) & 1) << (2 * bit + 1)
    return code


def _zorder(h: int, w: int) -> np.ndarray:
    rows, cols = np.divmod(np.arange(h * w, dtype=np.int64), w)
    return np.argsort(_morton_code(rows, cols), kind="stable")


def _zigzag(h: int, w: int) -> np.ndarray:
    out = []
    for s in range(h + w - 1):
        rows = range(max(0, s - w + 1), min(s, h - 1) + 1)
        if s % 2 == 0:  # even anti-diagonals run upwards (bottom-left to top-right), as in JPEG
            rows = reversed(rows)
        out.extend(r * w + (s - r) for r in rows)
    return np.asarray(out, dtype=np.int64)


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def _gilbert(x: int, y: int, ax: int, ay: int, bx: int, by: int) -> Iterator[tuple[int, int]]:
    """Cells (x, y) of the generalized Hilbert curve filling the rectangle spanned by a (major) and b.

    The curve enters at (x, y) and leaves at the far end of the major axis a. It recursively splits the
    rectangle, keeping split lengths even where it can so that every step stays a 4-neighbour move.
    """
    w, h = abs(ax + ay), abs(bx + by)
    dax, day = _sign(ax), _sign(ay)
    dbx, dby = _sign(bx), _sign(by)
    if h == 1:
        for _ in range(w):
            yield x, y
            x, y = x + dax, y + day
        return
    if w == 1:
        for _ in range(h):
            yield x, y
            x, y = x + dbx, y + dby
        return
    ax2, ay2 = ax // 2, ay // 2
    bx2, by2 = bx // 2, by // 2
    w2, h2 = abs(ax2 + ay2), abs(bx2 + by2)
    if 2 * w > 3 * h:
        # Long rectangle: cut across the major axis into two halves, each traversed along a.
        if w2 % 2 and w > 2:
            ax2, ay2 = ax2 + dax, ay2 + day
        yield from _gilbert(x, y, ax2, ay2, bx, by)
        yield from _gilbert(x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by)
    else:
        # Roughly square: go up the left part, across the top, and down the right part (the "U").
        if h2 % 2 and h > 2:
            bx2, by2 = bx2 + dbx, by2 + dby
        yield from _gilbert(x, y, bx2, by2, ax2, ay2)
        yield from _gilbert(x + bx2, y + by2, ax, ay, bx - bx2, by - by2)
        yield from _gilbert(
            x + (ax - dax) + (bx2 - dbx),
            y + (ay - day) + (by2 - dby),
            -bx2,
            -by2,
            -(ax - ax2),
            -(ay - ay2),
        )


def _hilbert(h: int, w: int) -> np.ndarray:
    # x is the column, y the row; the major axis is the longer side.
    cells = _gilbert(0, 0, w, 0, 0, h) if w >= h else _gilbert(0, 0, 0, h, w, 0)
    return np.asarray([y * w + x for x, y in cells], dtype=np.int64)


CURVES: dict[str, Callable[[int, int], np.ndarray]] = {
    "raster": _raster,
    "snake": _snake,
    "zorder": _zorder,
    "zigzag": _zigzag,
    "hilbert": _hilbert,
}
# MambaAD's names for the same curves (Table 3: Sweep, Scan, Z-order, Zigzag, Hilbert).
ALIASES: dict[str, str] = {"sweep": "raster", "scan": "snake", "z-order": "zorder", "boustrophedon": "snake"}


# ----------------------------------------------------------------------------------------- transforms
# A transform rearranges the (h, w) grid of cell indices; the curve then reads the rearranged grid.

TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda g: g,
    "transpose": lambda g: g.t(),
    "rot90": lambda g: torch.rot90(g, 1, (0, 1)),
    "rot180": lambda g: torch.rot90(g, 2, (0, 1)),
    "rot270": lambda g: torch.rot90(g, 3, (0, 1)),
    "flip_lr": lambda g: torch.flip(g, (1,)),
    "flip_ud": lambda g: torch.flip(g, (0,)),
    "rot90_transpose": lambda g: torch.rot90(g, 1, (0, 1)).t(),  # rotate, then swap w and h (= flip_lr)
}


def _check_size(h: int, w: int) -> None:
    if not (isinstance(h, int) and isinstance(w, int)) or h < 1 or w < 1:
        raise ValueError(f"grid size must be two positive ints, got h={h!r}, w={w!r}")


@lru_cache(maxsize=512)
def scan_order(curve: str, h: int, w: int, transform: str = "identity", reverse: bool = False) -> torch.Tensor:
    """Order (LongTensor, length h*w) reading an (h, w) grid along ``curve``.

    ``transform`` (a key of ``TRANSFORMS``) rearranges the grid first; ``reverse`` walks the result backwards.
    """
    name = ALIASES.get(curve, curve)
    if name not in CURVES:
        raise ValueError(f"unknown scan curve {curve!r}; expected one of {sorted(CURVES)} (or {sorted(ALIASES)})")
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown scan transform {transform!r}; expected one of {list(TRANSFORMS)}")
    _check_size(h, w)
    grid = TRANSFORMS[transform](torch.arange(h * w).view(h, w))
    gh, gw = grid.shape
    order = grid.reshape(-1)[torch.from_numpy(CURVES[name](gh, gw))]
    if reverse:
        order = order.flip(0)
    return order.contiguous()


def inverse(order: torch.Tensor) -> torch.Tensor:
    """Inverse permutation: ``seq[..., inverse(order)]`` restores ``flat`` from ``seq = flat[..., order]``."""
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel(), device=order.device)
    return inv


@dataclass(frozen=True, eq=False)
class Direction:
    """One scan direction: ``order``/``inverse`` index tensors and ``span``.

    ``span`` is the length of one line of the scan in the grid the curve reads: the row length w for
    row-spanned directions, the column length h for column-spanned ones (VarAD's M = m * span).
    """

    name: str
    order: torch.Tensor
    inverse: torch.Tensor
    span: int


@lru_cache(maxsize=512)
def direction(name: str, curve: str, h: int, w: int, transform: str = "identity", reverse: bool = False) -> Direction:
    """A named ``Direction`` for ``scan_order(curve, h, w, transform, reverse)`` (cached)."""
    order = scan_order(curve, h, w, transform, reverse)
    if not torch.equal(order.sort().values, torch.arange(h * w)):  # every cell exactly once
        raise AssertionError(f"scan {curve!r} ({transform}, reverse={reverse}) on {h}x{w} is not a bijection")
    span = h if transform in ("transpose", "rot90", "rot270") else w
    return Direction(name=name, order=order, inverse=inverse(order), span=span)


def varad_directions(h: int, w: int) -> dict[str, Direction]:
    """VarAD's four directions over an (h, w) token grid, in this order.

    ``row_tl``: row-major from top-left to bottom-right; ``row_br``: its reverse; ``col_tr``: columns from
    right to left, each top to bottom (starts top-right, ends bottom-left); ``col_bl``: its reverse.
    ``col_tr`` is the raster scan of the grid rotated 90 degrees counter-clockwise.
    """
    return {
        "row_tl": direction("row_tl", "raster", h, w),
        "row_br": direction("row_br", "raster", h, w, reverse=True),
        "col_tr": direction("col_tr", "raster", h, w, "rot90"),
        "col_bl": direction("col_bl", "raster", h, w, "rot90", reverse=True),
    }


# MambaAD Sec. 3.4 "Hybrid Scanning directions": (i) forward, (ii) reverse, (iii) width-height (wh) forward,
# (iv) wh reverse, (v) rotated 90 degrees forward, (vi) rotated 90 degrees reverse, (vii) wh rotated 90
# degrees forward, (viii) wh rotated 90 degrees reverse. "wh" swaps width and height (the transpose A^T).
# "release": what MambaAD's released SS2D computes (x, x^T, rot90(x), rot90(x)^T and their flips).
MAMBAAD_DIRECTIONS: tuple[tuple[str, str, bool], ...] = (
    ("forward", "identity", False),
    ("reverse", "identity", True),
    ("wh_forward", "transpose", False),
    ("wh_reverse", "transpose", True),
    ("rot90_forward", "rot90", False),
    ("rot90_reverse", "rot90", True),
    ("wh_rot90_forward", "rot90_transpose", False),
    ("wh_rot90_reverse", "rot90_transpose", True),
)
# "figure": what the printed Fig. 3(a) draws. Its (v)/(vi) are the curve on rot90(x^T) (= the up-down flip)
# and its (vii)/(viii) the curve on rot90(x), i.e. the release's (v)/(vi). The release's (vii) = rot90(x)^T is
# the left-right flip, under which the Hilbert curve maps onto itself reversed: its (vii)/(viii) repeat
# (ii)/(i), so the release runs 6 distinct Hilbert sequences where the figure shows 8.
MAMBAAD_FIGURE_DIRECTIONS: tuple[tuple[str, str, bool], ...] = (
    ("forward", "identity", False),
    ("reverse", "identity", True),
    ("wh_forward", "transpose", False),
    ("wh_reverse", "transpose", True),
    ("rot90_forward", "flip_ud", False),
    ("rot90_reverse", "flip_ud", True),
    ("wh_rot90_forward", "rot90", False),
    ("wh_rot90_reverse", "rot90", True),
)
DIRECTION_SETS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "release": MAMBAAD_DIRECTIONS,
    "figure": MAMBAAD_FIGURE_DIRECTIONS,
}


def mambaad_directions(h: int, w: int, curve: str = "hilbert", count: int = 8,
                       variant: str = "release") -> dict[str, Direction]:
    """MambaAD's hybrid-scan directions for ``curve`` (MambaAD, Sec. 3.4, Fig. 3a and Table 3).

    ``variant="release"`` (default): the curve read on the grid as is, on its transpose ("wh", A^T), on the
    grid rotated 90 degrees (counter-clockwise, ``torch.rot90(x, 1)``) and on the transpose of the rotated
    grid (which is the left-right flip), each forwards and reversed; this is what MambaAD's released SS2D
    does (``x``, ``x.transpose``, ``rot90(x)``, ``rot90(x).transpose`` and their flips) and what its numbers
    come from. ``variant="figure"``: the eight directions the printed Fig. 3(a) draws (see
    ``MAMBAAD_FIGURE_DIRECTIONS``). ``count`` (1, 2, 4 or 8) keeps the first ``count`` in the paper's order,
    as in its ablation (Table 3, rows 5-7: 2, 4 and 8).

    Faithful to the release, not all eight need differ. A Hilbert curve on a square is symmetric under
    the mirror that swaps its two ends, so one of the four readings repeats another one reversed: on square
    grids the eight release Hilbert directions are six distinct sequences (so are MambaAD's, whatever the
    orientation of its curve); the figure's set has eight. Our curve's orientation follows the aspect ratio
    (see module docs), so on non-square grids even fewer differ; raster, z-order and zigzag give eight.
    """
    if count not in (1, 2, 4, 8):
        raise ValueError(f"count must be 1, 2, 4 or 8 directions, got {count!r}")
    if variant not in DIRECTION_SETS:
        raise ValueError(f"variant={variant!r}: expected one of {sorted(DIRECTION_SETS)}")
    return {name: direction(name, curve, h, w, t, rev) for name, t, rev in DIRECTION_SETS[variant][:count]}


# MambaAD's five scanning methods (Sec. 3.4, Fig. 3, Table 3) in the paper's order, by the paper's names.
MAMBAAD_METHODS: tuple[str, ...] = ("sweep", "scan", "zorder", "zigzag", "hilbert")


def hybrid_directions(h: int, w: int, scan: str = "hilbert", count: int = 8,
                      variant: str = "release") -> dict[str, Direction]:
    """The directions of MambaAD's HS encoder: ``count`` directions split equally over the methods in ``scan``.

    ``scan`` is one method (``"hilbert"``) or several joined by ``+`` (``"zigzag+hilbert"``); each method
    contributes the first ``count / len(methods)`` of ``mambaad_directions`` (1, 2, 4 or 8). Table 3's rows:
    ``("sweep", 8)`` ... ``("hilbert", 2/4/8)`` (rows 1-7), ``("zigzag+hilbert", 8)`` (row 8, 4 + 4) and
    ``("scan+zorder+zigzag+hilbert", 8)`` (row 12, 2 each). The paper does not say which directions a method
    contributes in the mixed rows; the first ones of its list is our reading. Keys are ``method/direction``;
    ``variant`` as in ``mambaad_directions``.
    """
    methods = [m.strip() for m in scan.split("+")]
    bad = [m for m in methods if ALIASES.get(m, m) not in CURVES]
    if bad or not methods or len(set(methods)) != len(methods):
        raise ValueError(f"scan={scan!r}: expected distinct methods from {MAMBAAD_METHODS} joined by '+'")
    if count % len(methods) or count // len(methods) not in (1, 2, 4, 8):
        raise ValueError(f"directions={count} cannot be split equally over {len(methods)} scan method(s) "
                         f"into 1, 2, 4 or 8 each")
    per = count // len(methods)
    out: dict[str, Direction] = {}
    for method in methods:
        for name, d in mambaad_directions(h, w, method, per, variant).items():
            out[f"{method}/{name}"] = d
    return out


def stack_directions(directions: dict[str, Direction], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Orders and inverses of several directions as two (K, L) LongTensors, for one gather over all K."""
    if not directions:
        raise ValueError("directions is empty: expected a dict of name -> Direction")
    orders = torch.stack([d.order for d in directions.values()])
    inverses = torch.stack([d.inverse for d in directions.values()])
    return orders.to(device), inverses.to(device)


def hilbert_matrix_eq9(n: int) -> np.ndarray:
    """MambaAD's Eq. (9) taken literally: the order-n Hilbert matrix H_n (2^n x 2^n, entries 1..4^n).

    H_1 = [[1, 2], [4, 3]]; H_{k+1} is built from H_k by the case for k even or odd, with E the all-one
    matrix, T the transpose, lr/ud the left-right/up-down flips. Entry (r, c) is the step at which cell
    (r, c) is visited. ``scan_order("hilbert", 2^n, 2^n)`` visits cells in this order for even n and in
    the transposed order for odd n (Eq. (9) alternates orientation with the order's parity; the release's
    ``hilbert.decode`` curve and ours do not), so MambaAD's eight directions are the same set either way.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1 (order of the Hilbert matrix), got {n!r}")
    hm = np.array([[1, 2], [4, 3]], dtype=np.int64)
    for k in range(1, n):
        e, q = np.ones_like(hm), 4**k
        if k % 2 == 0:
            hm = np.block([[hm, q * e + hm.T], [(4 * q + 1) * e - hm[::-1, :], (3 * q + 1) * e - hm[:, ::-1].T]])
        else:
            hm = np.block([[hm, (4 * q + 1) * e - hm[:, ::-1]], [q * e + hm.T, (3 * q + 1) * e - hm.T[:, ::-1]]])
    return hm


# ---------------------------------------------------------------------------------------- helpers


def to_sequence(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """(..., h, w) grid to (..., h*w) sequence along ``order``."""
    return x.flatten(-2)[..., order.to(x.device)]


def from_sequence(seq: torch.Tensor, inv: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(..., h*w) sequence back to the (..., h, w) grid with the inverse order ``inv``."""
    return seq[..., inv.to(seq.device)].unflatten(-1, (h, w))


def step_lengths(order: torch.Tensor, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column differences between consecutive cells of a scan over a grid of width w."""
    rows, cols = order // w, order % w
    return rows.diff(), cols.diff()


def draw_scan(order: torch.Tensor, h: int, w: int, ax=None, cmap: str = "viridis", title: str | None = None):
    """Draw the scan path over the grid: a colour-graded line from start (circle) to end (square)."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    order = torch.as_tensor(order).cpu()
    if order.numel() != h * w:
        raise ValueError(f"order has {order.numel()} entries, expected h*w = {h * w}")
    if ax is None:
        _, ax = plt.subplots(figsize=(max(2.0, w * 0.35), max(2.0, h * 0.35)))
    rows, cols = (order // w).numpy(), (order % w).numpy()
    points = np.stack([cols, rows], axis=1).astype(float)
    if len(points) > 1:
        segments = np.stack([points[:-1], points[1:]], axis=1)
        line = LineCollection(segments, cmap=cmap, linewidths=2)
        line.set_array(np.arange(len(segments)))
        ax.add_collection(line)
    colors = plt.get_cmap(cmap)([0.0, 1.0])
    ax.plot(cols[0], rows[0], "o", color=colors[0], markersize=8, label="start")
    ax.plot(cols[-1], rows[-1], "s", color=colors[1], markersize=8, label="end")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return ax


def draw_directions(directions: dict[str, Direction], h: int, w: int, ncols: int = 4, cmap: str = "viridis"):
    """One ``draw_scan`` panel per direction (e.g. ``varad_directions(h, w)``); returns the figure."""
    import matplotlib.pyplot as plt

    if not directions:
        raise ValueError("directions is empty: expected a dict of name -> Direction")
    ncols = min(ncols, len(directions))
    nrows = -(-len(directions) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.4 * ncols, 2.4 * nrows * h / max(w, 1)), squeeze=False)
    for ax, (name, d) in zip(axes.flat, directions.items()):
        draw_scan(d.order, h, w, ax=ax, cmap=cmap, title=name)
    for ax in list(axes.flat)[len(directions):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _number_cells(ax, h: int, w: int) -> None:
    """Write each cell's row-major index, as Fig. 3(b) does."""
    for r in range(h):
        for c in range(w):
            ax.text(c, r, str(r * w + c), ha="center", va="center", fontsize=5, color="0.45")


def draw_mambaad_scans(size: int = 8, variant: str = "release", hilbert_size: int | None = None,
                       every_direction: bool = False, numbers: bool = True, cmap: str = "viridis"):
    """MambaAD's Fig. 3: (a) Hilbert in its 8 directions (i)-(viii), (b) the other four methods (I) Sweep,
    (II) Scan, (III) Z-order, (IV) Zigzag, forward, with cell numbers as printed (``numbers``).

    The print draws (a) on a 4 x 4 grid (``hilbert_size=4``) and (b) on 8 x 8; by default both use ``size``.
    ``variant`` picks the direction set: "release" (what the code and adlib's model run) or "figure" (what the
    printed panels (v)-(viii) show; see ``MAMBAAD_FIGURE_DIRECTIONS``). ``every_direction`` draws all 8
    directions of every method (5 rows x 8 panels), the full set Table 3 ablates. Returns the figure.
    """
    import matplotlib.pyplot as plt

    numerals = ("i", "ii", "iii", "iv", "v", "vi", "vii", "viii")
    hs = hilbert_size or size
    methods = MAMBAAD_METHODS if every_direction else ("hilbert",)
    ncols = 8 if every_direction else 4
    nrows = len(methods) if every_direction else 3
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.35 * nrows), squeeze=False)
    for r, method in enumerate(methods):
        n = hs if method == "hilbert" else size
        dirs = list(mambaad_directions(n, n, method, 8, variant).items())
        for i, (name, d) in enumerate(dirs):
            ax = axes[r, i] if every_direction else axes[i // 4, i % 4]
            part = "(a) " if method == "hilbert" and i == 0 else ""
            draw_scan(d.order, n, n, ax=ax, cmap=cmap, title=f"{part}{method} ({numerals[i]}) {name}")
    if not every_direction:
        for c, method in enumerate(m for m in MAMBAAD_METHODS if m != "hilbert"):
            ax = axes[2, c]
            draw_scan(scan_order(method, size, size), size, size, ax=ax, cmap=cmap,
                      title=f"{'(b) ' if c == 0 else ''}({'I' * (c + 1) if c < 3 else 'IV'}) {method}")
            if numbers:
                _number_cells(ax, size, size)
    for ax in axes.flat:
        ax.title.set_fontsize(7)
    fig.tight_layout()
    return fig
