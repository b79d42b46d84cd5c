"""Typed errors of the probes layer (no embedkit import: probes stands alone)."""
from __future__ import annotations


class ProbeError(ValueError):
    """Base class of every probe/metrics error a user can act on."""


class PairingError(ProbeError):
    """Two runs cannot be compared pairwise (different test sets or resamples)."""
