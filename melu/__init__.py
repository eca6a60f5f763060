"""melu: cold-start recommendation meta-learned with batched MAML (MeLU, KDD 2019)."""

from melu.errors import DataError, MeluError

__version__ = "0.1.0"

__all__ = ["DataError", "MeluError", "__version__"]
