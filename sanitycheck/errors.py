"""One exception family. Messages say what was wrong, with what value, and what to do."""

from __future__ import annotations


class SanityCheckError(Exception):
    """Base class of every error sanitycheck raises on purpose."""


class UnknownNameError(SanityCheckError, KeyError):
    """A registry lookup failed; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ConfigError(SanityCheckError, ValueError):
    """A suite, option or parameter is malformed."""


class DataError(SanityCheckError):
    """A dataset cannot be found or read."""


class ModelError(SanityCheckError):
    """A model cannot be loaded, or is in a state an audit cannot use (e.g. train mode)."""


class WeightsUnavailableError(ModelError):
    """Pretrained weights are not on this machine and cannot be downloaded."""


class AttributionError(SanityCheckError, ValueError):
    """An explainer returned maps of the wrong shape, with NaN/inf, or failed."""


class NotApplicableError(AttributionError):
    """An explainer or check does not apply to this model (e.g. Grad-CAM on a model without convolutions)."""


class SAEFormatError(ModelError):
    """A sparse autoencoder on disk is not in a readable SAELens format (missing file or field, bad shapes)."""
