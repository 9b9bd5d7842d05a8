"""The :class:`CheckContext`: everything a check may use, and nothing it did not declare.

A check receives one from the engine. Attributes tied to a need (``originals``, ``dataset``,
``train_split()``, ``twin_model``) raise :class:`~sanitycheck.errors.ConfigError` unless the check lists that
need in ``Check.needs`` — so a check's declaration is the truth the engine plans and caches by.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

from ..checks.base import DATASET, ORIGINAL_MAPS, TRAIN_SPLIT, TWIN_MODEL
from ..errors import ConfigError


class CheckContext:
    """The run as one check sees it. Built by the engine; read-only by convention.

    ``model`` is the model as analysed (text: the float64 copy), ``x`` the audited inputs, ``target`` the
    explained targets, ``logits``/``labels`` the trained model's outputs and the labels, ``explainers`` the
    run's explainers by name, ``seed`` the run seed. ``explain(explainer, model, target)`` runs an explainer in
    the modality's batches (every call checked); ``slices``/``model_inputs`` batch the inputs for direct model
    calls."""

    def __init__(self, *, check: Any, modality: Any, inputs: Any, explainers: Dict[str, Any], seed: int,
                 device: Any, batch_size: int, progress: bool, cache_dir: Optional[str],
                 originals: Optional[Dict[str, Tensor]] = None, twin_model: Any = None,
                 explain: Optional[Callable[..., Tensor]] = None, train_split: Optional[Callable[[], Any]] = None):
        self.check_name = getattr(check, "name", "check")
        self._needs = frozenset(getattr(check, "needs", ()))
        self.modality, self.inputs = modality, inputs
        self.explainers = dict(explainers)
        self.seed, self.device, self.batch_size = seed, device, batch_size
        self.progress, self.cache_dir = progress, cache_dir
        self._originals, self._twin = originals, twin_model
        self._explain = explain
        # the run's loader, shared by all checks (it loads and encodes the split once per run)
        self._load_train_split = train_split or (lambda: self.modality.train_split(self.inputs))

    # ------------------------------------------------------------------ always available
    @property
    def model(self) -> nn.Module:
        return self.inputs.model

    @property
    def x(self) -> Tensor:
        return self.inputs.x

    @property
    def target(self) -> Any:
        return self.inputs.target

    @property
    def logits(self) -> Tensor:
        return self.inputs.logits

    @property
    def labels(self) -> Tensor:
        return self.inputs.labels

    @property
    def dtype(self) -> torch.dtype:
        return self.inputs.dtype

    @property
    def classes(self) -> list:
        return list(getattr(self.inputs.dataset, "classes", []) or [])

    @property
    def example_input(self) -> Any:
        return self.modality.example_input(self.inputs, self.device)

    def __len__(self) -> int:
        return len(self.inputs)

    def slices(self, size: int) -> Iterator[slice]:
        return self.modality.slices(self.inputs, size)

    def model_inputs(self, sl: slice) -> Tuple[Any, ...]:
        """The arguments of ``model(...)`` for rows ``sl``."""
        return self.modality.model_inputs(self.inputs, sl, self.device)

    def explain(self, explainer: Any, model: nn.Module, target: Any = None, *, name: Optional[str] = None) -> Tensor:
        """Maps of every audited input under ``model`` (the trained target unless ``target`` is given)."""
        if self._explain is None:
            raise ConfigError(f"check {self.check_name!r}: this context cannot run explainers")
        return self._explain(explainer, model, self.target if target is None else target, name=name)

    def progress_bar(self, iterable: Any, **kwargs: Any) -> Any:
        from tqdm.auto import tqdm

        return tqdm(iterable, disable=not self.progress, leave=False, **kwargs)

    # ------------------------------------------------------------------ declared needs
    def _require(self, need: str, what: str) -> None:
        if need not in self._needs:
            raise ConfigError(f"check {self.check_name!r} uses {what} but does not declare the need {need!r} "
                              f"(it declares {sorted(self._needs)}); add it to the check's `needs`")

    @property
    def originals(self) -> Dict[str, Tensor]:
        """The trained model's maps of every explainer that applies (need ``original_maps``)."""
        self._require(ORIGINAL_MAPS, "the trained model's maps")
        return dict(self._originals or {})

    @property
    def dataset(self) -> Any:
        """The audited dataset object (need ``dataset``)."""
        self._require(DATASET, "the dataset")
        return self.inputs.dataset

    @property
    def twin_model(self) -> Any:
        """A second trained model the user supplied (need ``twin_model``); None when none was given."""
        self._require(TWIN_MODEL, "a second trained model")
        return self._twin

    def train_split(self) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
        """The model's training and test splits, encoded: ``((ids, lengths, q, ql, labels), (...))`` (need
        ``train_split``)."""
        self._require(TRAIN_SPLIT, "the training split")
        return self._load_train_split()
