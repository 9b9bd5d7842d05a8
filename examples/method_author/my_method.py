"""A method author's saliency method, as a plain callable ``(model, x, target) -> maps``.

``explain``: the gradient of the target logit, gated by a coarse class-activation map of the last
convolution (the gradient "times a smoothing" that only the model can supply). ``edge_baseline``:
Sobel edges of the input — it never looks at the model, so a sanity check must catch it.
"""

import torch
import torch.nn.functional as F
from torch import nn


def _last_conv(model: nn.Module) -> nn.Conv2d:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer to take a class-activation map from")
    return convs[-1]


def explain(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gradient of the ``target`` logit w.r.t. ``x``, times the upsampled Grad-CAM of the last conv."""
    acts = {}
    hook = _last_conv(model).register_forward_hook(lambda module, inp, out: acts.__setitem__("a", out))
    x = x.detach().clone().requires_grad_(True)
    try:
        score = model(x).gather(1, target[:, None]).sum()
    finally:
        hook.remove()
    grad_x, grad_a = torch.autograd.grad(score, [x, acts["a"]])
    cam = F.relu((grad_a.mean((2, 3), keepdim=True) * acts["a"]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return (grad_x * cam).detach()


def edge_baseline(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sobel edge magnitude of the input; ``model`` and ``target`` are ignored (a control)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
    kernel = torch.stack([kx, kx.T])[:, None]
    gray = x.mean(1, keepdim=True)
    g = F.conv2d(gray, kernel, padding=1)
    return g.pow(2).sum(1).sqrt()
