"""Small trained models for the audits, trained deterministically on the CPU and cached by content hash.

Every architecture uses ``nn.ReLU`` *modules* (never in-place, never ``F.relu``) so that
captum's Guided Backprop can hook them, and takes inputs in [0, 1].

The cache key of a trained model (``TrainSpec.key()``) hashes the spec, the checksum of the
training data, and the source code of the architecture and of the training function: change
any of them and the model is retrained.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Type, Union

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..seeding import derive_seed, generator
from ..provenance import content_key, source_text as _source  # one source-hash helper for every cache key

__all__ = [
    "FashionCNN",
    "FashionMLP",
    "DigitsCNN",
    "ARCHITECTURES",
    "TrainSpec",
    "DEFAULT_SPECS",
    "DEFAULT_RANDOM_LABEL_PARAMS",
    "random_label_spec",
    "train_or_load",
    "checkpoint_path",
    "build",
    "fmnist_cnn",
    "fmnist_mlp",
    "digits_cnn",
    "textured_fmnist_cnn",
    "textured_fmnist_spec",
]


# --------------------------------------------------------------------------- architectures


class FashionCNN(nn.Module):
    """LeNet-style CNN on 1x28x28: conv(32,5)-relu-pool-conv(64,5)-relu-pool-fc(128)-relu-fc(10)."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(128, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


class FashionMLP(nn.Module):
    """MLP on 1x28x28: fc(784->256)-relu-fc(256->256)-relu-fc(256->10)."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(784, 256)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(256, 256)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(256, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        x = self.relu2(self.fc2(x))
        return self.fc3(x)


class DigitsCNN(nn.Module):
    """Small CNN on 1x8x8: conv(16,3,pad1)-relu-pool-conv(32,3,pad1)-relu-pool-fc(64)-relu-fc(10)."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


#: arch name -> (class, dataset it is built for)
ARCHITECTURES: Dict[str, Type[nn.Module]] = {
    "fmnist_cnn": FashionCNN,
    "fmnist_mlp": FashionMLP,
    "digits_cnn": DigitsCNN,
}


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class TrainSpec:
    """Everything that determines a trained model (together with the data and the code)."""

    arch: str
    dataset: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    seed: int = 0
    train_subset: Optional[int] = None
    random_labels: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"unknown architecture {self.arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ConfigError(f"TrainSpec.epochs must be a positive integer, got {self.epochs!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError(f"TrainSpec.batch_size must be a positive integer, got {self.batch_size!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"TrainSpec.lr must be positive, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"TrainSpec.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.train_subset is not None and not (isinstance(self.train_subset, int) and self.train_subset >= 1):
            raise ConfigError(f"TrainSpec.train_subset must be a positive integer or None, got {self.train_subset!r}")

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """First 16 hex digits of a sha256 over the fields, the training data checksum and the code."""
        payload = {
            "spec": self.as_dict(),
            "data": _train_data_checksum(self.dataset),
            "arch_source": _source(ARCHITECTURES[self.arch]),
            "train_source": _source(_train),
            "prepare_source": _source(_prepare_training_data),
        }
        return content_key(payload)

    def with_random_labels(
        self, train_subset: int, epochs: int, lr: Optional[float] = None, batch_size: Optional[int] = None
    ) -> "TrainSpec":
        """This spec trained on ``train_subset`` samples with permuted labels (same arch, dataset, seed)."""
        return dataclasses.replace(
            self,
            train_subset=train_subset,
            epochs=epochs,
            lr=self.lr if lr is None else lr,
            batch_size=self.batch_size if batch_size is None else batch_size,
            random_labels=True,
        )




# Measured on a 2-core CPU (torch 2.13; same times with and without the malloc env vars):
# fmnist_cnn 31-33 s -> 89.1% test accuracy; fmnist_mlp 6-7 s -> 87.8%; digits_cnn 1.7 s -> 98.6%.
DEFAULT_SPECS: Dict[str, TrainSpec] = {
    "fmnist_cnn": TrainSpec("fmnist_cnn", "fashion_mnist", epochs=3, batch_size=128, lr=2e-3),
    "fmnist_mlp": TrainSpec("fmnist_mlp", "fashion_mnist", epochs=5, batch_size=128, lr=1e-3),
    "digits_cnn": TrainSpec("digits_cnn", "digits", epochs=30, batch_size=64, lr=3e-3),
}

#: Arguments of ``TrainSpec.with_random_labels`` for the data-randomization check: the random-label
#: model must fit its subset (train accuracy >= 95%) quickly. Small batches (many updates per
#: sample) and the cosine annealing of ``_train`` make memorization fast; lr=3e-3 with batch 32
#: killed the CNN (constant prediction), 1e-3 is safe.
DEFAULT_RANDOM_LABEL_PARAMS: Dict[str, Dict[str, Any]] = {
    "fmnist_cnn": dict(train_subset=1000, epochs=100, lr=1e-3, batch_size=16),
    "fmnist_mlp": dict(train_subset=1000, epochs=100, lr=1e-3, batch_size=16),
    "digits_cnn": dict(train_subset=500, epochs=200, lr=3e-3, batch_size=32),
}


def random_label_spec(spec: TrainSpec, **overrides: Any) -> TrainSpec:
    """``spec.with_random_labels`` with this zoo's defaults for ``spec.arch`` (overridable)."""
    params = dict(DEFAULT_RANDOM_LABEL_PARAMS.get(spec.arch, {}))
    params.update(overrides)
    if "train_subset" not in params or "epochs" not in params:
        raise ConfigError(
            f"no random-label defaults for arch {spec.arch!r}; pass train_subset=... and epochs=..."
        )
    return spec.with_random_labels(**params)


# --------------------------------------------------------------------------- data


def _dataset_params(dataset: str) -> Tuple[str, Dict[str, str]]:
    """``"name/k=v,k=v"`` -> ``("name", {k: v})``: a registered dataset with keyword parameters (e.g.
    ``"textured_fmnist/variant=texture_decides,texture=stripes"``); a plain name has none."""
    name, _, rest = dataset.partition("/")
    params: Dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise ConfigError(f"dataset {dataset!r}: parameters after '/' must be k=v pairs separated by commas, "
                              f"got {item!r}")
        params[k] = v
    return name, params


def _load_split(dataset: str, split: str):
    from ..data import load_dataset

    name, params = _dataset_params(dataset)
    return load_dataset(name, split=split, **params)


_checksums: Dict[str, str] = {}


def _train_data_checksum(dataset: str) -> str:
    if dataset not in _checksums:
        _checksums[dataset] = _load_split(dataset, "train").checksum
    return _checksums[dataset]


def _prepare_training_data(spec: TrainSpec, x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    """The first ``train_subset`` samples; with ``random_labels``, their labels permuted (seeded)."""
    if spec.train_subset is not None:
        if spec.train_subset > x.shape[0]:
            raise ConfigError(
                f"train_subset={spec.train_subset} exceeds the {x.shape[0]} training samples of {spec.dataset!r}"
            )
        x, y = x[: spec.train_subset], y[: spec.train_subset]
    if spec.random_labels:
        perm = torch.randperm(y.shape[0], generator=generator(spec.seed, "random_labels"))
        y = y[perm]
    return x, y


# --------------------------------------------------------------------------- training


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor, device: Union[str, torch.device], batch: int = 1000) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch):
        out = model(x[i : i + batch].to(device))
        correct += int((out.argmax(1).cpu() == y[i : i + batch]).sum())
    model.train(was_training)
    return correct / max(1, x.shape[0])


def _train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    spec: TrainSpec,
    device: Union[str, torch.device],
    progress: bool,
) -> None:
    """Adam on cross-entropy with the learning rate annealed to 0 along a cosine, step by step.

    The shuffle order comes from a generator seeded by (seed, "shuffle", arch). The annealing makes the
    final model the converged one (no end-of-training Adam jitter), which matters most for the
    random-label model that must fit its subset.
    """
    from tqdm.auto import tqdm

    opt = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    g = generator(spec.seed, "shuffle", spec.arch)
    n = x.shape[0]
    steps = math.ceil(n / spec.batch_size)
    total = spec.epochs * steps
    done = 0
    model.train()
    label = f"train {spec.arch}{' (random labels)' if spec.random_labels else ''}"
    with tqdm(total=spec.epochs * steps, desc=label, disable=not progress, leave=False, file=sys.stderr) as bar:
        for epoch in range(spec.epochs):
            order = torch.randperm(n, generator=g)
            for i in range(steps):
                idx = order[i * spec.batch_size : (i + 1) * spec.batch_size]
                xb, yb = x[idx].to(device), y[idx].to(device)
                for group in opt.param_groups:
                    group["lr"] = 0.5 * spec.lr * (1.0 + math.cos(math.pi * done / total))
                done += 1
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb), yb)
                loss.backward()
                opt.step()
                bar.update(1)
                if i % 20 == 0:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    model.eval()


def build(arch: str, seed: int = 0) -> nn.Module:
    """An untrained ``arch`` with weights initialized under ``manual_seed(seed)`` (global RNG untouched)."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init", arch))
        model = ARCHITECTURES[arch]()
    return model


def checkpoint_path(spec: TrainSpec, cache_dir: Optional[Union[str, Path]] = None) -> Path:
    from .training import checkpoint_file

    return checkpoint_file(spec.arch, spec.key(), cache_dir)


def train_or_load(
    spec: TrainSpec,
    *,
    cache_dir: Optional[Union[str, Path]] = None,
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
) -> nn.Module:
    """The model trained by ``spec``: loaded from the cache, or trained (deterministically) and cached.

    The cache file is ``<cache_dir>/models/<arch>-<key>.pt`` with a JSON sidecar ``.json`` holding the
    spec, key, accuracies, training time and torch version (:func:`sanitycheck.models.training.load_or_train`).
    The returned model is in eval mode and carries ``sanitycheck_spec`` and ``sanitycheck_info``.
    """
    from .training import load_or_train

    def train(model: nn.Module) -> Dict[str, Any]:
        train_ds = _load_split(spec.dataset, "train")
        test_ds = _load_split(spec.dataset, "test")
        x, y = _prepare_training_data(spec, train_ds.images, train_ds.labels)
        model.to(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(spec.seed, "train", spec.arch))
            start = time.perf_counter()
            _train(model, x, y, spec, device, progress)
            seconds = time.perf_counter() - start
        info = {
            "test_accuracy": _accuracy(model, test_ds.images, test_ds.labels, device),
            # on at most 10,000 training samples: a full 60k pass costs as much as a third of an epoch
            "train_accuracy": _accuracy(model, x[:10000], y[:10000], device),
            "train_accuracy_n": int(min(10000, x.shape[0])),
            "train_seconds": round(seconds, 3),
            "n_train": int(x.shape[0]),
            "torch_version": str(torch.__version__),
            "train_data_checksum": train_ds.checksum,
            "test_data_checksum": test_ds.checksum,
        }
        model.cpu()
        return info

    model = load_or_train(spec.key(), checkpoint_path(spec, cache_dir), spec=spec,
                          build=lambda: build(spec.arch, spec.seed), train=train)
    return model.to(device)


# --------------------------------------------------------------------------- registered factories


def _factory(arch: str) -> Callable[..., nn.Module]:
    def factory(
        seed: int = 0,
        cache_dir: Optional[Union[str, Path]] = None,
        device: Union[str, torch.device] = "cpu",
        progress: bool = True,
        random_labels: bool = False,
        **overrides: Any,
    ) -> nn.Module:
        fields = {f.name for f in dataclasses.fields(TrainSpec)} - {"arch", "dataset"}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ConfigError(f"{arch}: unknown option(s) {', '.join(unknown)}; TrainSpec fields: {', '.join(sorted(fields))}")
        spec = dataclasses.replace(DEFAULT_SPECS[arch], seed=seed, **overrides)
        if random_labels:
            spec = random_label_spec(spec)
        return train_or_load(spec, cache_dir=cache_dir, device=device, progress=progress)

    factory.__name__ = factory.__qualname__ = arch
    factory.__doc__ = (
        f"{ARCHITECTURES[arch].__name__} trained by ``DEFAULT_SPECS[{arch!r}]`` (with ``seed``), cached. "
        f"``random_labels=True`` gives the data-randomization model; other keywords override spec fields."
    )
    return factory


fmnist_cnn = _factory("fmnist_cnn")
fmnist_mlp = _factory("fmnist_mlp")
digits_cnn = _factory("digits_cnn")


# --------------------------------------------------------------------------- textured Fashion-MNIST (issue 16)

# Measured on the 2-core CPU: 20,000 items x 3 epochs, ~15 s per model (fmnist_cnn's full spec takes 3x longer);
# test accuracies in datasets/textured_fmnist.md.
TEXTURED_FMNIST_SPEC = TrainSpec("fmnist_cnn", "textured_fmnist", epochs=3, batch_size=128, lr=2e-3,
                                 train_subset=20000)


def textured_fmnist_spec(variant: str = "texture_decides", texture: str = "stripes", seed: int = 0) -> TrainSpec:
    """The spec of :func:`textured_fmnist_cnn`: fmnist_cnn's architecture on the first 20,000 items of
    ``textured_fmnist`` (``variant``, ``texture``; the data are the same for every model ``seed``)."""
    from ..data.textured_fmnist import TEXTURES, VARIANTS

    if variant not in VARIANTS:
        raise ConfigError(f"textured_fmnist_cnn: unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    if texture not in TEXTURES:
        raise ConfigError(f"textured_fmnist_cnn: unknown texture {texture!r}; known: {', '.join(TEXTURES)}")
    return dataclasses.replace(TEXTURED_FMNIST_SPEC, seed=seed,
                               dataset=f"textured_fmnist/variant={variant},texture={texture}")


def textured_fmnist_cnn(
    variant: str = "texture_decides",
    texture: str = "stripes",
    seed: int = 0,
    cache_dir: Optional[Union[str, Path]] = None,
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
) -> nn.Module:
    """FashionCNN trained on textured Fashion-MNIST (``datasets/textured_fmnist.md``), cached like every zoo model.

    ``variant="texture_decides"``: the texture decides labels 5..9 (the concept matters by construction);
    ``"texture_independent"``: the texture is stamped independently of the label (it does not).
    """
    return train_or_load(textured_fmnist_spec(variant, texture, seed), cache_dir=cache_dir, device=device,
                         progress=progress)
