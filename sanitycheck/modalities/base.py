"""The :class:`Modality` contract and the :class:`AuditInputs` a modality loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor, nn


#: the longest side of a thumbnail in ``results.json`` (inputs no larger are kept as they are)
THUMBNAIL_SIDE = 64


def thumbnail(t: Tensor, max_side: int = THUMBNAIL_SIDE) -> Tensor:
    """``t`` (``[..., H, W]``) area-averaged so that its longest side is at most ``max_side`` (aspect kept)."""
    import torch.nn.functional as F

    if t.dim() < 2 or max(t.shape[-2:]) <= max_side:
        return t
    h, w = t.shape[-2:]
    scale = max_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    flat = t.detach().to(torch.float32).reshape(-1, 1, h, w)
    return F.interpolate(flat, size=size, mode="area").reshape(*t.shape[:-2], *size)


@dataclass
class AuditInputs:
    """What a modality loads for one run: the audited inputs, the model and the explained targets.

    ``x``: the inputs as one tensor (images ``(N, C, H, W)``; token ids ``(N, L)``); ``target``: what every
    explainer explains (the same in every model state unless a check changes it); ``batch``: the modality's
    own view of the inputs (a text batch with lengths and queries; None for images)."""

    dataset: Any
    model: nn.Module
    model_name: str
    x: Tensor
    logits: Tensor
    labels: Tensor
    target: Any
    batch: Any = None
    dtype: torch.dtype = torch.float32
    #: accuracy of the model on the audited sample
    accuracy: float = float("nan")
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def predicted(self) -> Tensor:
        return self.logits.argmax(1)

    def __len__(self) -> int:
        return int(self.x.shape[0])


class Modality:
    """One input kind. Stateless: every method takes the run's :class:`AuditInputs`.

    A subclass implements :meth:`load`, :meth:`explain` and :meth:`model_inputs`; the rest have defaults that
    suit fixed-shape maps (images)."""

    #: the suite's ``input_kind`` this modality serves (also the explainers'/metrics' modality tag)
    name: str = ""
    #: the element a map scores, for messages ("pixels", "tokens")
    unit: str = "inputs"
    #: import path of ``(out_dir, results, figure_maps) -> {check: [files]}``, the kind's figures
    figures: str = "sanitycheck.report.run_figures:draw_image"
    #: whether submitted methods of this kind (source files) run in the sandbox; else only registered ones
    sandboxed_methods: bool = True
    #: print evaluation scores one line per record (audits whose steps differ per check), not as a table
    scores_per_record: bool = False

    def accepts(self, method_kind: str) -> bool:
        """Whether a submitted method that declares ``method_kind`` inputs can run on this modality's suites."""
        return method_kind == self.name

    # ------------------------------------------------------------------ loading
    def load(self, settings: Any) -> AuditInputs:  # pragma: no cover - abstract
        """Load the dataset and model that ``settings`` (a :class:`~sanitycheck.engine.run.RunSettings`) name."""
        raise NotImplementedError

    # ------------------------------------------------------------------ batching
    def slices(self, inputs: AuditInputs, size: int, rows: Optional[slice] = None) -> Iterator[slice]:
        """Consecutive row slices of at most ``size`` rows (within ``rows``, default all)."""
        start = 0 if rows is None or rows.start is None else rows.start
        stop = len(inputs) if rows is None or rows.stop is None else rows.stop
        for s in range(start, stop, size):
            yield slice(s, min(stop, s + size))

    def model_inputs(self, inputs: AuditInputs, sl: slice, device: Any = "cpu") -> Tuple[Any, ...]:  # pragma: no cover
        """The positional arguments of ``model(...)`` for rows ``sl``."""
        raise NotImplementedError

    def logits(self, model: nn.Module, inputs: AuditInputs, batch_size: int, device: Any = "cpu") -> Tensor:
        with torch.no_grad():
            return torch.cat([model(*self.model_inputs(inputs, sl, device)).cpu()
                              for sl in self.slices(inputs, batch_size)])

    def explain(self, explainer: Any, model: nn.Module, inputs: AuditInputs, target: Any, *, batch_size: int,
                name: str, where: str = "", rows: Optional[slice] = None) -> Tensor:  # pragma: no cover
        """Maps of rows ``rows`` (default all) under ``model``, ``batch_size`` inputs per checked call."""
        raise NotImplementedError

    def example_input(self, inputs: AuditInputs, device: Any = "cpu") -> Any:
        """A small input the randomization checks trace to order the model's layers."""
        args = self.model_inputs(inputs, slice(0, 2), device)
        return args[0] if len(args) == 1 else args

    # ------------------------------------------------------------------ comparing
    def mask(self, inputs: AuditInputs) -> Optional[Tensor]:
        """Which entries of each map are real (``None``: all of them)."""
        return None

    def compare(self, metric: Any, reference: Tensor, other: Tensor, inputs: AuditInputs,
                rows: slice = slice(None)) -> Tensor:
        """Per-sample scores (float64, CPU) of ``metric`` between two sets of maps of rows ``rows``."""
        mask = self.mask(inputs)
        mask = mask[rows] if mask is not None else None
        scores = metric(reference, other) if mask is None else metric(reference, other, mask=mask)
        return scores.to(torch.float64).cpu()

    def undefined_reason(self, reference: Tensor, other: Tensor, scores: Tensor, inputs: AuditInputs,
                         rows: slice = slice(None)) -> Optional[str]:
        from ..engine.scoring import undefined_reason

        return undefined_reason(reference, other, scores)

    # ------------------------------------------------------------------ results
    def example(self, inputs: AuditInputs, maps: Dict[str, Dict[str, Tensor]]) -> Dict[str, Any]:
        """``results.json``'s ``examples``: input 0 and its maps ``maps[explainer][check][step]`` (float16),
        area-averaged to at most :data:`THUMBNAIL_SIDE` pixels a side. They are the leaderboard's thumbnails; at
        full size, 224x224 maps of 39 model states made one ImageNet result file 5.7 MB."""
        from ..results import encode_array

        def small(t: Tensor) -> Dict[str, Any]:
            return encode_array(thumbnail(t))

        return {"image": small(inputs.x[0]),
                "explainers": {n: {c: {s: small(m[0]) for s, m in steps.items()} for c, steps in per.items()}
                               for n, per in maps.items()}}

    def describe(self, doc: Dict[str, Any], inputs: AuditInputs, settings: Any) -> None:
        """Add this input kind's facts to the ``results.json`` document ``doc`` (in place)."""

    def train_split(self, inputs: AuditInputs) -> Any:
        """The model's training split (checks that retrain models); not every input kind has one."""
        from ..errors import NotApplicableError

        raise NotApplicableError(f"{self.name} audits have no training split for checks that retrain models")

    def figure_inputs(self, inputs: AuditInputs, k: int) -> Dict[str, Any]:
        """What the figures need of the first ``k`` inputs (saved with the figure maps)."""
        return {"inputs": inputs.x[:k]}

    def figure_extras(self, inputs: AuditInputs, explainers: Dict[str, Any], k: int, settings: Any) -> Dict[str, Any]:
        """Extra figure data that needs the live model (computed at run time; e.g. CLIP's other queries)."""
        return {}
