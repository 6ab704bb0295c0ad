"""Compiled accumulation of Gaussian kernels on the KDE grids (numba).

Every galaxy adds ``exp(-Q/2)`` (peak 1; normalised afterwards) at each voxel centre inside
its truncation ellipsoid ``Q <= r_t**2``; loops run exactly over that ellipsoid, the 1-D
runs along ``v`` use the exact recurrences of :mod:`cmpipe.kernels`. All coordinates in
voxel units (:mod:`cmpipe.kde.bandwidth`). Error bounds in :mod:`cmpipe.kde`.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..kernels import add_line, run_line_above

__all__ = [
    "span",
    "lattice_steps",
    "accumulate_3d",
    "accumulate_2d",
    "accumulate_1d",
    "normalise_into",
]


@njit(cache=True, fastmath=False, nogil=True)
def span(centre, half, n):
    """Integer voxels ``[i0, i1]`` within ``[centre - half, centre + half]`` and ``[0, n-1]``."""
    a = centre - half
    b = centre + half
    if a < 0.0:
        a = 0.0
    if b > n - 1.0:
        b = n - 1.0
    if a > b:
        return 0, -1
    return int(math.ceil(a)), int(math.floor(b))


@njit(cache=True, fastmath=False, nogil=True)
def lattice_steps(cy, avy, pvv, r_t):
    """Whether :func:`accumulate_3d` may step its state from line to line of a plane, and
    the step factors ``(exp(pvv), alpha, 1 / alpha, beta)`` (all 1 where it may not).

    ``cy``, ``avy``, ``pvv`` are the constants of :func:`cmpipe.kde.bandwidth.params_3d`,
    ``r_t`` the truncation radius. The lattice recurrences are used only when none of their
    factors can leave ``exp(+-500)`` and a line centre moves by at most 4 voxels from one
    line to the next (``|avy| <= 4``).
    """
    bound = (r_t * math.sqrt(cy) + cy + r_t * math.sqrt(pvv) * (1.0 + abs(avy))
             + pvv * (1.0 + abs(avy) + avy * avy))
    if bound <= 500.0 and abs(avy) <= 4.0:
        return (True, math.exp(pvv), math.exp(-pvv * avy), math.exp(pvv * avy),
                math.exp(-cy - pvv * avy * avy))
    return False, 1.0, 1.0, 1.0, 1.0


@njit(cache=True, fastmath=False, nogil=True)
def accumulate_3d(X, Y, W, par, r_t, acc):
    """Add ``exp(-Q/2)`` of every galaxy to ``acc[ix, iy, iv]`` inside ``Q <= r_t**2``.

    Loops run exactly over each truncation ellipsoid: ``ix`` over the x marginal, ``iy`` over
    the ellipse of ``y | x``, ``iv`` over the interval of ``v | x, y``.

    Within a plane ``ix`` the Gaussian restricted to the lattice ``(iy, iv)`` obeys exact
    multiplicative recurrences in both indices, so the state at the centre voxel of line
    ``iy + 1`` follows from that of line ``iy`` by a few products (state ``f`` = value,
    ``r_f``/``r_b`` = ratios along ``v``, ``s`` = ratio along ``y``; constants
    ``alpha = exp(-pvv avy)``, ``beta = exp(-cy - pvv avy**2)``): ``exp`` is called ~4 times
    per plane instead of twice per line, and each line is walked outwards while the value
    stays ``>= exp(-r_t**2/2)`` (:func:`~cmpipe.kernels.run_line_above`), which is the same
    ellipsoid. The state is recomputed exactly at the first line of a plane, when the line
    centre jumps by more than 4 voxels, or when it leaves ``(1e-250, 2)``; clusters whose
    kernel is so narrow or tilted that these factors could leave ``exp(+-500)``
    (:func:`lattice_steps`) use an exact start for every line
    (:func:`~cmpipe.kernels.add_line`).
    """
    inv_hxx = par[0]
    byx = par[1]
    cy = par[2]
    inv_cy = par[3]
    avx = par[4]
    avy = par[5]
    pvv = par[6]
    inv_pvv = par[7]
    half_x = r_t * par[8]
    r2 = r_t * r_t
    q = math.exp(-pvv)
    lattice, inv_q, alpha, inv_alpha, beta = lattice_steps(cy, avy, pvv, r_t)
    g_min = math.exp(-0.5 * r2)
    nx, ny, nv = acc.shape
    for i in range(X.size):
        xi = X[i]
        yi = Y[i]
        ix0, ix1 = span(xi, half_x, nx)
        for ix in range(ix0, ix1 + 1):
            dx = ix - xi
            qx = dx * dx * inv_hxx
            rem = r2 - qx
            if rem < 0.0:
                continue
            iy0, iy1 = span(yi - byx * dx, math.sqrt(rem * inv_cy), ny)
            w_x = W[i] - avx * dx
            have = False                    # lattice state valid at (iy - 1, c)?
            c = 0
            f = r_f = r_b = s = 0.0
            for iy in range(iy0, iy1 + 1):
                if have:                    # step the state to (iy, c)
                    f *= s
                    s *= beta
                    r_f *= alpha
                    r_b *= inv_alpha
                dy = iy - yi
                e = dy + byx * dx
                q2 = qx + cy * e * e
                remv = r2 - q2
                if remv < 0.0:
                    have = False
                    continue
                u = w_x - avy * dy
                if not lattice:
                    iv0, iv1 = span(u, math.sqrt(remv * inv_pvv), nv)
                    if iv0 <= iv1:
                        add_line(acc[ix, iy], iv0, iv1, u, pvv, q2, q)
                    continue
                # voxel of the line nearest its centre: the line's maximum on the grid
                cn = int(min(max(math.floor(u + 0.5), 0.0), nv - 1.0))
                ok = False
                if have and abs(cn - c) <= 4:
                    while c < cn:
                        f *= r_f
                        r_f *= q
                        r_b *= inv_q
                        s *= alpha
                        c += 1
                    while c > cn:
                        f *= r_b
                        r_b *= q
                        r_f *= inv_q
                        s *= inv_alpha
                        c -= 1
                    ok = 1e-250 < f < 2.0           # False for NaN too
                if not ok:                          # exact (re)start of the state at (iy, cn)
                    c = cn
                    t = c - u
                    f = math.exp(-0.5 * (q2 + pvv * t * t))
                    r_f = math.exp(-pvv * (t + 0.5))
                    r_b = q / r_f
                    s = math.exp(-0.5 * (cy * (2.0 * e + 1.0) + pvv * avy * (2.0 * t + avy)))
                    have = True
                if f >= g_min:                      # Q <= r_t**2  <=>  exp(-Q/2) >= g_min
                    run_line_above(acc[ix, iy], nv, c, f, r_f, r_b, q, g_min)


@njit(cache=True, fastmath=False, nogil=True)
def accumulate_2d(R, W, par, r_t, acc):
    """2-D analogue of :func:`accumulate_3d` on ``acc[iR, iv]``."""
    inv_hrr = par[0]
    avr = par[1]
    pvv = par[2]
    inv_pvv = par[3]
    half_r = r_t * par[4]
    r2 = r_t * r_t
    q = math.exp(-pvv)
    nr, nv = acc.shape
    for i in range(R.size):
        ri = R[i]
        i0, i1 = span(ri, half_r, nr)
        for ir in range(i0, i1 + 1):
            dr = ir - ri
            qr = dr * dr * inv_hrr
            rem = r2 - qr
            if rem < 0.0:
                continue
            u = W[i] - avr * dr
            iv0, iv1 = span(u, math.sqrt(rem * inv_pvv), nv)
            if iv0 <= iv1:
                add_line(acc[ir], iv0, iv1, u, pvv, qr, q)


@njit(cache=True, fastmath=False, nogil=True)
def accumulate_1d(W, hvv, r_t, acc):
    """1-D analogue of :func:`accumulate_3d` (``hvv``: kernel variance, voxel^2)."""
    pvv = 1.0 / hvv
    half = r_t * math.sqrt(hvv)
    q = math.exp(-pvv)
    for i in range(W.size):
        i0, i1 = span(W[i], half, acc.size)
        if i0 <= i1:
            add_line(acc, i0, i1, W[i], pvv, 0.0, q)


@njit(cache=True, fastmath=False, nogil=True)
def normalise_into(acc, out):
    """``out[:] = float32(acc / acc.sum())`` over flat views, then zero ``acc`` for reuse.

    Returns the float64 sum (0 when no kernel reached the grid; ``out`` is NaN then).
    """
    flat = acc.reshape(acc.size)
    o = out.reshape(out.size)
    m = flat.size
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    j = 0
    while j + 3 < m:                                # four partial sums (ILP)
        s0 += flat[j]
        s1 += flat[j + 1]
        s2 += flat[j + 2]
        s3 += flat[j + 3]
        j += 4
    while j < m:
        s0 += flat[j]
        j += 1
    total = (s0 + s1) + (s2 + s3)
    scale = 1.0 / total if total > 0.0 else np.nan
    for j in range(m):
        o[j] = flat[j] * scale
        flat[j] = 0.0
    return total
