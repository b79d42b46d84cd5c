"""Typed errors of the storage layer (no embedkit import: stores stands alone)."""
from __future__ import annotations


class StoreError(ValueError):
    """Base class of every storage-layer error a user can act on."""


class FormatVersionError(StoreError):
    """The store was written in a format version this code does not know."""


class ProvenanceMismatchError(StoreError):
    """Features of a different backbone, resolution or preprocessing would be mixed."""


class StoreLockedError(StoreError):
    """Another writer holds the store."""


class StaleIndexError(StoreError):
    """An index was built from a store whose fingerprint has since changed."""
