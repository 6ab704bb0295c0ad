"""Compiled 1-D Gaussian runs shared by the KDE cubes and the calibration's joint PDF.

Both :mod:`cmpipe.kde` (a galaxy's kernel along one ``v`` line of a cube) and
:mod:`cmpipe.calibration` (a pair's conditional kernel along one ``log M`` row of the joint
PDF) add a sampled 1-D Gaussian ``g[k] = A exp(-prec (k - u)**2 / 2)`` to a run of
consecutive grid nodes ``k = i0..i1`` (node units: the nodes sit at ``0, 1, ..., n - 1``).
Instead of one ``exp`` per node the Gaussian is advanced from the node ``c`` nearest its
centre outwards by the exact multiplicative recurrences

    ``g[k+1] = g[k] r_f[k]``, ``r_f[k+1] = r_f[k] q`` (and the mirror for ``k < c``),
    ``q = exp(-prec)``,

two multiplications per node. Starting at the peak node makes every ratio applied to a
stored value <= 1, so nothing overflows (far tails may underflow harmlessly); the rounding
error grows like ``steps**2`` ulp (below 1e-12 relative over a thousand nodes).

:func:`run_line` and :func:`run_line_above` are the walks; :func:`add_line` (KDE) and
:func:`add_gaussian_run` (joint PDF) compute the start state and call :func:`run_line`.
The two starts keep their own arithmetic (the KDE folds a Mahalanobis offset ``q0`` into the
exponent and derives ``r_b`` from ``q / r_f``; the joint PDF multiplies by an amplitude and
takes ``r_b`` from its own ``exp``), so each product stays bit-identical to what it was.

All kernels are numba-compiled (``cache=True``, ``fastmath=False``, ``nogil=True``) and
update ``row`` in place.
"""
from __future__ import annotations

import math

from numba import njit

__all__ = ["run_line", "run_line_above", "add_line", "add_gaussian_run"]


@njit(cache=True, fastmath=False, nogil=True)
def run_line(row, i0, i1, c, g, r_f, r_b, q):
    """Add a 1-D Gaussian to ``row[i0..i1]`` from its value ``g`` at node ``c``.

    Parameters
    ----------
    row : ndarray, shape (n,), float64
        Updated in place.
    i0, i1 : int
        First and last node of the run (inclusive), ``i0 <= c <= i1``.
    c : int
        Start node: the node of the run nearest the Gaussian's centre.
    g : float
        The Gaussian's value at ``c``.
    r_f, r_b : float
        ``g[c+1] / g[c]`` and ``g[c-1] / g[c]``.
    q : float
        ``exp(-prec)``, ``prec`` the precision in node units (node^-2).

    Notes
    -----
    The recurrences run outwards from ``c`` as two independent chains (instruction-level
    parallelism).
    """
    g_b = g * r_b
    r_b *= q
    k_f = c
    k_b = c - 1
    while k_f <= i1 and k_b >= i0:
        row[k_f] += g
        row[k_b] += g_b
        g *= r_f
        g_b *= r_b
        r_f *= q
        r_b *= q
        k_f += 1
        k_b -= 1
    while k_f <= i1:
        row[k_f] += g
        g *= r_f
        r_f *= q
        k_f += 1
    while k_b >= i0:
        row[k_b] += g_b
        g_b *= r_b
        r_b *= q
        k_b -= 1


@njit(cache=True, fastmath=False, nogil=True)
def run_line_above(row, n, c, g, r_f, r_b, q, g_min):
    """As :func:`run_line`, but the run is the nodes around ``c`` (within ``[0, n-1]``)
    where the Gaussian is ``>= g_min``, found while walking instead of by a square root.

    With ``g_min = exp(-r_t**2 / 2)`` and ``g`` holding ``exp(-Q/2)`` these are exactly the
    nodes inside the truncation radius, ``Q <= r_t**2``.
    """
    g_b = g * r_b
    r_b *= q
    k_f = c
    k_b = c - 1
    while k_f < n and k_b >= 0 and g >= g_min and g_b >= g_min:
        row[k_f] += g
        row[k_b] += g_b
        g *= r_f
        g_b *= r_b
        r_f *= q
        r_b *= q
        k_f += 1
        k_b -= 1
    while k_f < n and g >= g_min:
        row[k_f] += g
        g *= r_f
        r_f *= q
        k_f += 1
    while k_b >= 0 and g_b >= g_min:
        row[k_b] += g_b
        g_b *= r_b
        r_b *= q
        k_b -= 1


@njit(cache=True, fastmath=False, nogil=True)
def add_line(row, i0, i1, u, prec, q0, q):
    """``row[k] += exp(-(q0 + prec (k - u)**2) / 2)`` for ``k = i0..i1`` (the KDE's start).

    ``u`` is the centre (node units), ``prec`` the precision (node^-2), ``q0`` the
    Mahalanobis offset of the line (dimensionless) and ``q = exp(-prec)``. Runs of one or
    two nodes call ``exp`` per node; longer ones start at the node nearest ``u`` and use
    :func:`run_line`: two ``exp`` per run.
    """
    if i1 - i0 < 2:
        for k in range(i0, i1 + 1):
            t = k - u
            row[k] += math.exp(-0.5 * (q0 + prec * t * t))
        return
    c = min(max(math.floor(u + 0.5), float(i0)), float(i1))
    t = c - u
    r_f = math.exp(-prec * (t + 0.5))
    run_line(row, i0, i1, int(c), math.exp(-0.5 * (q0 + prec * t * t)), r_f, q / r_f, q)


@njit(cache=True, fastmath=False, nogil=True)
def add_gaussian_run(row, i0, i1, u, prec, amp):
    """``row[k] += amp * exp(-prec (k - u)**2 / 2)`` for ``k = i0..i1`` (the joint PDF's
    start).

    ``u`` is the centre (node units), ``prec`` the precision (node^-2) and ``amp`` the
    peak value. Runs of one or two nodes call ``exp`` per node; longer ones start at the
    node ``c`` nearest ``u`` (clipped into the run) and use :func:`run_line`.
    """
    if i1 - i0 < 2:
        for k in range(i0, i1 + 1):
            t = k - u
            row[k] += amp * math.exp(-0.5 * prec * t * t)
        return
    c = min(max(math.floor(u + 0.5), float(i0)), float(i1))
    t = c - u
    q = math.exp(-prec)
    g = amp * math.exp(-0.5 * prec * t * t)
    r_f = math.exp(-prec * (t + 0.5))
    r_b = math.exp(prec * (t - 0.5))
    run_line(row, i0, i1, int(c), g, r_f, r_b, q)
