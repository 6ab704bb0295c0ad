"""Fixtures shared by the test modules."""
import numpy as np
import pytest

from cmpipe.cosmology import make_cosmology


@pytest.fixture(scope="module")
def cosmo():
    """Planck 2018 (colossus ``planck18``), made once per test module.

    Module scope, as each module had it: making a cosmology also sets colossus' current
    one, so a module that switches it (``tests/test_mdpl2.py``) affects only itself.
    """
    return make_cosmology("planck18")


@pytest.fixture
def fixed_global_seed():
    """Pin numpy's legacy global state (halotools draws from it; it restores it around its
    own draws), restored afterwards. Use with ``pytestmark =
    pytest.mark.usefixtures("fixed_global_seed")``."""
    state = np.random.get_state()
    np.random.seed(20201)
    yield
    np.random.set_state(state)
