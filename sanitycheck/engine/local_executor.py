"""The ``local`` executor: work units one after another in this process, in plan order (see :mod:`.executors`)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from .units import WorkUnit


class LocalExecutor:
    """Runs units one after another in this process."""

    name = "local"

    def map(self, fn: Callable[[WorkUnit], Any], units: Sequence[WorkUnit]) -> Dict[WorkUnit, Any]:
        return {u: fn(u) for u in units}

    def run_states(self, states: Iterable[Any], units_by_step: Dict[str, List[WorkUnit]],
                   fn: Callable[[WorkUnit, Any], Any], on_state: Optional[Callable[[Any], None]] = None
                   ) -> Dict[WorkUnit, Any]:
        """``fn(unit, state)`` for every unit of every state ``states`` yields (``on_state(state)`` first)."""
        out: Dict[WorkUnit, Any] = {}
        for state in states:
            if on_state is not None:
                on_state(state)
            for unit in units_by_step.get(state.step, []):
                out[unit] = fn(unit, state)
        return out
