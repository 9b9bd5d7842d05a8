"""Executors run work units. ``local`` runs them in this process, in plan order; ``ray``
(:mod:`sanitycheck.engine.ray_executor`) runs the same units on a Ray cluster and returns bit-identical results.

An executor sees two shapes of work:

* independent units (trained-model maps, evaluations, audits): ``map(fn, units)``;
* units that share a model state: ``run_states(states, units_by_step, fn)`` — a state check's states are
  produced in order by one iterator (cascading randomization builds on the previous state), and each state's
  units run while that state is current. States whose units are all cached are still iterated (they are
  cheap to build) but explain nothing.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .local_executor import LocalExecutor


def _ray_executor(**options: Any) -> Any:
    """The Ray executor, imported only when used (ray is an optional extra: ``pip install 'sanitycheck[ray]'``)."""
    from .ray_executor import RayExecutor

    return RayExecutor(**options)


EXECUTORS = {"local": LocalExecutor, "ray": _ray_executor}


def get_executor(name: str = "local", **options: Any) -> Any:
    """The executor ``name`` built with ``options`` (``ray``: address, workers, threads, retries); options
    that are None are left to the executor's defaults, and ``local`` takes none."""
    try:
        factory = EXECUTORS[name]
    except KeyError:
        raise ConfigError(f"unknown executor {name!r}; known: {', '.join(sorted(EXECUTORS))}") from None
    options = {k: v for k, v in options.items() if v is not None}
    if name == "local" and options:
        raise ConfigError(f"--executor local takes no {', '.join('--' + k for k in sorted(options))}; use "
                          "--executor ray for a cluster")
    return factory(**options)
