"""The audit engine's entry points. For now: the run class of each input kind and the functions that pick it
(see :mod:`sanitycheck.engine.run_kinds`); DESIGN.md's plan, units and executors will live beside it."""

from .run_kinds import RUN_CLASSES, audit_run_for, default_out_dir, run_class_for, run_suite

__all__ = ["RUN_CLASSES", "audit_run_for", "default_out_dir", "run_class_for", "run_suite"]
