"""Typed errors of the embedkit application layer.

Every error a user can cause is an ``EmbedkitError`` (a ``ValueError``) whose message says what is wrong and what
to do. The CLI turns it into one line on stderr and exit code 2; the traceback only with ``EMBEDKIT_DEBUG=1``.
"""
from __future__ import annotations


class EmbedkitError(ValueError):
    """Base class of every user-facing embedkit error."""


class DataError(EmbedkitError):
    """A dataset, manifest or adapter cannot be read as asked."""


class DecodeError(DataError):
    """One image file cannot be decoded; callers record it and go on."""


class LeakageError(DataError):
    """A patient or study appears in more than one split."""


class ModelError(EmbedkitError):
    """A backbone cannot be resolved or loaded."""


class WeightsNotFoundError(ModelError):
    """Weights are not available locally and downloading is not allowed."""


class ExtractionError(EmbedkitError):
    """Extraction cannot start or continue."""


class OutputExistsError(EmbedkitError):
    """An output path holds something that is not this command's output (or ``--overwrite`` was not given)."""
