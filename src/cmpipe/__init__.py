"""cmpipe: dynamical galaxy-cluster masses from projected phase space (CNN3D + SBI)."""
__version__ = "0.1.0"
__all__ = ["__version__"]
