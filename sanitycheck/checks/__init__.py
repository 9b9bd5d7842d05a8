"""Checks: interventions on a model (randomizations, retraining) and evaluations of its maps, under one contract
(:mod:`sanitycheck.checks.base`)."""

from .base import (DATASET, MODEL_STATES, NEEDS, ORIGINAL_MAPS, TRAIN_SPLIT, TWIN_MODEL, AuditCheck, Check,
                   CheckOutput, ModelState, StateCheck, get_check)

__all__ = ["AuditCheck", "Check", "CheckOutput", "ModelState", "StateCheck", "get_check", "NEEDS", "ORIGINAL_MAPS",
           "MODEL_STATES", "DATASET", "TRAIN_SPLIT", "TWIN_MODEL"]
