"""darktable 5.0.1's default Bayer demosaic (RCD), computed exactly and differentiably.

darktable demosaics a Bayer raw with RCD ("ratio corrected demosaicing", L. Sanz Rodriguez)
by default: no green equilibration, no colour smoothing, not dual. This module recomputes
what ``src/iop/demosaicing/rcd.c`` does, vectorised in torch, including the details that
make darktable's output what it is:

- the image border (7 px) is not RCD (:func:`_border`): the outermost 3 px average each
  colour over the 3x3 neighbourhood, the band up to 10 px gets a PPG green (the flatter
  direction's estimate, clamped), the band up to 7 px red and blue from colour differences.
  Images under 18 px in either direction are all border (a 9 px one);
- RCD runs in 112 x 112 tiles that overlap by 2 x 9 px (:func:`_rcd_tiles`); every tile is
  computed on its own, so what a tile does not compute near its own edge (a direction map
  left at zero, a buffer shared by two steps, one a neighbouring tile filled) reaches the
  pixels it writes: reproduced tile by tile;
- RCD's input is ``max(0, x) / s`` and its output ``s * max(0, rgb)`` with ``s`` the pipe's
  processed maximum (the largest white-balance multiplier, at least 1): ``s`` matters only
  through RCD's epsilons (measured: s = 1 instead of 1.8-3.3 gives 93-117 dB, not 153+);
- the diagonal direction statistics (step 4.1) read a buffer that holds every other column,
  so at an R/B photosite in an even column they are taken one column to the right. Kept.

Every step is elementwise arithmetic on shifted copies of the mosaic (no per-pixel Python
loops), in darktable's order of operations. darktable compiles rcd.c with fast-math, which
reorders some sums: where that decides a branch (the border's direction choices) the sums
are rounded as its build rounds them; elsewhere the difference is float rounding (at most
5e-7 on the built-in raws). Measured against darktable 5.0.1 tap-outs on every built-in raw
(tests/models/test_demosaic_exact.py): 153-172 dB over the full image, peak 1.

The four Bayer patterns are handled natively (a colour map of the photosites): RCD's tiles
start at the top-left corner and the quirks above are not mirror-symmetric, so mirroring to
RGGB would not be exact. A crop is demosaiced as darktable would demosaic that crop as a
whole image (pass the crop's own pattern).
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch
import torch.nn.functional as F

EPS = 1e-5             # rcd.c's tolerance against division by zero
EPS_SQ = 1e-10         # ... and its floor of the direction statistics
TILE = 112             # DT_RCD_TILESIZE
TILE_BORDER = 9        # pixels of a tile that are not written, inside the image (RCD_BORDER)
MARGIN = 7             # the image border left to the PPG-like fill (RCD_MARGIN)
TILE_STEP = TILE - 2 * TILE_BORDER
RED, GREEN, BLUE = 0, 1, 2

_COLOUR = {"R": RED, "G": GREEN, "B": BLUE}


def colour_map(pattern: str, height: int, width: int, device=None) -> torch.Tensor:
    """(height, width) colour index (0 red, 1 green, 2 blue) of each photosite of a
    ``pattern`` mosaic (its top-left 2x2 tile row by row, e.g. ``RGGB``)."""
    if pattern not in ("RGGB", "BGGR", "GRBG", "GBRG"):
        raise ValueError(f"CFA pattern {pattern!r} is not a Bayer pattern (RGGB, BGGR, GRBG, GBRG)")
    # each photosite's place in the 2x2 tile, then its colour: computed where the map is
    # wanted, no table copied from the host (a GPU pass can then be captured as a CUDA graph)
    place = 2 * (torch.arange(height, device=device) % 2)[:, None] + (torch.arange(width, device=device) % 2)[None, :]
    colours = torch.full((height, width), _COLOUR[pattern[3]], dtype=torch.int64, device=device)
    for k in (2, 1, 0):
        colours = torch.where(place == k, _COLOUR[pattern[k]], colours)
    return colours


class _Taps:
    """Shifted views of (B, H, W) tensors: ``taps(dy, dx)[b, y, x] = a[b, y + dy, x + dx]``,
    zero outside."""

    def __init__(self, a: torch.Tensor, reach: int = 4):
        self.h, self.w, self.r = a.shape[-2], a.shape[-1], reach
        self.padded = F.pad(a, (reach, reach, reach, reach))

    def __call__(self, dy: int, dx: int) -> torch.Tensor:
        r = self.r
        return self.padded[..., r + dy:r + dy + self.h, r + dx:r + dx + self.w]


def _box(h: int, w: int, top: int, bottom: int, left: int, right: int, device=None) -> torch.Tensor:
    """(h, w) mask of rows top..h-bottom-1 and columns left..w-right-1."""
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    return ((rows >= top) & (rows < h - bottom))[:, None] & ((cols >= left) & (cols < w - right))[None, :]


def _directional(a: torch.Tensor, step: tuple[int, int], taps: _Taps) -> torch.Tensor:
    """rcd.c's squared high-pass along a direction: (x-3 - x-1 - x+1 + x+3) - 3 (x-2 + x+2) + 6 x."""
    dy, dx = step
    t = lambda k: taps(k * dy, k * dx)
    v = (t(-3) - t(-1) - t(1) + t(3)) - 3.0 * (t(-2) + t(2)) + 6.0 * a
    return v * v


def _pick(central: torch.Tensor, around: torch.Tensor) -> torch.Tensor:
    """RCD's refined discrimination: the neighbourhood's value where it is further from 0.5."""
    return torch.where((0.5 - central).abs() < (0.5 - around).abs(), around, central)


def _diagonal_mean(t: _Taps) -> torch.Tensor:
    return 0.25 * (((t(-1, -1) + t(-1, 1)) + t(1, -1)) + t(1, 1))


def _rcd_tile(cfa: torch.Tensor, colour: torch.Tensor,
              stale: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """RCD on a batch of same-sized tiles, as rcd.c computes one tile: (B, h, w) normalised
    non-negative mosaic and its (B or 1, h, w) colour map -> (B, 3, h, w) RGB. Only pixels
    at least 7 px from the tile's edges are RCD's; what darktable leaves unset near a tile's
    edge is set here as it is there (zero, or the buffer's earlier contents). ``stale``:
    (B, h, 1) diagonal high-passes (P, Q) that step 4.1 reads in column w-3 of a tile of even
    width w without computing them: what an earlier tile left in that buffer."""
    h, w = cfa.shape[-2:]
    dev = cfa.device
    green = colour == GREEN
    red_blue = ~green
    inner4 = _box(h, w, 4, 4, 4, 4, dev)
    c = _Taps(cfa)

    # Step 1: vertical / horizontal direction map. The squared high-passes summed over three
    # rows (vertical) or columns (horizontal); VH = V / (V + H), zero where RCD leaves it.
    hv = _Taps(_directional(cfa, (1, 0), c), 1)
    hh = _Taps(_directional(cfa, (0, 1), c), 1)
    v_stat = torch.clamp_min((hv(-1, 0) + hv(0, 0)) + hv(1, 0), EPS_SQ)
    h_stat = torch.clamp_min((hh(0, -1) + hh(0, 0)) + hh(0, 1), EPS_SQ)
    vh = torch.where(inner4, v_stat / (v_stat + h_stat), torch.zeros((), device=dev))
    vh_disc = _pick(vh, _diagonal_mean(_Taps(vh, 1)))

    # Step 2: low-pass of the mosaic at R/B photosites (3x3, weights 1, 1/2, 1/4).
    lpf = cfa + 0.5 * (((c(-1, 0) + c(1, 0)) + c(0, -1)) + c(0, 1)) \
        + 0.25 * (((c(-1, -1) + c(-1, 1)) + c(1, -1)) + c(1, 1))
    lpf = torch.where(red_blue & _box(h, w, 2, 2, 2, 2, dev), lpf, torch.zeros((), device=dev))
    lp = _Taps(lpf, 2)

    # Step 3: green at R/B photosites: cardinal ratio-corrected estimates weighted by the
    # opposite side's gradient, blended vertical/horizontal by the direction map.
    def gradient(dy: int, dx: int) -> torch.Tensor:
        # towards (dy, dx): EPS + |x-1 - x+1| + |x - x+2| + |x+1 - x+3| + |x+2 - x+4|
        t = lambda k: c(k * dy, k * dx)
        return (((EPS + (t(1) - t(-1)).abs()) + (cfa - t(2)).abs()) + (t(1) - t(3)).abs()) + (t(2) - t(4)).abs()

    grad_n, grad_s, grad_w, grad_e = gradient(-1, 0), gradient(1, 0), gradient(0, -1), gradient(0, 1)

    def estimate(dy: int, dx: int) -> torch.Tensor:
        return c(dy, dx) * (lpf + lpf) / ((EPS + lpf) + lp(2 * dy, 2 * dx))

    est_n, est_s, est_w, est_e = estimate(-1, 0), estimate(1, 0), estimate(0, -1), estimate(0, 1)
    v_est = (grad_s * est_n + grad_n * est_s) / (grad_n + grad_s)
    h_est = (grad_w * est_e + grad_e * est_w) / (grad_e + grad_w)
    g_at_rb = vh_disc * (h_est - v_est) + v_est
    # the green plane: RCD's estimate where step 3 ran, else the raw value (rcd.c fills
    # every colour plane of a row with the row's photosites first)
    g = torch.where(red_blue & inner4, g_at_rb, cfa)
    gt = _Taps(g)

    # Step 4.1: diagonal (P: NW-SE, Q: NE-SW) direction map. The squared diagonal high-passes
    # are kept for odd columns only (rows 3..h-4), and read at an R/B photosite (x, y) from
    # (y-1, x-1), (y, x+1), (y+1, x+1) in even columns, (y-1, x), (y, x), (y+1, x+2) in odd
    # ones (P; Q mirrored): rcd.c's half-width buffer indexing.
    odd_cols = (torch.arange(w, device=dev) % 2 == 1)[None, :]
    hpf_valid = odd_cols & _box(h, w, 3, 3, 3, 3, dev)
    zero = torch.zeros((), device=dev)
    p = torch.where(hpf_valid, _directional(cfa, (1, 1), c), zero)
    q = torch.where(hpf_valid, _directional(cfa, (1, -1), c), zero)
    if stale is not None and w % 2 == 0:
        unset = (torch.arange(w, device=dev) == w - 3)[None, :] & _box(h, w, 3, 3, 0, 0, dev)
        p, q = torch.where(unset, stale[0], p), torch.where(unset, stale[1], q)
    p, q = _Taps(p, 2), _Taps(q, 2)
    even_x = ~odd_cols
    p_stat = torch.where(even_x, (p(-1, -1) + p(0, 1)) + p(1, 1), (p(-1, 0) + p(0, 0)) + p(1, 2))
    q_stat = torch.where(even_x, (q(-1, 1) + q(0, 1)) + q(1, -1), (q(-1, 2) + q(0, 0)) + q(1, 0))
    p_stat, q_stat = p_stat.clamp_min(EPS_SQ), q_stat.clamp_min(EPS_SQ)
    # the buffer is shared with step 2's low-pass: where step 4.1 does not write, it holds that
    pq = torch.where(red_blue & inner4, p_stat / (p_stat + q_stat), lpf)
    pq_disc = _pick(pq, _diagonal_mean(_Taps(pq, 1)))

    # Step 4.2: the other of red/blue at R/B photosites, from the diagonal colour differences.
    def diagonal_gradient(dy: int, dx: int) -> torch.Tensor:
        # c(dy, dx) is a photosite of the missing colour
        return EPS + (c(dy, dx) - c(-dy, -dx)).abs() + (c(dy, dx) - c(3 * dy, 3 * dx)).abs() \
            + (g - gt(2 * dy, 2 * dx)).abs()

    grad_nw, grad_ne = diagonal_gradient(-1, -1), diagonal_gradient(-1, 1)
    grad_sw, grad_se = diagonal_gradient(1, -1), diagonal_gradient(1, 1)
    diff = lambda dy, dx: c(dy, dx) - gt(dy, dx)
    est_nw, est_ne, est_sw, est_se = diff(-1, -1), diff(-1, 1), diff(1, -1), diff(1, 1)
    p_est = (grad_nw * est_se + grad_se * est_nw) / (grad_nw + grad_se)
    q_est = (grad_ne * est_sw + grad_sw * est_ne) / (grad_ne + grad_sw)
    other_at_rb = g + (pq_disc * (q_est - p_est) + p_est)

    # the red and blue planes after step 4.2: own photosites raw, the other R/B estimated
    # where step 4.2 ran, the rest as rcd.c's buffer holds it (the row's raw values or zero:
    # never read for a pixel RCD writes)
    planes = []
    for own, other in ((RED, BLUE), (BLUE, RED)):
        in_row = (colour == own).any(-1, keepdim=True)
        planes.append(torch.where((colour == other) & inner4, other_at_rb,
                                  torch.where(in_row, cfa, zero)))
    red, blue = planes

    # Step 4.3: red and blue at green photosites, from cardinal colour differences.
    out = []
    for plane in (red, blue):
        t = _Taps(plane)
        sn = (t(-1, 0) - t(1, 0)).abs()
        ew = (t(0, -1) - t(0, 1)).abs()
        grad_n = (EPS + (g - gt(-2, 0)).abs()) + sn + (t(-1, 0) - t(-3, 0)).abs()
        grad_s = (EPS + (g - gt(2, 0)).abs()) + sn + (t(1, 0) - t(3, 0)).abs()
        grad_w = (EPS + (g - gt(0, -2)).abs()) + ew + (t(0, -1) - t(0, -3)).abs()
        grad_e = (EPS + (g - gt(0, 2)).abs()) + ew + (t(0, 1) - t(0, 3)).abs()
        est_n, est_s = t(-1, 0) - gt(-1, 0), t(1, 0) - gt(1, 0)
        est_w, est_e = t(0, -1) - gt(0, -1), t(0, 1) - gt(0, 1)
        v_est = (grad_n * est_s + grad_s * est_n) / (grad_n + grad_s)
        h_est = (grad_e * est_w + grad_w * est_e) / (grad_e + grad_w)
        out.append(torch.where(green & inner4, g + (vh_disc * (h_est - v_est) + v_est), plane))
    return torch.stack([out[0], g, out[1]], 1)


def _border_green(x: torch.Tensor, colour: torch.Tensor, margin: int) -> torch.Tensor:
    """The first two steps of rcd.c's border fill: (N, H, W) mosaic -> (N, 3, H, W) with
    every colour in the outer 3 px and, up to ``margin`` + 3 px, green everywhere and red /
    blue at their own photosites (zero elsewhere)."""
    h, w = x.shape[-2:]
    dev = x.device
    v = x.clamp_min(0.0)
    zero = torch.zeros((), device=dev)
    t = _Taps(v, 3)
    ct = _Taps(colour.to(v.dtype) + 1.0, 1)          # colour + 1, zero outside the image

    # (a) outermost 3 px: each missing colour is the mean of its photosites in the 3x3
    # neighbourhood (summed row by row, as darktable does)
    outer = []
    for k in (RED, GREEN, BLUE):
        total, count = zero, zero
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                hit = ct(dy, dx) == k + 1
                total = total + torch.where(hit, t(dy, dx), zero)
                count = count + hit.to(v.dtype)
        outer.append(torch.where((colour != k) & (count > 0), total / count.clamp_min(1.0), v))
    outer = torch.stack(outer, 1)

    # (b) up to margin + 3 px: PPG green at R/B photosites (the flatter direction's
    # estimate, clamped between its two green neighbours)
    # The sums are rounded as darktable's build rounds them (rcd.c is compiled with
    # fast-math): horizontally (left + centre) + right; vertically (up + down) + centre,
    # except in the bottom rows, whose loop the compiler built separately: (up + centre) + down.
    bottom = (torch.arange(h, device=dev) >= h - margin - 3)[:, None]

    def along(dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
        m1, m2, m3 = t(-dy, -dx), t(-2 * dy, -2 * dx), t(-3 * dy, -3 * dx)
        p1, p2, p3 = t(dy, dx), t(2 * dy, 2 * dx), t(3 * dy, 3 * dx)
        three = (m1 + v) + p1
        if dy:
            three = torch.where(bottom, three, (m1 + p1) + v)
        guess = three * 2.0 - (p2 + m2)
        diff = (((m2 - v).abs() + (p2 - v).abs()) + (m1 - p1).abs()) * 3.0 \
            + ((p3 - p1).abs() + (m3 - m1).abs()) * 2.0
        clamped = torch.maximum(torch.minimum(guess * 0.25, torch.maximum(m1, p1)), torch.minimum(m1, p1))
        return diff, clamped

    diff_x, green_x = along(0, 1)
    diff_y, green_y = along(1, 0)
    ppg_green = torch.where(colour == GREEN, v, torch.where(diff_x > diff_y, green_y, green_x))
    own = [torch.where(colour == k, v, zero) for k in (RED, BLUE)]
    ppg = torch.stack([own[0], ppg_green, own[1]], 1)
    frame3 = ~_box(h, w, 3, 3, 3, 3, dev)
    return torch.where(frame3, outer, ppg)


def _border(x: torch.Tensor, colour: torch.Tensor, margin: int) -> torch.Tensor:
    """rcd.c's fill of the image border (``rcd_ppg_border``): (N, H, W) mosaic (negatives
    count as zero) -> (N, 3, H, W), valid in the outer ``margin`` pixels."""
    h, w = x.shape[-2:]
    dev = x.device
    filled = _border_green(x, colour, margin)

    # (c) up to margin: red and blue from colour differences to green, cardinal at green
    # photosites, diagonal (the flatter diagonal, or both) at red and blue ones. Each estimate
    # is (a + b + 2 G - a_G - b_G) / 2 over the two neighbours a, b (first: up or left), summed
    # as darktable's build does: ((a + b) + 2 G) - (a_G + b_G), except in the bottom rows
    # (a loop of their own there): vertically (a + (b - a_G)) + (2 G - b_G), diagonally
    # ((a + b) - b_G) + (2 G - a_G). (Near-ties of the diagonal choice depend on this.)
    f = [_Taps(filled[:, k], 1) for k in range(3)]
    r0, g0, b0 = filled.unbind(1)
    twice = 2.0 * g0
    bottom = (torch.arange(h, device=dev) >= h - margin)[:, None]

    def pair(k: int, first: tuple[int, int], second: tuple[int, int], bottom_sum) -> torch.Tensor:
        a, b = f[k](*first), f[k](*second)
        ag, bg = f[GREEN](*first), f[GREEN](*second)
        usual = ((a + b) + twice) - (ag + bg)
        return usual if bottom_sum is None else torch.where(bottom, bottom_sum(a, b, ag, bg), usual)

    vertical_bottom = lambda a, b, ag, bg: (a + (b - ag)) + (twice - bg)
    diagonal_bottom = lambda a, b, ag, bg: ((a + b) - bg) + (twice - ag)

    def cardinal(k: int, dy: int, dx: int) -> torch.Tensor:
        return pair(k, (-dy, -dx), (dy, dx), vertical_bottom if dy else None) * 0.5

    red_row = _Taps(colour.to(filled.dtype), 1)(0, 1) == RED      # the photosite right of it is red
    at_green = colour == GREEN
    red_g = torch.where(red_row, cardinal(RED, 0, 1), cardinal(RED, 1, 0))
    blue_g = torch.where(red_row, cardinal(BLUE, 1, 0), cardinal(BLUE, 0, 1))

    def diagonal(k: int) -> torch.Tensor:
        a, gr = f[k], f[GREEN]
        def diff(first: tuple[int, int], second: tuple[int, int]) -> torch.Tensor:
            # |a - b| + |a_G - G| + |b_G - G|; in the bottom rows (|a - b| + |b_G - G|) + ...
            ab = (a(*first) - a(*second)).abs()
            ag, bg = (gr(*first) - g0).abs(), (gr(*second) - g0).abs()
            return torch.where(bottom, (ab + bg) + ag, (ab + ag) + bg)

        diff1, diff2 = diff((-1, -1), (1, 1)), diff((-1, 1), (1, -1))
        guess1 = pair(k, (-1, -1), (1, 1), diagonal_bottom)
        guess2 = pair(k, (-1, 1), (1, -1), diagonal_bottom)
        return torch.where(diff1 > diff2, guess2 * 0.5,
                           torch.where(diff1 < diff2, guess1 * 0.5, (guess1 + guess2) * 0.25))

    red_c = torch.where(at_green, red_g, torch.where(colour == BLUE, diagonal(RED), r0))
    blue_c = torch.where(at_green, blue_g, torch.where(colour == RED, diagonal(BLUE), b0))
    band = _box(h, w, 1, 1, 1, 1, dev) & ~_box(h, w, margin, margin, margin, margin, dev)
    inner = torch.stack([red_c, g0, blue_c], 1)
    return torch.where(band, inner, filled)


BORDER_REACH = 4       # how far from a pixel _border reads: the PPG green's 3 px, then 1 px


def _border_frame(x: torch.Tensor, colour: torch.Tensor, margin: int) -> torch.Tensor:
    """:func:`_border` in the outer ``margin`` pixels, (N, 3, H, W), zero inside: computed on
    the image's top and bottom rows put together, and its left and right columns, each with
    the pixels the border reads, not on the whole image (an eighth of the pixels at 512 px)."""
    h, w = x.shape[-2:]
    k = margin + BORDER_REACH + 2
    if 2 * k >= h or 2 * k >= w:
        return _border(x, colour, margin)
    rows = _border(torch.cat([x[..., :k, :], x[..., -k:, :]], -2),
                   torch.cat([colour[..., :k, :], colour[..., -k:, :]], -2), margin)
    cols = _border(torch.cat([x[..., :k], x[..., -k:]], -1),
                   torch.cat([colour[..., :k], colour[..., -k:]], -1), margin)
    middle = torch.cat([cols[..., margin:h - margin, :margin],
                        x.new_zeros(x.shape[0], 3, h - 2 * margin, w - 2 * margin),
                        cols[..., margin:h - margin, -margin:]], -1)
    return torch.cat([rows[..., :margin, :], middle, rows[..., -margin:, :]], -2)


def _starts(size: int) -> list[int]:
    """Where rcd.c's tiles start along one axis."""
    return [k * TILE_STEP for k in range(1 + (size - 2 * TILE_BORDER - 1) // TILE_STEP)]


def _rcd_tiles(cfa: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """RCD tile by tile as rcd.c runs it: (N, H, W) normalised mosaic, (N or 1, H, W) colour
    map -> (N, 3, H - 2 MARGIN, W - 2 MARGIN), the pixels RCD writes."""
    n, h, w = cfa.shape
    rows, cols = _starts(h), _starts(w)

    def span(starts: list[int], k: int, size: int) -> tuple[int, int, int, int]:
        """(tile start, tile end, first written, last written + 1) of tile k."""
        start, end = starts[k], min(starts[k] + TILE, size)
        first = start + (MARGIN if k == 0 else TILE_BORDER)
        last = end - (MARGIN if k == len(starts) - 1 else TILE_BORDER)
        return start, end, first, last

    # tiles of one size run as one batch (at most four sizes: full, last row, last column)
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i in range(len(rows)):
        for j in range(len(cols)):
            r0, r1, _, _ = span(rows, i, h)
            c0, c1, _, _ = span(cols, j, w)
            groups.setdefault((r1 - r0, c1 - c0), []).append((i, j))
    # A tile of even width reads the diagonal high-passes of its column w-3 without computing
    # them: the per-thread buffer then holds what the tile to its left (the one processed
    # before it) computed at the same place, darktable's image column W - 97. (A tile that is
    # the first of an OpenMP thread's share would read memory no tile wrote: not reproducible.)
    stale_col = w - TILE_STEP - 3
    stale = None
    if len(cols) > 1 and (w - cols[-1]) % 2 == 0:
        full = _Taps(cfa)
        stale = tuple(_directional(cfa, d, full)[..., stale_col:stale_col + 1] for d in ((1, 1), (1, -1)))
    pieces: dict[tuple[int, int], torch.Tensor] = {}
    for (th, tw), members in groups.items():
        spans = [(span(rows, i, h), span(cols, j, w)) for i, j in members]
        batch = torch.cat([cfa[:, r[0]:r[1], c[0]:c[1]] for r, c in spans])
        colours = torch.cat([colour[:, r[0]:r[1], c[0]:c[1]].expand(n, -1, -1) for r, c in spans])
        carried = None
        if stale is not None and all(j == len(cols) - 1 for _, j in members):
            carried = tuple(torch.cat([a[:, r[0]:r[1]] for r, _ in spans]) for a in stale)
        rgb = _rcd_tile(batch, colours, carried).split(n)
        for (i, j), (r, c), tile in zip(members, spans, rgb):
            pieces[(i, j)] = tile[..., r[2] - r[0]:r[3] - r[0], c[2] - c[0]:c[3] - c[0]]
    return torch.cat([torch.cat([pieces[(i, j)] for j in range(len(cols))], -1) for i in range(len(rows))], -2)


def _colours(patterns: Sequence[str], h: int, w: int, device) -> torch.Tensor:
    if len(set(patterns)) == 1:
        return colour_map(patterns[0], h, w, device)[None]
    return torch.stack([colour_map(p, h, w, device) for p in patterns])


def rcd_demosaic(mosaic: torch.Tensor, pattern: str | Sequence[str], scale: float | Sequence[float] = 1.0
                 ) -> torch.Tensor:
    """darktable 5.0.1's default Bayer demosaic: (N, 1, H, W) white-balanced mosaic of CFA
    ``pattern`` (one name, or one per image) -> (N, 3, H, W) camera RGB.

    ``scale``: darktable's processed maximum of the pipe at demosaic, the largest
    white-balance multiplier (values below 1 count as 1); one value or one per image. Any
    size of at least 6 x 6; below 18 px in either direction darktable fills the whole image
    with its border interpolation."""
    if mosaic.dim() != 4 or mosaic.shape[1] != 1:
        raise ValueError(f"demosaic takes a 1-channel mosaic (N, 1, H, W), got {tuple(mosaic.shape)}")
    n, _, h, w = mosaic.shape
    if h < 6 or w < 6:
        raise ValueError(f"darktable's demosaic needs at least 6 x 6 photosites, got {h} x {w}")
    patterns = [pattern] * n if isinstance(pattern, str) else list(pattern)
    if len(patterns) != n:
        raise ValueError(f"{len(patterns)} CFA patterns for a batch of {n}")
    x = mosaic[:, 0] if mosaic.is_floating_point() else mosaic[:, 0].float()
    colour = _colours(patterns, h, w, x.device)
    if h < 2 * TILE_BORDER or w < 2 * TILE_BORDER:
        return _border(x, colour, TILE_BORDER)
    border = _border_frame(x, colour, MARGIN)
    s = (x.new_full((1, 1, 1), float(scale)) if isinstance(scale, numbers.Real)       # no host copy
         else torch.as_tensor(scale, dtype=x.dtype, device=x.device).detach().reshape(-1, 1, 1)).clamp_min(1.0)
    inv = 1.0 / s
    rcd = s[:, None] * _rcd_tiles(x.clamp_min(0.0) * inv, colour).clamp_min(0.0)
    rcd = F.pad(rcd, (MARGIN, MARGIN, MARGIN, MARGIN))
    inside = _box(h, w, MARGIN, MARGIN, MARGIN, MARGIN, x.device)
    return torch.where(inside, rcd, border)
