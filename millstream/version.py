"""The package's version, in the vocabulary layer so every layer can read it.

``millstream.__version__`` re-exports it; tracing names its tracer with it.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
