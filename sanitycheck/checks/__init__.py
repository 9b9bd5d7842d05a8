"""Checks: interventions on a model (randomizations, retraining) whose effect on the maps is measured."""

from .base import Check, ModelState, get_check

__all__ = ["Check", "ModelState", "get_check"]
