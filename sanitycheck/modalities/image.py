"""Images: a registered image dataset, a classifier, maps of the input's spatial shape."""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from .base import AuditInputs, Modality


class ImageModality(Modality):
    figures = "sanitycheck.report.run_figures:draw_image"
    name = "image"
    unit = "pixels"

    def load(self, settings: Any) -> AuditInputs:
        from ..data import ImageDataset, load_dataset
        from ..explainers import check_eval_mode
        from ..models import load_model
        from ..registry import MODELS
        from ..targets import ClassTarget

        suite = settings.suite
        ds_cfg = suite.dataset
        dataset = settings.dataset
        if dataset is None:
            if settings.dataset_name and settings.dataset_name != ds_cfg["name"]:
                params = {}  # another dataset: the suite's loader parameters do not apply
            else:
                params = dict(ds_cfg.get("params", {}))
                if "split" in ds_cfg:
                    params.setdefault("split", ds_cfg["split"])
            if settings.data_root:
                params["root"] = settings.data_root
            dataset = load_dataset(settings.dataset_name or ds_cfg["name"], **params)
        full = dataset
        dataset = dataset.head(settings.n or len(dataset))
        if settings.indices is not None:
            idx = torch.tensor(settings.indices, dtype=torch.long)
            dataset = ImageDataset(dataset.name, dataset.images[idx], dataset.labels[idx], dataset.classes,
                                   dataset.source, dataset.checksum, {**dataset.meta, "indices": settings.indices})
        model = settings.model
        if model is None:
            name = settings.model_name or suite.model["name"]
            params = dict(suite.model.get("params", {})) if name == suite.model["name"] else {}
            params.update(settings.model_params)
            offered = {"seed": params.pop("seed", 0), "device": settings.device, "progress": settings.progress,
                       "cache_dir": settings.cache_dir}
            accepted = inspect.signature(MODELS.get(name)).parameters
            offered = {k: v for k, v in offered.items() if k in accepted}  # torchvision adapters keep no cache
            model = load_model(name, **offered, **params)
        check_eval_mode(model)
        x = dataset.images.to(torch.float32)
        inputs = AuditInputs(dataset=dataset, model=model, model_name=settings.model_name or suite.model["name"],
                             x=x, logits=torch.empty(0), labels=dataset.labels, target=None,
                             extra={"full_dataset": full})
        inputs.logits = self.logits(model, inputs, settings.batch_size, settings.device)
        classes = inputs.predicted if suite.target == "predicted" else dataset.labels
        if inputs.logits.ndim == 2:
            from ..targets import check_class_indices

            check_class_indices(classes, inputs.logits.shape[1],
                                what=f"label(s) of dataset {dataset.name!r} used as target class")
        inputs.target = ClassTarget(classes)
        inputs.accuracy = float((inputs.predicted == dataset.labels).float().mean())
        return inputs

    def model_inputs(self, inputs: AuditInputs, sl: slice, device: Any = "cpu") -> Tuple[Any, ...]:
        return (inputs.x[sl].to(device),)

    def explain(self, explainer: Any, model: nn.Module, inputs: AuditInputs, target: Any, *, batch_size: int,
                name: str, where: str = "", rows: Optional[slice] = None) -> Tensor:
        """Maps as float32, each call checked (:func:`~sanitycheck.explainers.base.call_explainer`): an exception,
        an output that is not a real floating tensor, or a change of the model's weights or mode is an error
        naming the explainer, ``where`` and the inputs; maps outside float32's range are rescaled by a power of
        two (:func:`~sanitycheck.engine.scoring.to_float32_maps`)."""
        from ..engine.scoring import to_float32_maps
        from ..engine.sharing import shared
        from ..explainers.base import ModelWatch, call_explainer

        device = next((p.device for p in model.parameters()), inputs.x.device)
        out, rescaled = [], 0
        watch = ModelWatch(model)  # weights checksum and train/eval flags, verified after every call
        for sl in self.slices(inputs, batch_size, rows):
            loc = ", ".join(p for p in (where, f"inputs {sl.start}..{sl.stop - 1}") if p)
            # within an engine scope, explainers that share a factor (input gradient, Grad-CAM) compute it once
            call = shared(explainer, (watch.checksum, watch.modes), (sl.start, sl.stop), target)
            maps = call_explainer(call, name, loc, model, inputs.x[sl].to(device), target.select(sl), watch=watch)
            maps, n = to_float32_maps(maps, name, loc)
            rescaled += n
            out.append(maps)
        if rescaled:
            warnings.warn(f"explainer {name!r}: {rescaled} float64 maps outside float32's normal range were "
                          f"rescaled by an exact power of two ({where or 'maps'}); ranks and ratios are unchanged",
                          stacklevel=2)
        return torch.cat(out)

    def describe(self, doc: Dict[str, Any], inputs: AuditInputs, settings: Any) -> None:
        doc["postprocessing"].update({
            "spearman_abs": "Spearman rank correlation of |map| (average ranks for ties)",
            "spearman": "Spearman rank correlation of the signed map",
            "ssim": "SSIM of |map| min-max normalized to [0,1], Gaussian window sigma 1.5",
            "hog": "Spearman correlation of HOG features of |map| normalized to [0,1]"})
