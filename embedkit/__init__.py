"""embedkit: run a pretrained backbone once over a chest-radiograph dataset, then probe, compare and search."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
