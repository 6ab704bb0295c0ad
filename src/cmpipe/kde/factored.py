"""The 3-D kernels' fast path: each Gaussian factored into tables shared by a cluster.

Every galaxy of a cluster has the same kernel precision ``P`` (voxel units), so
``exp(-Q/2)`` at offset ``d = j + f`` from a galaxy (``j`` the integer offset of a voxel
from the voxel nearest the galaxy, ``f`` the galaxy's sub-voxel offset, ``|f| <= 1/2`` per
axis) splits into

    ``exp(-Q/2) = a_x[j_x] a_y[j_y] a_v[j_v] T_xy[j_x, j_y] T_xv[j_x, j_v] T_yv[j_y, j_v]``

with ``T_ab[j_a, j_b] = exp(-P_ab j_a j_b)``, the same for every galaxy of the cluster, and
1-D profiles per galaxy, ``a_x[j] = exp(-(P_xx (j + f_x)**2 / 2 + (P_xy f_y + P_xv f_v) j))``
and likewise for ``y`` and ``v`` (the constant ``exp(-sum_{a<b} P_ab f_a f_b)`` rides on
``a_x``). Expanding ``Q = sum_ab P_ab (j_a + f_a)(j_b + f_b)`` gives exactly these terms.
The tables and profiles come from exact multiplicative recurrences (a few ``exp`` per row),
so a voxel costs two multiplications and an addition in a loop along ``v`` that the
compiler vectorises, instead of the serial recurrences of
:func:`cmpipe.kde.accumulate.accumulate_3d`.

The voxels that receive a value are the same: ``ix`` runs over the x marginal of the
truncation ellipsoid ``Q <= r_t**2``, ``iy`` over the ellipse of ``y | x``, and along ``v``
each line of a plane covers the interval of ``v | x`` (the union of the plane's lines, one
trip count per plane, so the loop's branches are predictable) and adds a value only where it
is ``>= exp(-r_t**2 / 2)``, i.e. ``Q <= r_t**2`` (a select, not a branch). The values differ
from the recurrences' only by rounding (~1e-13 relative).

The path is taken only when no factor can leave ``exp(+-100)`` on the ellipsoid's bounding
box (``|P_ab| J_a J_b <= 100`` for every pair, ``J_a`` the box's half-width in voxels), so
no partial product over- or underflows; kernels strongly correlated between two axes
(above ~0.8 at ``r_t = 6.5``) or much narrower than a voxel fall back to
:func:`~cmpipe.kde.accumulate.accumulate_3d`.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..kernels import run_line
from .accumulate import span

__all__ = ["EXPONENT_BOUND", "accumulate_3d_factored"]

#: largest ``|exponent|`` a table entry may have on the bounding box
EXPONENT_BOUND = 100.0


@njit(cache=True, fastmath=False, nogil=True)
def _profile(out, f, prec, lin, const):
    """``out[j + J] = exp(-(prec (j + f)**2 / 2 + lin j + const))``, ``j = -J..J``.

    ``J = (out.size - 1) // 2``; exact recurrences outwards from ``j = 0``
    (:func:`~cmpipe.kernels.run_line` on a zeroed row).
    """
    half = (out.size - 1) // 2
    out[:] = 0.0
    r_f = math.exp(-(prec * (0.5 + f) + lin))
    q = math.exp(-prec)
    run_line(out, 0, out.size - 1, half, math.exp(-(0.5 * prec * f * f + const)), r_f,
             q / r_f, q)


@njit(cache=True, fastmath=False, nogil=True)
def _cross_table(p_ab, half_a, half_b):
    """``T[j_a + J_a, j_b + J_b] = exp(-p_ab j_a j_b)`` by powers of ``exp(-p_ab j_a)``."""
    t = np.empty((2 * half_a + 1, 2 * half_b + 1))
    for ja in range(-half_a, half_a + 1):
        row = t[ja + half_a]
        step = math.exp(-p_ab * ja)
        back = 1.0 / step
        row[half_b] = 1.0
        up = 1.0
        down = 1.0
        for k in range(1, half_b + 1):
            up *= step
            down *= back
            row[half_b + k] = up
            row[half_b - k] = down
    return t


@njit(cache=True, fastmath=False, nogil=True)
def _half_widths(H, r_t):
    """Half-widths ``J`` (voxels) of the integer offsets covering the truncation ellipsoid
    of a galaxy anywhere inside its nearest voxel."""
    return (int(math.ceil(r_t * math.sqrt(H[0, 0]) + 0.5)),
            int(math.ceil(r_t * math.sqrt(H[1, 1]) + 0.5)),
            int(math.ceil(r_t * math.sqrt(H[2, 2]) + 0.5)))


@njit(cache=True, fastmath=False, nogil=True, inline="always")
def _add_run(acc, a0, row, b0, table, c0, n, s, g_min):
    """``acc[a0 + k] += g`` for ``g = s row[b0 + k] table[c0 + k] >= g_min``, ``k < n``.

    Flat C-contiguous arrays and unsigned offsets (no negative-index wraparound), a fixed
    trip count per plane and a select instead of a branch: the loop the compiler vectorises.
    """
    for k in range(n):
        g = s * row[b0 + k] * table[c0 + k]
        acc[a0 + k] += g if g >= g_min else 0.0


@njit(cache=True, fastmath=False, nogil=True)
def accumulate_3d_factored(X, Y, W, H, prec, par, r_t, acc):
    """As :func:`cmpipe.kde.accumulate.accumulate_3d`, through the factored kernel.

    ``H`` and ``prec`` are the kernel covariance and precision, ``par`` the constants of
    :func:`~cmpipe.kde.bandwidth.params_3d` (all voxel units), ``acc`` C-contiguous.
    Returns ``False`` without touching ``acc`` when a table could leave
    ``exp(+-EXPONENT_BOUND)`` (:mod:`cmpipe.kde.factored`); the caller then uses
    ``accumulate_3d``.

    Each plane ``ix`` walks the lines ``iy`` of the ellipse of ``y | x`` over the ``v``
    interval of ``v | x`` (the union of its lines' intervals) and adds a voxel's value where
    it is ``>= exp(-r_t**2 / 2)``, i.e. ``Q <= r_t**2``: the same voxels as the exact
    ellipsoid of ``accumulate_3d``.
    """
    jx_h, jy_h, jv_h = _half_widths(H, r_t)
    pxy = prec[0, 1]
    pxv = prec[0, 2]
    pyv = prec[1, 2]
    if (abs(pxy) * jx_h * jy_h > EXPONENT_BOUND or abs(pxv) * jx_h * jv_h > EXPONENT_BOUND
            or abs(pyv) * jy_h * jv_h > EXPONENT_BOUND):
        return False
    t_xy = _cross_table(pxy, jx_h, jy_h)
    t_xv = _cross_table(pxv, jx_h, jv_h)
    t_yv = _cross_table(pyv, jy_h, jv_h)
    t_yv_flat = t_yv.reshape(t_yv.size)
    n_v = 2 * jv_h + 1
    a_x = np.empty(2 * jx_h + 1)
    a_y = np.empty(2 * jy_h + 1)
    a_v = np.empty(n_v)
    row_xv = np.empty(n_v)
    inv_hxx = par[0]
    byx = par[1]
    cy = par[2]
    inv_cy = par[3]
    half_x = r_t * par[8]
    bvx = H[0, 2] / H[0, 0]                 # v | x: centre W + bvx dX, variance var_vx
    var_vx = H[2, 2] - H[0, 2] * bvx
    r2 = r_t * r_t
    g_min = math.exp(-0.5 * r2)
    nx, ny, nv = acc.shape
    flat = acc.reshape(acc.size)
    for i in range(X.size):
        xi = X[i]
        yi = Y[i]
        wi = W[i]
        cx = math.floor(xi + 0.5)           # the voxel nearest the galaxy
        cy_ = math.floor(yi + 0.5)
        cv = math.floor(wi + 0.5)
        fx = cx - xi
        fy = cy_ - yi
        fv = cv - wi
        _profile(a_x, fx, prec[0, 0], pxy * fy + pxv * fv,
                 pxy * fx * fy + pxv * fx * fv + pyv * fy * fv)
        _profile(a_y, fy, prec[1, 1], pxy * fx + pyv * fv, 0.0)
        _profile(a_v, fv, prec[2, 2], pxv * fx + pyv * fy, 0.0)
        ox = jx_h - int(cx)                 # table index of voxel ix: ix + ox
        oy = jy_h - int(cy_)
        ov = jv_h - int(cv)
        ix0, ix1 = span(xi, half_x, nx)
        for ix in range(max(ix0, -ox), min(ix1, 2 * jx_h - ox) + 1):
            dx = ix - xi
            rem = r2 - dx * dx * inv_hxx
            if rem < 0.0:
                continue
            iy0, iy1 = span(yi - byx * dx, math.sqrt(rem * inv_cy), ny)
            iv0, iv1 = span(wi + bvx * dx, math.sqrt(rem * var_vx), nv)
            iv0 = max(iv0, -ov)
            iv1 = min(iv1, 2 * jv_h - ov)
            if iv1 < iv0:
                continue
            tx = ix + ox
            for k in range(n_v):
                row_xv[k] = a_v[k] * t_xv[tx, k]
            ax_j = a_x[tx]
            for iy in range(max(iy0, -oy), min(iy1, 2 * jy_h - oy) + 1):
                e = iy - yi + byx * dx
                if rem < cy * e * e:        # the line misses the ellipsoid
                    continue
                ty = iy + oy
                _add_run(flat, np.uint64((ix * ny + iy) * nv + iv0), row_xv,
                         np.uint64(iv0 + ov), t_yv_flat, np.uint64(ty * n_v + iv0 + ov),
                         np.uint64(iv1 - iv0 + 1), ax_j * a_y[ty] * t_xy[tx, ty], g_min)
    return True
