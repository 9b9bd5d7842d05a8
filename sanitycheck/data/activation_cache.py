"""Activations of a hooked site over a word corpus, cached on disk (memory-mapped) and keyed by content.

:func:`collect_activations` encodes a :class:`~sanitycheck.data.token_corpus.WordCorpus` with the source's
tokenizer, runs the model in batches, keeps the real tokens (the source's ``mask``; ``<bos>``/``[CLS]`` too with
``include_bos``) and writes ``<cache>/activations/<key>/acts.npy`` (float32, ``(n_tokens, d_in)``) with
``index.pt`` (token ids, text, position, word index) and ``meta.json``. The directory is written under a
temporary name and renamed, so a crash never leaves a partial entry. The key is
``sha256(source.state_hash(), corpus.checksum, max_len, include_bos)``. NaN or infinite activations raise
:class:`NonFiniteActivationError` and nothing is cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError

__all__ = ["ActivationSet", "NonFiniteActivationError", "collect_activations", "activation_key", "FORMAT"]

FORMAT = "sanitycheck.activations/1"


class NonFiniteActivationError(DataError):
    """A hooked site produced NaN or infinite activations."""


@dataclass
class ActivationSet:
    """Activations of the real tokens of a corpus, flattened; ``acts`` is memory-mapped (read-only)."""

    acts: Tensor
    token_ids: Tensor
    doc: Tensor
    position: Tensor
    word_index: Tensor
    key: str
    source: str
    meta: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.acts.shape[0])

    def __repr__(self) -> str:
        return (f"ActivationSet(source={self.source!r}, n_tokens={len(self)}, d_in={self.acts.shape[1]}, "
                f"texts={self.meta.get('n_texts')}, key={self.key[:12]}...)")


def activation_key(source: Any, corpus: Any, max_len: int, include_bos: bool) -> str:
    payload = "\x1f".join([FORMAT, source.state_hash(), corpus.checksum, str(int(max_len)), str(bool(include_bos))])
    return hashlib.sha256(payload.encode()).hexdigest()


def _load(path: Path, key: str) -> Optional[ActivationSet]:
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if meta.get("key") != key or meta.get("format") != FORMAT:
            return None
        arr = np.load(path / "acts.npy", mmap_mode="r")
        index = torch.load(path / "index.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, KeyError, RuntimeError):
        return None
    import warnings

    with warnings.catch_warnings():  # a read-only memmap: torch warns that writes are undefined; none happen
        warnings.simplefilter("ignore", UserWarning)
        acts = torch.from_numpy(arr)
    if acts.shape != (meta["n_tokens"], meta["d_in"]):
        return None
    out = ActivationSet(acts=acts, token_ids=index["token_ids"], doc=index["doc"], position=index["position"],
                        word_index=index["word_index"], key=key, source=meta["source"], meta=meta)
    out.memmap = arr  # the read-only numpy.memmap behind ``acts`` (same memory); never write through ``acts``
    return out


def collect_activations(source: Any, corpus: Any, *, max_len: int = 64, batch_size: int = 64,
                        cache_dir: Optional[Union[str, Path]] = None, progress: bool = True,
                        include_bos: bool = False) -> ActivationSet:
    """The site's activations over ``corpus`` (real tokens only), from the cache or collected and cached."""
    from ..io import cache_dir as default_cache_dir

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(corpus) == 0:
        raise DataError(f"corpus {corpus.name!r} is empty: nothing to collect activations from")
    key = activation_key(source, corpus, max_len, include_bos)
    base = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "activations"
    path = base / key[:32]
    if path.is_dir():
        cached = _load(path, key)
        if cached is not None:
            cached.meta["from_cache"] = True
            return cached
        shutil.rmtree(path, ignore_errors=True)  # unreadable or a different key: rebuilt

    ids, mask, word_index = source.encode(corpus.words, max_len)
    keep = mask.clone()
    if include_bos:
        keep[:, 0] = True
    n_tokens = int(keep.sum())
    if n_tokens == 0:
        raise DataError(f"corpus {corpus.name!r} has no real tokens under {source.name} at max_len={max_len}")
    nonpad = ids != 0
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=base, prefix=f".{key[:12]}.", suffix=".tmp"))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a cache entry is as readable as any other
    start = time.perf_counter()
    try:
        out = np.lib.format.open_memmap(tmp / "acts.npy", mode="w+", dtype=np.float32, shape=(n_tokens, source.d_in))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=ids.shape[0], desc=f"activations {source.name}", unit="text", leave=False)
        row = 0
        for s in range(0, ids.shape[0], batch_size):
            b_ids, b_mask, b_keep = ids[s:s + batch_size], mask[s:s + batch_size], keep[s:s + batch_size]
            width = int(nonpad[s:s + batch_size].sum(1).max())  # right padding: trim the all-pad columns
            act = source.activations(b_ids[:, :width], b_mask[:, :width])
            sel = act[b_keep[:, :width]]
            bad = ~torch.isfinite(sel).all(1)
            if bool(bad.any()):
                raise NonFiniteActivationError(
                    f"{source.name} (site {source.site}) produced NaN/inf activations at {int(bad.sum())} of "
                    f"{sel.shape[0]} tokens in texts {s}..{s + b_ids.shape[0] - 1} of corpus {corpus.name!r}; "
                    f"nothing was cached. Check the model's weights (a randomized copy with a bad init, an "
                    f"overflowing dtype) before training an SAE on them.")
            out[row:row + sel.shape[0]] = sel.cpu().numpy()
            row += sel.shape[0]
            if bar is not None:
                bar.update(b_ids.shape[0])
        if bar is not None:
            bar.close()
        out.flush()
        del out
        seconds = time.perf_counter() - start
        pos = torch.arange(ids.shape[1]).expand_as(ids)
        doc = torch.arange(ids.shape[0]).unsqueeze(1).expand_as(ids)
        index = {"token_ids": ids[keep].clone(), "doc": doc[keep].clone(), "position": pos[keep].clone(),
                 "word_index": word_index[keep].clone()}
        torch.save(index, tmp / "index.pt")
        meta = {"format": FORMAT, "key": key, "source": source.name, "site": source.site, "d_in": source.d_in,
                "state_hash": source.state_hash(), "randomization": getattr(source, "randomization", None),
                "corpus": corpus.name, "corpus_checksum": corpus.checksum, "n_texts": len(corpus),
                "n_tokens": n_tokens, "max_len": int(max_len), "include_bos": bool(include_bos),
                "collect_seconds": round(seconds, 3)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        try:
            os.replace(tmp, path)
        except OSError:  # another process cached the same key first: use its entry
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    loaded = _load(path, key)
    if loaded is None:  # pragma: no cover - just written
        raise DataError(f"activation cache entry {path} could not be read back; delete it and retry")
    loaded.meta["from_cache"] = False
    return loaded
