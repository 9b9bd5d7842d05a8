"""Where a method's code comes from, found without executing it: its source file and that file's hash.

Shared by ``submissions`` (which writes the ``method`` block of a result document) and ``validation``
(which checks that block against the installed source), so neither imports the other.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .errors import ConfigError, SanityCheckError


def source_text(obj: Any, fallback: Optional[str] = None) -> str:
    """The source code of a function or class, the piece of every content-hash cache key of this package (a
    change to the code that trains a model or builds its data retrains or rebuilds it); where no source is
    available (frozen builds), ``fallback``, else its qualified name. The one source-hash helper: cache keys
    (:func:`content_key`) and explainer code hashes (:func:`source_key`) read source through it."""
    import inspect

    stamp = _source_stamp(obj)
    if stamp is not None and _SOURCE_MEMO.get(obj, (None,))[0] == stamp:
        return _SOURCE_MEMO[obj][1]
    try:
        text = inspect.getsource(obj)
    except (OSError, TypeError):  # pragma: no cover - e.g. frozen builds
        if fallback is not None:
            return fallback
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    if stamp is not None:
        _SOURCE_MEMO[obj] = (stamp, text)
    return text


#: ``obj`` -> (stamp of its source file, its source): :func:`source_text` once per process and file version
#: (``inspect.getsource`` of a class parses its whole module, a fixed cost of every run; see issue 12)
_SOURCE_MEMO: Dict[Any, Tuple[Tuple[str, int, int], str]] = {}


def _source_stamp(obj: Any) -> Optional[Tuple[str, int, int]]:
    """(file, mtime in ns, size) of the file ``obj``'s source is read from, the memo's validity: an edited
    file has a new stamp and is read again. None (no memo) where there is no file or ``obj`` is unhashable."""
    import inspect
    import os

    try:
        hash(obj)
        path = inspect.getsourcefile(obj)
        if path is None:
            return None
        st = os.stat(path)
    except (OSError, TypeError):
        return None
    return path, st.st_mtime_ns, st.st_size


def text_key(text: str) -> str:
    """16 hex digits of SHA-256 over ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def content_key(payload: Any) -> str:
    """16 hex digits of SHA-256 over ``payload`` as sorted-key JSON: the cache key of a spec, the data it
    names and the source of the code that uses it (:func:`source_text`)."""
    return text_key(json.dumps(payload, sort_keys=True))


def source_key(*objs: Any) -> str:
    """:func:`text_key` over the sources of ``objs`` joined by newlines (their qualified names where none)."""
    return text_key("\n".join(source_text(o, fallback=getattr(o, "__qualname__", repr(o))) for o in objs))


class SubmissionError(SanityCheckError):
    """A submitted method failed to load, crashed, or exceeded its limits."""


def _module_file(module: str) -> Optional[Path]:
    """The source file of ``module`` *without executing submitted code*: a search of sys.path, or, when
    the top-level package is already imported here (sanitycheck itself), the import system's answer."""
    import importlib.util

    parts = module.split(".")
    for entry in sys.path:
        base = Path(entry or ".").joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    if parts[0] in sys.modules:  # parents are imported already: find_spec executes nothing new
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            return Path(spec.origin)
    return None


def _registry_for(input_kind: str):
    """The explainers of ``input_kind``: one view of the one explainer registry (``name in``, ``get``)."""
    from .registry import EXPLAINERS

    return EXPLAINERS.view(input_kind)


def resolve_source(spec: str, input_kind: str = "image") -> Tuple[str, Path]:
    """(import path, source file) of a method given by registry name, import path or file path.

    A registry name is looked up among the explainers of ``input_kind`` (its implementation for that kind)."""
    target = spec
    if ":" not in spec:
        target = _registry_for(input_kind).import_path(spec)  # unknown names: the "did you mean" error
    module, _, attr = target.rpartition(":")
    if module.endswith(".py"):
        path = Path(module)
    else:
        path = _module_file(module)
    if path is None or not path.is_file():
        raise SubmissionError(f"cannot find the source of method {spec!r} (looked for {module!r} on sys.path "
                              "without importing it); submit it by file path instead: path/to/file.py:attr")
    return target, path.resolve()


def method_block(spec: str, name: Optional[str] = None, params: Optional[Dict[str, Any]] = None,
                 input_kind: str = "image") -> Dict[str, Any]:
    target, path = resolve_source(spec, input_kind)
    default = spec if ":" not in spec else target.rpartition(":")[2]
    name = name or default
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"method name {name!r} may use only letters, digits, '_', '.' and '-'")
    return {"name": name, "source": spec, "source_file": str(path),
            "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "params": dict(params or {})}


