"""Lines of sight: well-separated projection axes for each simulated halo.

Projecting a halo along a direction ``u`` or along ``-u`` gives mirror-image phase-space
maps, so a line of sight is a *line* through the origin (a point of the projective plane),
not a direction. For ``n`` sightlines per halo we use the set of ``n`` lines that maximises
the smallest angle between any two of them,

.. math:: \\theta_{ij} = \\arccos |\\hat u_i \\cdot \\hat u_j| \\in [0, 90]\\ \\mathrm{deg},

which is the Grassmannian line-packing problem in three dimensions (Conway, Hardin & Sloane
1996, "Packing lines, planes, etc."; tables at http://neilsloane.com/grass/). A Fibonacci
sphere is a poor substitute: it spreads *directions*, and many of its points lie close to
the antipode of another point, i.e. on nearly the same line.

The packing is found numerically (:func:`line_directions`):

1. ``restarts`` seeded random starts are relaxed together, as one vectorised batch, by
   L-BFGS on the product of unit spheres applied to the soft maximum
   ``(1/p) log sum_{i<j} |u_i . u_j|^p`` of the pair cosines, with ``p`` raised stage by
   stage from 16 to 4096; after each stage only the best fraction of the starts (largest
   minimum angle) goes on (successive halving);
2. the best few distinct survivors are polished by SLSQP, which minimises ``s`` subject to
   ``|u_i . u_j| <= s`` on all nearly active pairs, i.e. maximises the minimum angle
   itself; the best polished set is kept.

With the default 64 starts this reproduces Sloane's best known packing for most ``n`` up
to 25 and comes within 0.1 deg of it for the others (n = 15, 22, 23, 25 with seed 0); all
``n`` from 1 to 25 together take a few seconds on one core. Each set is computed once per
process (:func:`functools.lru_cache`); :func:`halo_sightlines` hands every halo its own
Haar-random rotation of the cached set.

The default sets (seed 0, 64 starts, n = 1..25, what :func:`halo_sightlines` uses) are
not recomputed: they are read from ``cmpipe/data/line_packings.json``, written once by
:func:`tabulate_packings` with one BLAS thread, as a Snakemake job runs. The optimiser's
final SLSQP polish rounds differently with the BLAS thread count and can then choose
another orientation (n = 8) or another local optimum (n = 22) of a packing, so a mock made
from a Python session with several threads would differ from the workflow's; the table
makes the sightlines the same whatever the thread count.

All vectors here are dimensionless unit vectors in the simulation box frame; angles are in
degrees.
"""
from __future__ import annotations

import functools
import json
import operator
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.spatial.transform import Rotation

__all__ = [
    "PACKING_TABLE",
    "computed_lines",
    "tabulate_packings",
    "line_directions",
    "min_line_angle_deg",
    "random_rotation",
    "halo_sightlines",
    "basis_for",
]

_MAX_LINES = 100  # largest number of lines accepted

# Continuation in the soft-max exponent p (one value per stage), the L-BFGS iterations of
# each stage, and the fraction of the starts kept (best minimum angle first) after it.
_P_SCHEDULE = (16.0, 64.0, 256.0, 1024.0, 4096.0)
_ITERS_SCHEDULE = (40, 40, 40, 40, 60)
_KEEP_SCHEDULE = (1.0, 0.5, 0.25, 0.125, 0.125)
_LBFGS_MEMORY = 5
_MAX_STEP_RAD = 0.2  # largest move of any one vector in one L-BFGS step
_STEP_TOL = 1e-9  # a configuration whose step is below this is converged
# Polish this many distinct candidates (distinct = min angle differs by > _DISTINCT_DEG).
_N_POLISH = 3
_DISTINCT_DEG = 1e-3
# Pairs within this many degrees of the current minimum angle enter the SLSQP constraints.
_ACTIVE_MARGIN_DEG = 6.0
_POLISH_ROUNDS = 3
_DEFAULT_SEED = 0
_DEFAULT_RESTARTS = 64


def _check_n(n) -> int:
    """Return ``n`` as an int in ``1..100``; raise ValueError otherwise."""
    if isinstance(n, bool):
        raise ValueError(f"n must be an integer in 1..{_MAX_LINES}, got {n!r}")
    try:
        n_int = operator.index(n)
    except TypeError:
        raise ValueError(f"n must be an integer in 1..{_MAX_LINES}, got {n!r}") from None
    if not 1 <= n_int <= _MAX_LINES:
        raise ValueError(f"n must be an integer in 1..{_MAX_LINES}, got {n!r}")
    return n_int


def _normalise(v: np.ndarray) -> np.ndarray:
    """Unit vectors along the last axis of ``v``."""
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _max_abs_cos(u: np.ndarray) -> np.ndarray:
    """Largest ``|u_i . u_j|`` over pairs ``i != j``, for a batch ``u`` of shape (R, n, 3)."""
    g = np.abs(np.einsum("rik,rjk->rij", u, u))
    idx = np.arange(u.shape[1])
    g[:, idx, idx] = 0.0
    return g.max(axis=(1, 2))


def _soft_max_cos(u: np.ndarray, p: np.ndarray, eps: float = 1e-12):
    """Soft maximum of the pair cosines and its Riemannian gradient, batched.

    Parameters
    ----------
    u : ndarray, shape (R, n, 3)
        Unit vectors, ``R`` independent configurations.
    p : ndarray, shape (R,)
        Exponent of each configuration; ``p -> inf`` gives ``max_{i<j} |u_i . u_j|``.
    eps : float
        Regulariser of ``|u_i . u_j|`` at zero, keeping the objective smooth there.

    Returns
    -------
    f : ndarray, shape (R,)
        ``(1/p) log sum_{i<j} (g_ij^2 + eps)^{p/2}``, with ``g = u u^T``.
    grad : ndarray, shape (R, n, 3)
        Gradient of ``f`` projected onto the tangent spaces of the unit spheres.
    """
    n = u.shape[1]
    idx = np.arange(n)
    g = np.einsum("rik,rjk->rij", u, u)   # einsum: no BLAS, thread-count independent
    g2 = np.multiply(g, g)
    g2 += eps
    w = np.log(g2)  # log g_ij^2, turned into the weights in place below
    w[:, idx, idx] = -np.inf
    top = w.max(axis=(1, 2))
    w -= top[:, None, None]
    w *= (0.5 * p)[:, None, None]
    # Weights in [0, 1]: no overflow; the floor keeps them out of (slow) subnormals and
    # costs nothing, since a pair with weight < e^-250 of the top pair does not matter.
    np.maximum(w, -250.0, out=w)
    np.exp(w, out=w)
    w[:, idx, idx] = 0.0
    total = w.sum(axis=(1, 2))  # each pair counted twice
    f = 0.5 * top + np.log(0.5 * total) / p
    # df/dg_ij over the symmetric matrix, (i, j) and (j, i) both counted; grad = 2 (df/dg) u.
    w *= g
    w /= g2
    w *= (2.0 / total)[:, None, None]
    grad = np.einsum("rij,rjk->rik", w, u)
    grad -= u * np.einsum("rik,rik->ri", grad, u)[:, :, None]
    return f, grad


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products of two (R, D) arrays."""
    return np.einsum("rd,rd->r", a, b)


def _lbfgs_stage(u: np.ndarray, p: np.ndarray, iters: int) -> np.ndarray:
    """Minimise the soft maximum at fixed ``p`` for a batch of configurations.

    Batched L-BFGS on the product of unit spheres: every configuration has its own
    history, step and Armijo backtracking; the retraction is renormalisation. A
    configuration is frozen once its step falls below ``_STEP_TOL`` or its line search
    fails (converged to working precision).

    Parameters
    ----------
    u : ndarray, shape (R, n, 3)
        Starting unit vectors.
    p : ndarray, shape (R,)
        Soft-max exponent of each configuration.
    iters : int
        Number of L-BFGS iterations.

    Returns
    -------
    ndarray, shape (R, n, 3)
        Relaxed unit vectors.
    """
    n_conf, n, _ = u.shape
    dim = 3 * n
    mem = _LBFGS_MEMORY
    p_arr = p
    f, g = _soft_max_cos(u, p_arr)
    x = u.reshape(n_conf, dim)
    g = g.reshape(n_conf, dim)
    s_hist = np.zeros((mem, n_conf, dim))
    y_hist = np.zeros((mem, n_conf, dim))
    rho = np.zeros((mem, n_conf))
    alpha = np.empty((mem, n_conf))
    gamma = 0.1 / p  # initial inverse-Hessian scale ~ 1 / curvature
    live = np.ones(n_conf, dtype=bool)
    for it in range(iters):
        # Two-loop recursion for d = -H g.
        order = [(it - 1 - i) % mem for i in range(min(it, mem))]
        d = g.copy()
        for i in order:
            alpha[i] = rho[i] * _rowdot(s_hist[i], d)
            d -= alpha[i][:, None] * y_hist[i]
        d *= -gamma[:, None]
        for i in reversed(order):
            beta = rho[i] * _rowdot(y_hist[i], d)
            d -= s_hist[i] * (alpha[i] + beta)[:, None]
        slope = _rowdot(g, d)
        uphill = slope >= 0.0
        if uphill.any():
            d[uphill] = -gamma[uphill, None] * g[uphill]
            slope[uphill] = _rowdot(g[uphill], d[uphill])
        # Step 1 (capped so that no vector moves more than _MAX_STEP_RAD), then backtrack.
        longest = np.sqrt((d.reshape(n_conf, n, 3) ** 2).sum(axis=2).max(axis=1))
        t = np.minimum(1.0, _MAX_STEP_RAD / np.maximum(longest, 1e-300)) * live
        x_new = _normalise((x + t[:, None] * d).reshape(n_conf, n, 3))
        f_new, g_new = _soft_max_cos(x_new, p_arr)
        x_new = x_new.reshape(n_conf, dim)
        g_new = g_new.reshape(n_conf, dim)
        fail = np.flatnonzero(live & (f_new > f + 1e-4 * t * slope))
        for _ in range(6):
            if fail.size == 0:
                break
            t[fail] *= 0.25
            x_try = _normalise((x[fail] + t[fail, None] * d[fail]).reshape(-1, n, 3))
            f_try, g_try = _soft_max_cos(x_try, p_arr[fail])
            x_new[fail] = x_try.reshape(-1, dim)
            f_new[fail] = f_try
            g_new[fail] = g_try.reshape(-1, dim)
            fail = fail[f_try > f[fail] + 1e-4 * t[fail] * slope[fail]]
        if fail.size:
            live[fail] = False
            x_new[fail], f_new[fail], g_new[fail] = x[fail], f[fail], g[fail]
        s_vec = x_new - x
        y_vec = g_new - g
        sy = _rowdot(s_vec, y_vec)
        yy = _rowdot(y_vec, y_vec)
        curved = sy > 1e-10 * np.sqrt(_rowdot(s_vec, s_vec) * yy) + 1e-300
        k = it % mem
        s_hist[k], y_hist[k] = s_vec, y_vec
        rho[k] = np.where(curved, 1.0 / np.where(curved, sy, 1.0), 0.0)
        gamma = np.where(curved, sy / np.where(curved, yy, 1.0), gamma)
        x, f, g = x_new, f_new, g_new
        live &= np.abs(s_vec).max(axis=1) > _STEP_TOL  # converged: freeze
        if not live.any():
            break
    return x.reshape(n_conf, n, 3)


def _search(u: np.ndarray) -> np.ndarray:
    """Continuation in ``p`` with successive halving of a batch of starts.

    Parameters
    ----------
    u : ndarray, shape (R, n, 3)
        Random starting unit vectors.

    Returns
    -------
    ndarray, shape (R', n, 3)
        The surviving relaxed configurations, best minimum angle first.
    """
    n_conf = u.shape[0]
    for p, iters, keep in zip(_P_SCHEDULE, _ITERS_SCHEDULE, _KEEP_SCHEDULE):
        u = _lbfgs_stage(u, np.full(u.shape[0], p), iters)
        n_keep = max(min(_N_POLISH, n_conf), int(round(keep * n_conf)))
        u = u[np.argsort(_max_abs_cos(u), kind="stable")[:n_keep]]
    return u


def _polish_once(u: np.ndarray) -> np.ndarray:
    """One SLSQP pass: minimise ``s`` s.t. ``|u_i . u_j| <= s`` on the nearly active pairs."""
    n = u.shape[0]
    iu, ju = np.triu_indices(n, 1)
    cos_abs = np.abs(np.einsum("ij,ij->i", u[iu], u[ju]))
    c_max = cos_abs.max()
    theta = np.arccos(min(c_max, 1.0)) + np.radians(_ACTIVE_MARGIN_DEG)
    keep = cos_abs >= np.cos(min(theta, 0.5 * np.pi)) - 1e-12
    ii, jj = iu[keep], ju[keep]
    m = ii.size
    rows = np.arange(m)
    ones = np.ones((m, 1))

    def unpack(z):
        x = z[:-1].reshape(n, 3)
        r = np.linalg.norm(x, axis=1, keepdims=True)
        return x / r, r

    def cons(z):
        v, _ = unpack(z)
        gij = np.einsum("ij,ij->i", v[ii], v[jj])
        return np.concatenate([z[-1] - gij, z[-1] + gij])

    def cons_jac(z):
        v, r = unpack(z)
        gij = np.einsum("ij,ij->i", v[ii], v[jj])
        jac = np.zeros((m, n, 3))
        jac[rows, ii] = (v[jj] - gij[:, None] * v[ii]) / r[ii]
        jac[rows, jj] = (v[ii] - gij[:, None] * v[jj]) / r[jj]
        jac = jac.reshape(m, 3 * n)
        return np.vstack([np.hstack([-jac, ones]), np.hstack([jac, ones])])

    obj_grad = np.zeros(3 * n + 1)
    obj_grad[-1] = 1.0
    res = minimize(
        lambda z: z[-1],
        np.concatenate([u.ravel(), [c_max]]),
        jac=lambda z: obj_grad,
        method="SLSQP",
        constraints=[{"type": "ineq", "fun": cons, "jac": cons_jac}],
        options={"maxiter": 200, "ftol": 1e-15},
    )
    return unpack(res.x)[0]


def _polish(u: np.ndarray) -> np.ndarray:
    """Repeat :func:`_polish_once` while it improves the minimum angle (never worsens it)."""
    best = u
    best_cos = _max_abs_cos(u[None])[0]
    for _ in range(_POLISH_ROUNDS):
        cand = _polish_once(best)
        if not np.all(np.isfinite(cand)):
            break
        cand_cos = _max_abs_cos(cand[None])[0]
        if cand_cos >= best_cos - 1e-13:
            break
        best, best_cos = cand, cand_cos
    return best


def _canonical_sign(u: np.ndarray) -> np.ndarray:
    """Flip each vector so that its last non-negligible component is positive (z >= 0)."""
    u = u.copy()
    for row in u:
        nonzero = np.flatnonzero(np.abs(row) > 1e-12)
        if nonzero.size and row[nonzero[-1]] < 0:
            row *= -1.0
    return u


#: The tabulated default packings (:func:`tabulate_packings`).
PACKING_TABLE = Path(__file__).resolve().parents[1] / "data" / "line_packings.json"

#: Largest ``n`` of the table (:data:`PACKING_TABLE`).
TABLE_N_MAX = 25


@functools.lru_cache(maxsize=1)
def _table() -> dict:
    """The tabulated default packings, ``{n: read-only (n, 3) array}``."""
    rows = json.loads(PACKING_TABLE.read_text())["packings"]
    out = {}
    for key, vec in rows.items():
        a = np.asarray(vec, dtype=np.float64)
        a.setflags(write=False)
        out[int(key)] = a
    return out


def _cached_lines(n: int, seed: int, restarts: int) -> np.ndarray:
    """Read-only optimal line set: the table for the default seed and starts, else one
    computation per (n, seed, restarts) per process."""
    if seed == _DEFAULT_SEED and restarts == _DEFAULT_RESTARTS and n <= TABLE_N_MAX:
        return _table()[n]
    return computed_lines(n, seed, restarts)


def tabulate_packings(path=PACKING_TABLE, n_max: int = TABLE_N_MAX) -> None:
    """Write the default packings (n = 1..``n_max``) computed by :func:`computed_lines` to
    ``path`` (JSON, full float precision), atomically. Run it with one BLAS thread
    (``OPENBLAS_NUM_THREADS=1``), as the workflow's jobs run, so the table holds the sets
    every earlier workflow run used::

        OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python -c \
            "from cmpipe.mock.sightlines import tabulate_packings; tabulate_packings()"
    """
    rows = {str(n): computed_lines(n, _DEFAULT_SEED, _DEFAULT_RESTARTS).tolist()
            for n in range(1, n_max + 1)}
    head = dict(note="best line packings of cmpipe.mock.sightlines (seed 0, 64 starts), unit "
                     "vectors with the canonical sign; written by tabulate_packings with "
                     "one BLAS thread", seed=_DEFAULT_SEED, restarts=_DEFAULT_RESTARTS)
    lines = [json.dumps(head)[:-1] + ', "packings": {']
    lines += [f' "{n}": {json.dumps(v)}' + ("," if i < len(rows) - 1 else "")
              for i, (n, v) in enumerate(rows.items())]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n}}\n")
    tmp.replace(path)


@functools.lru_cache(maxsize=None)
def computed_lines(n: int, seed: int, restarts: int) -> np.ndarray:
    """Read-only optimal line set found by the optimiser (module docstring); one
    computation per (n, seed, restarts) per process."""
    if n == 1:
        out = np.array([[0.0, 0.0, 1.0]])
    else:
        rng = np.random.default_rng(seed)
        u = _search(_normalise(rng.standard_normal((restarts, n, 3))))
        cos_max = _max_abs_cos(u)
        best, best_cos = u[0], cos_max[0]
        polished_angles: list[float] = []
        for k in range(u.shape[0]):  # already sorted, best first
            if len(polished_angles) == _N_POLISH:
                break
            angle = np.degrees(np.arccos(min(cos_max[k], 1.0)))
            if any(abs(angle - a) < _DISTINCT_DEG for a in polished_angles):
                continue  # same basin as a candidate already polished
            polished_angles.append(angle)
            cand = _polish(u[k])
            cand_cos = _max_abs_cos(cand[None])[0]
            if cand_cos < best_cos:
                best, best_cos = cand, cand_cos
        out = _canonical_sign(_normalise(best))
    out.setflags(write=False)
    return out


def line_directions(
    n: int, *, seed: int = _DEFAULT_SEED, restarts: int = _DEFAULT_RESTARTS
) -> np.ndarray:
    """Unit vectors of ``n`` lines through the origin with the largest minimum angle.

    Parameters
    ----------
    n : int
        Number of lines, 1 to 100.
    seed : int, optional
        Seed of the random starts; the result is a deterministic function of
        ``(n, seed, restarts)``.
    restarts : int, optional
        Number of random starts (relaxed together as one vectorised batch). More starts
        find the best packing more reliably for large ``n`` at proportional cost.

    Returns
    -------
    ndarray, shape (n, 3)
        Dimensionless unit vectors, one per line, with the canonical sign ``z >= 0``
        (ties broken by ``y``, then ``x``). ``n = 1`` gives ``[[0, 0, 1]]``.

    Raises
    ------
    ValueError
        If ``n`` is not an integer in ``1..100`` or ``restarts`` is not a positive
        integer.

    Notes
    -----
    Results are cached per process; each call returns a fresh writable copy.
    """
    n = _check_n(n)
    try:
        restarts = operator.index(restarts)
    except TypeError:
        raise ValueError(f"restarts must be a positive integer, got {restarts!r}") from None
    if restarts < 1:
        raise ValueError(f"restarts must be a positive integer, got {restarts!r}")
    return _cached_lines(n, operator.index(seed), restarts).copy()


def min_line_angle_deg(directions: np.ndarray) -> float:
    """Smallest angle between distinct lines, in degrees.

    Parameters
    ----------
    directions : array_like, shape (m, 3)
        Direction vectors of ``m >= 2`` lines (need not be normalised; ``u`` and ``-u``
        are the same line).

    Returns
    -------
    float
        ``min_{i<j} atan2(|u_i x u_j|, |u_i . u_j|)`` in degrees, in [0, 90]. The ``atan2``
        form stays accurate for nearly parallel lines, unlike ``arccos``.

    Raises
    ------
    ValueError
        If ``directions`` is not of shape (m, 3) with ``m >= 2``, or holds a zero vector.
    """
    u = np.asarray(directions, dtype=float)
    if u.ndim != 2 or u.shape[1] != 3 or u.shape[0] < 2:
        raise ValueError(
            f"directions must have shape (m, 3) with m >= 2, got shape {u.shape}"
        )
    norms = np.linalg.norm(u, axis=1)
    if np.any(norms == 0.0) or not np.all(np.isfinite(norms)):
        raise ValueError("directions holds a zero or non-finite vector; lines need a direction")
    u = u / norms[:, None]
    iu, ju = np.triu_indices(u.shape[0], 1)
    sin = np.linalg.norm(np.cross(u[iu], u[ju]), axis=1)
    cos = np.abs(np.einsum("ij,ij->i", u[iu], u[ju]))
    return float(np.degrees(np.arctan2(sin, cos).min()))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly (Haar) distributed random rotation matrix.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness; four standard normals are drawn from it.

    Returns
    -------
    ndarray, shape (3, 3)
        Proper orthogonal matrix (``R R^T = 1``, ``det R = +1``).

    Notes
    -----
    A normalised 4-D standard normal vector is uniform on the unit 3-sphere, and the
    corresponding unit quaternion is Haar-distributed on SO(3): the same construction
    as :meth:`scipy.spatial.transform.Rotation.random`, fed from ``rng`` explicitly.
    """
    q = rng.standard_normal(4)
    while not np.linalg.norm(q) > 1e-12:  # probability zero; guards the normalisation
        q = rng.standard_normal(4)
    return Rotation.from_quat(q / np.linalg.norm(q)).as_matrix()


def halo_sightlines(n: int, rng: np.random.Generator) -> np.ndarray:
    """Sightlines of one halo: the optimal set of ``n`` lines in a random orientation.

    Parameters
    ----------
    n : int
        Number of sightlines, 1 to 100.
    rng : numpy.random.Generator
        Source of the halo's random rotation (see :func:`random_rotation`).

    Returns
    -------
    ndarray, shape (n, 3)
        Dimensionless unit vectors in the box frame; their pairwise line angles are those
        of ``line_directions(n)``. Signs are not canonicalised after the rotation.
    """
    n = _check_n(n)
    rot = random_rotation(rng)
    # einsum, not a BLAS product: bit-identical whatever the thread count
    return np.einsum("ij,kj->ik", _cached_lines(n, _DEFAULT_SEED, _DEFAULT_RESTARTS), rot)


def basis_for(direction) -> tuple[np.ndarray, np.ndarray]:
    """Sky-plane basis ``(e1, e2)`` for a line of sight.

    Parameters
    ----------
    direction : array_like, shape (3,) or (..., 3)
        Line-of-sight direction(s) ``n``; need not be normalised, must be non-zero.

    Returns
    -------
    e1, e2 : ndarray, same shape as ``direction``
        Unit vectors such that ``(e1, e2, n_hat)`` is a right-handed orthonormal basis
        (``e1 x e2 = n_hat``). ``e1`` is built from the coordinate axis least aligned with
        ``n``, so the construction is well conditioned for every direction, ``+-z``
        included.

    Raises
    ------
    ValueError
        If ``direction`` does not end in an axis of length 3 or holds a zero vector.
    """
    d = np.asarray(direction, dtype=float)
    if d.shape[-1:] != (3,):
        raise ValueError(f"direction must have shape (3,) or (..., 3), got {d.shape}")
    norm = np.linalg.norm(d, axis=-1, keepdims=True)
    if np.any(norm == 0.0) or not np.all(np.isfinite(norm)):
        raise ValueError("direction holds a zero or non-finite vector")
    nhat = d / norm
    # Helper axis: the one with the smallest |component|, so |a . n| <= 1/sqrt(3).
    axis = np.argmin(np.abs(nhat), axis=-1)
    a = np.zeros_like(nhat)
    np.put_along_axis(a, axis[..., None], 1.0, axis=-1)
    e1 = _normalise(a - np.sum(a * nhat, axis=-1, keepdims=True) * nhat)
    e2 = np.cross(nhat, e1)
    return e1, e2
