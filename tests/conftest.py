"""Fixtures shared by the test modules."""
import pytest

from cmpipe.cosmology import make_cosmology


@pytest.fixture(scope="module")
def cosmo():
    """Planck 2018 (colossus ``planck18``), made once per test module.

    Module scope, as each module had it: making a cosmology also sets colossus' current
    one, so a module that switches it (``tests/test_mdpl2.py``) affects only itself.
    """
    return make_cosmology("planck18")
