"""Work units: the engine plans a suite as units — (check, model state, explainer, shard of inputs) — each with
a deterministic key, and caches every unit's result under that key (``<out>/cache/units/...``).

Unit kinds (``WorkUnit.kind``):

* ``"maps"``: the trained model's maps of one explainer (``check`` is empty, or names a check that transforms
  its explainers, e.g. smooth MPRT); step ``"original"``;
* ``"state"``: one explainer in one model state of a state check, compared with its original maps;
* ``"evaluation"``: one explainer's trained-model maps scored by an evaluation check;
* ``"audit"``: one audit check over all explainers (explainer ``"*"``).

A key is SHA-256 over the run's fingerprint, the check's name and config, the step, the explainer's canonical
spec (class, code hash, config — never the name as typed) and the rows: two units with one key compute the
same thing, and an edited explainer or check gets new keys.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Tuple


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (letters, digits, ``_.-``), at most 40 characters, never empty."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:40] or "x"


def path_part(text: str) -> str:
    """``text`` as one path component: kept when already safe, else its slug and a hash (never ``..``, ``/``)."""
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,80}", text):
        return text
    return f"{slug(text)}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def explainer_cache_key(name: str, explainer: Any) -> str:
    """A readable slug of an explainer's name (last part of an import path) and 16 hex digits of SHA-256 over its
    canonical spec — class, code hash and config (for a file explainer the module name, which holds the file's
    content hash) — never the raw name the user typed."""
    code_hash = getattr(explainer, "code_hash", None)
    config = getattr(explainer, "config", None)
    canon = {"class": f"{type(explainer).__module__}.{type(explainer).__qualname__}",
             "code_hash": code_hash() if callable(code_hash) else None,
             "config": config() if callable(config) else repr(explainer)}
    digest = hashlib.sha256(json.dumps(canon, sort_keys=True, default=str).encode()).hexdigest()[:16]
    base = name.rpartition(":")[2] if ":" in name else name
    return f"{slug(base.rpartition('/')[2])}-{digest}"


@dataclass(frozen=True)
class WorkUnit:
    """One cacheable piece of work. ``rows`` is the shard ``[start, stop)`` of the audited inputs."""

    kind: str
    check: str
    step: str
    explainer: str
    rows: Tuple[int, int]
    key: str
    #: the explainer's cache stem (readable slug + spec hash), for the cache file name
    stem: str = ""

    @property
    def rows_slice(self) -> slice:
        return slice(*self.rows)

    def cache_path(self, cache_root: Path) -> Path:
        """``<cache>/units/<check|original>/<step>/<stem>-<key>.pt``; every part one safe path component."""
        parts = ("units", self.check or "original", self.step, f"{self.stem or 'all'}-{self.key}.pt")
        return Path(cache_root).joinpath(*(path_part(p) for p in parts))


def unit_key(run_key: str, kind: str, check: str, check_config: Any, step: str, explainer_stem: str,
             rows: Tuple[int, int]) -> str:
    blob = json.dumps([run_key, kind, check, check_config, step, explainer_stem, list(rows)], sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def shards(n: int, shard_size: int) -> Tuple[Tuple[int, int], ...]:
    """Row ranges covering ``range(n)``, ``shard_size`` rows each (the last may be shorter)."""
    size = max(1, int(shard_size))
    return tuple((s, min(n, s + size)) for s in range(0, n, size)) or ((0, 0),)
