"""open_clip models for text-to-image saliency audits: loading, a tiny trainable CLIP, and the
:class:`ClipSimilarity` adapter that turns (image tower, fixed prompts) into an image classifier.

* :func:`load_open_clip` — any open_clip model name with a pretrained tag (or a local weights
  file). Unknown names raise :class:`~sanitycheck.errors.UnknownNameError` with close names;
  weights that are not on this machine raise :class:`~sanitycheck.errors.WeightsUnavailableError`
  at once. sanitycheck does not download CLIP weights unless asked to: when ``HF_HUB_OFFLINE`` is
  not set, it is set to ``1`` (process-wide, so a Hugging Face text tower or tokenizer cannot hang on
  the network either) and weights are looked up in the local caches only. Set ``HF_HUB_OFFLINE=0``
  to let open_clip download them (a 3-second reachability probe still fails fast when offline).
* ``sanitycheck-tiny-vit`` — a small ViT CLIP registered with open_clip (``open_clip.add_model_config``
  on a JSON written to ``<cache>/open_clip_configs/``): image 64, patch 8, width 128, 4 layers,
  4 heads, MLP ratio 2; text context 16, width 128, 2 layers, 4 heads; embedding 128 (0.87 M
  parameters, 0.58 M in the image tower). Its text side uses
  :class:`WordTokenizer`, a whole-word tokenizer over the 24-word caption vocabulary of
  :mod:`sanitycheck.data.scenes` (``<pad>`` = 0, ``<sot>`` = 1, ``<eot>`` = the largest id, because
  open_clip pools the text at the position of the largest token id).
* :func:`train_tiny_clip` — contrastive training of that model on the synthetic scenes,
  deterministic and cached like :mod:`sanitycheck.models.zoo`.
* :class:`ClipSimilarity` — ``forward(images) -> (B, P)``: the similarity of each image to P fixed
  prompts, so every image explainer and check works on a CLIP with target = prompt index.
* :func:`load_image` — one image file as a ``(3, size, size)`` tensor in [0, 1].
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError, ModelError, UnknownNameError, WeightsUnavailableError
from ..models.layers import Normalize
from ..seeding import derive_seed, generator
from ..provenance import content_key, source_text as _source  # one source-hash helper for every cache key

__all__ = [
    "TINY_MODEL_NAME",
    "TINY_MEAN",
    "TINY_STD",
    "VOCAB",
    "WordTokenizer",
    "TinyClipSpec",
    "DEFAULT_TINY_SPEC",
    "import_open_clip",
    "register_tiny_config",
    "build_tiny_clip",
    "load_open_clip",
    "train_tiny_clip",
    "tokenize",
    "ClipSimilarity",
    "Projection",
    "clip_similarity",
    "evaluate_retrieval",
    "load_image",
]

TINY_MODEL_NAME = "sanitycheck-tiny-vit"
#: the tiny model's input normalization: [0, 1] -> [-1, 1]
TINY_MEAN = (0.5, 0.5, 0.5)
TINY_STD = (0.5, 0.5, 0.5)


def import_open_clip():
    """``open_clip``, imported after the torchvision shim (see :mod:`sanitycheck._compat`)."""
    from .._compat import import_torchvision

    import_torchvision()
    import open_clip

    return open_clip


# --------------------------------------------------------------------------- tokenizer


def _caption_words() -> List[str]:
    from ..data.scenes import CAPTION_CLASSES, POSITIONS

    words: List[str] = []
    for phrase in ["a an photo of at the", *POSITIONS, *CAPTION_CLASSES]:
        for w in phrase.split():
            if w not in words:
                words.append(w)
    return words


#: ``<pad>``, ``<sot>``, the caption words, ``<eot>`` (24 entries)
VOCAB: List[str] = ["<pad>", "<sot>", *_caption_words(), "<eot>"]


class WordTokenizer:
    """Whole-word tokenizer over a fixed vocabulary, with open_clip's calling convention.

    ``tokenizer(texts) -> LongTensor (n, context_length)``: ``<sot> w1 ... wk <eot>`` then ``<pad>``
    (0). Text is lower-cased and split into words (letters, digits, ``-`` and ``/``); other
    characters are dropped. Raises :class:`~sanitycheck.errors.DataError` for an empty text, a word
    outside the vocabulary, or a text whose tokens do not fit ``context_length`` (never truncates).
    """

    def __init__(self, vocab: Sequence[str] = tuple(VOCAB), context_length: int = 16):
        self.vocab = list(vocab)
        if self.vocab[:2] != ["<pad>", "<sot>"] or self.vocab[-1] != "<eot>":
            raise ConfigError("WordTokenizer vocabulary must start with '<pad>', '<sot>' and end with '<eot>'")
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.context_length = int(context_length)
        self.pad_token_id, self.sot_token_id, self.eot_token_id = 0, 1, len(self.vocab) - 1

    @staticmethod
    def words(text: str) -> List[str]:
        return re.findall(r"[\w\-/]+", text.lower())

    def encode(self, text: str) -> List[int]:
        words = self.words(text)
        unknown = [w for w in words if w not in self.index or w.startswith("<")]
        if unknown:
            raise DataError(f"query {text!r} has word(s) {unknown} outside this model's vocabulary "
                            f"{self.vocab[2:-1]}; rephrase it with those words")
        return [self.index[w] for w in words]

    def __call__(self, texts: Union[str, Sequence[str]], context_length: Optional[int] = None) -> Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        n_ctx = int(context_length or self.context_length)
        out = torch.zeros(len(texts), n_ctx, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            if not ids:
                raise DataError(f"query {text!r} is empty (no words); give a non-empty text")
            ids = [self.sot_token_id, *ids, self.eot_token_id]
            if len(ids) > n_ctx:
                raise DataError(f"query {text!r} has {len(ids)} tokens (with start/end) but the model's context "
                                f"length is {n_ctx}; shorten it to at most {n_ctx - 2} words")
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab={len(self.vocab)} words, context_length={self.context_length})"


def _token_count(tokenizer: Any, text: str) -> Optional[int]:
    """Tokens of ``text`` including start/end tokens, when the tokenizer lets us count them."""
    if isinstance(tokenizer, WordTokenizer):
        return len(tokenizer.encode(text)) + 2
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):  # open_clip SimpleTokenizer
        return len(tokenizer.encode(text)) + 2
    inner = getattr(tokenizer, "tokenizer", None)  # HFTokenizer / SigLipTokenizer wrap a HF tokenizer
    if inner is not None and callable(inner):
        try:
            return len(inner(text)["input_ids"])
        except Exception:  # noqa: BLE001 - counting is best effort
            return None
    return None


def tokenize(tokenizer: Any, texts: Union[str, Sequence[str]], context_length: int) -> Tensor:
    """Token ids ``(n, context_length)`` for ``texts``; empty or too long queries raise DataError."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise DataError("no query given: pass at least one non-empty text prompt")
    for t in texts:
        if not isinstance(t, str):
            raise DataError(f"queries must be strings, got {type(t).__name__}: {t!r}")
        if not t.strip():
            raise DataError(f"empty query {t!r}: give a non-empty text prompt")
        n = _token_count(tokenizer, t)
        if n is not None and n > context_length:
            raise DataError(f"query {t!r} has {n} tokens (with start/end) but the model's context length is "
                            f"{context_length}; shorten it (sanitycheck does not truncate queries silently)")
    return tokenizer(texts, context_length=context_length)


# --------------------------------------------------------------------------- the tiny config


@dataclass(frozen=True)
class TinyClipSpec:
    """Everything that determines a trained tiny CLIP (together with the scenes and the code).

    Architecture (open_clip config fields; ``mlp_ratio`` 2 instead of open_clip's 4 to fit the CPU
    budget), data (:class:`~sanitycheck.data.scenes.SceneSpec` fields of the train and test scenes) and
    optimization: AdamW (betas 0.9/0.98, eps 1e-6, weight decay on matrices only), linear warm-up then
    cosine decay to 0, ``steps`` steps of ``batch_size`` scenes. Pilots (200 steps of 64): lr 5e-4
    reached 68 % zero-shot "item present" against 62 % for lr 1e-3.
    ``multi_positive``: the contrastive targets spread over every caption in the batch that
    describes the image (and every image that the caption describes) instead of the diagonal only;
    with ten classes, a batch of 256 holds many captions that fit an image, which the plain CLIP
    loss would push away as negatives.

    ``token_init_std``: the token embeddings are re-drawn from N(0, token_init_std²) after open_clip's
    initialization (std 0.02, made for a 49k-word vocabulary; ``None`` or 0 keeps it). With 24 words
    and std 0.02 every caption starts with nearly the same embedding (mean pairwise cosine 0.88) and the
    image features are as collapsed (0.99): contrastive training then sat on a loss plateau
    (4.75 ≈ the entropy of the targets' marginal) for the whole of a 160-step pilot. With std 1 the
    loss left the plateau within 50–90 steps (pilots on this machine, batch 128, lr 1e-3; lr 2e-3 stayed
    on the plateau).
    """

    image_size: int = 64
    patch_size: int = 8
    width: int = 128
    layers: int = 4
    head_width: int = 32
    mlp_ratio: float = 2.0
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    context_length: int = 16
    embed_dim: int = 128
    n_train: int = 20000
    n_test: int = 2000
    scene_seed: int = 0
    position_prob: float = 0.5
    min_items: int = 2
    max_items: int = 4
    steps: int = 750
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: int = 30
    multi_positive: bool = True
    token_init_std: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for f in ("image_size", "patch_size", "width", "layers", "head_width", "text_width", "text_layers",
                  "text_heads", "context_length", "embed_dim", "n_train", "n_test", "steps", "batch_size"):
            v = getattr(self, f)
            if not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"TinyClipSpec.{f} must be a positive integer, got {v!r}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"TinyClipSpec: image_size {self.image_size} is not a multiple of patch_size "
                              f"{self.patch_size}")
        if self.width % self.head_width or self.text_width % self.text_heads:
            raise ConfigError("TinyClipSpec: width must be a multiple of head_width and text_width of text_heads")
        if self.token_init_std is not None and self.token_init_std < 0:
            raise ConfigError(f"TinyClipSpec.token_init_std must be >= 0 or None, got {self.token_init_std!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or self.weight_decay < 0 or self.warmup < 0:
            raise ConfigError(f"TinyClipSpec: bad optimization parameters lr={self.lr}, "
                              f"weight_decay={self.weight_decay}, warmup={self.warmup}")

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def model_config(self) -> Dict[str, Any]:
        """The open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``)."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {"image_size": self.image_size, "patch_size": self.patch_size, "width": self.width,
                           "layers": self.layers, "head_width": self.head_width, "mlp_ratio": self.mlp_ratio},
            "text_cfg": {"context_length": self.context_length, "vocab_size": len(VOCAB), "width": self.text_width,
                         "heads": self.text_heads, "layers": self.text_layers, "mlp_ratio": self.mlp_ratio,
                         "pad_id": 0},
        }

    def scene_params(self) -> Dict[str, Any]:
        return {"canvas": self.image_size, "min_items": self.min_items, "max_items": self.max_items,
                "position_prob": self.position_prob}

    def key(self) -> str:
        """16 hex digits of sha256 over the spec, the scenes' keys and the training code."""
        from ..data.fashion_mnist import load_fashion_mnist
        from ..data.scenes import SceneSpec, scenes_key

        keys = []
        for split, n in (("train", self.n_train), ("test", self.n_test)):
            spec = SceneSpec(split=split, n=n, seed=self.scene_seed, **self.scene_params())
            keys.append(scenes_key(spec, load_fashion_mnist(split).checksum))
        payload = {"spec": self.as_dict(), "scenes": keys, "train": _source(_train_clip),
                   "loss": _source(_clip_loss), "build": _source(build_tiny_clip), "vocab": VOCAB}
        return content_key(payload)


#: The default: 750 steps of 64 scenes (48k scenes seen, 2.4 epochs of 20k). Budget: at most 8 minutes
#: on this project's 2-core CPU. REFERENCES.md's 555 steps of 256 (0.76 s/step) could not be reproduced
#: here: with its architecture (MLP ratio 4) a step of 256 took 4-10 s on the shared machine, so the MLP
#: ratio is 2 (a third fewer FLOPs) and batches are 64 (the most scenes per second measured with one
#: thread: ~110/s; two threads on a loaded machine were 4-10x *slower*).
DEFAULT_TINY_SPEC = TinyClipSpec()




def register_tiny_config(spec: TinyClipSpec = DEFAULT_TINY_SPEC, cache_dir: Optional[Union[str, Path]] = None) -> str:
    """Register ``sanitycheck-tiny-vit`` (the default architecture) with open_clip; returns the name.

    The JSON config is written atomically to ``<cache>/open_clip_configs/`` and added with
    ``open_clip.add_model_config``, so ``open_clip.create_model(TINY_MODEL_NAME)`` and
    ``open_clip.list_models()`` know it. A non-default architecture is built from its spec by
    :func:`build_tiny_clip`, not registered.
    """
    from ..io import atomic_write_json
    from ..io import cache_dir as default_cache_dir

    oc = import_open_clip()
    if TINY_MODEL_NAME in oc.list_models():
        return TINY_MODEL_NAME
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = base / "open_clip_configs" / f"{TINY_MODEL_NAME}.json"
    cfg = DEFAULT_TINY_SPEC.model_config()
    if not path.is_file() or json.loads(path.read_text()) != cfg:
        atomic_write_json(path, cfg)
    oc.add_model_config(path)
    return TINY_MODEL_NAME


def build_tiny_clip(spec: TinyClipSpec = DEFAULT_TINY_SPEC, seed: Optional[int] = None) -> nn.Module:
    """An untrained tiny CLIP, initialized under ``manual_seed(derive_seed(seed, 'init', name))``
    (global RNG untouched), in eval mode, with ``sanitycheck_tokenizer`` and ``sanitycheck_info``."""
    import logging

    oc = import_open_clip()
    register_tiny_config()
    seed = spec.seed if seed is None else seed
    cfg = spec.model_config()
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))  # open_clip logs "initialized randomly" as a warning
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "init", TINY_MODEL_NAME))
            model = oc.create_model(TINY_MODEL_NAME, **cfg)
        if spec.token_init_std:
            emb = model.token_embedding.weight
            g = generator(seed, "token_init", TINY_MODEL_NAME)
            with torch.no_grad():
                emb.copy_(torch.randn(emb.shape, generator=g) * spec.token_init_std)
    finally:
        logger.setLevel(level)
    oc.model.set_model_preprocess_cfg(model, {**oc.get_model_preprocess_cfg(model), "mean": TINY_MEAN,
                                              "std": TINY_STD, "size": spec.image_size})
    model.eval()
    model.sanitycheck_tokenizer = WordTokenizer(VOCAB, spec.context_length)
    model.sanitycheck_name = TINY_MODEL_NAME
    model.sanitycheck_info = {"name": TINY_MODEL_NAME, "pretrained": None, "seed": seed, "mean": list(TINY_MEAN),
                              "std": list(TINY_STD), "context_length": spec.context_length}
    return model


# --------------------------------------------------------------------------- loading any open_clip model


def _offline() -> bool:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return os.environ.get("HF_HUB_OFFLINE", "1").strip().lower() not in ("0", "false", "no", "off", "")


HOW_TO_GET_WEIGHTS = (
    "Download them once on a machine with internet access — e.g. "
    "`HF_HUB_OFFLINE=0 python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{tag}')\"` "
    "fills the Hugging Face cache ({hf_cache}) or open_clip's cache (~/.cache/clip), which you can copy here — "
    "or pass pretrained=<path to a local .pt/.bin/.safetensors file>. sanitycheck looks only in local caches "
    "unless HF_HUB_OFFLINE=0 is set."
)


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001
        return os.path.join(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")


def _resolve_weights(oc, name: str, tag: str, cache_dir: Optional[str]) -> Tuple[str, Dict[str, Any]]:
    """Path of the checkpoint of ``(name, tag)`` on this machine, and the tag's config; never hangs."""
    from ..data._net import reachable

    cfg = oc.get_pretrained_cfg(name, tag)
    how = HOW_TO_GET_WEIGHTS.format(name=name, tag=tag, hf_cache=_hf_cache_dir())
    offline = _offline()
    hf_hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    if cfg.get("file"):
        if os.path.isfile(cfg["file"]):
            return cfg["file"], cfg
    if hf_hub:
        model_id, filename = os.path.split(hf_hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:  # pragma: no cover - open_clip depends on it
            hf_hub_download = None
        if hf_hub_download is not None:
            for fname in names:
                try:
                    return hf_hub_download(model_id, fname, cache_dir=cache_dir, local_files_only=True), cfg
                except Exception:  # noqa: BLE001 - not in the cache
                    continue
    if url:
        local = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(local):
            return local, cfg
    where = f"Hugging Face repo {hf_hub!r}" if hf_hub else f"URL {url}"
    if offline:
        raise WeightsUnavailableError(
            f"pretrained weights {tag!r} of open_clip model {name!r} ({where}) are not on this machine, and "
            f"downloads are off (HF_HUB_OFFLINE is set). {how}")
    probe = "https://huggingface.co" if hf_hub else url
    if not reachable(probe):
        raise WeightsUnavailableError(
            f"pretrained weights {tag!r} of open_clip model {name!r} ({where}) are not on this machine and "
            f"{probe} cannot be reached (offline?). {how}")
    try:
        path = oc.pretrained.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001
        raise WeightsUnavailableError(f"could not download weights {tag!r} of open_clip model {name!r}: {err}. "
                                      f"{how}") from err
    if not path:
        raise WeightsUnavailableError(f"open_clip has no download source for weights {tag!r} of {name!r}. {how}")
    return path, cfg


def load_open_clip(name: str, pretrained: Optional[str] = None, device: Union[str, torch.device] = "cpu", *,
                   seed: int = 0, cache_dir: Optional[str] = None) -> nn.Module:
    """An open_clip model in eval mode, with ``sanitycheck_tokenizer`` and ``sanitycheck_info`` set.

    ``name``: an open_clip architecture (``open_clip.list_models()``) or ``"sanitycheck-tiny-vit"``.
    ``pretrained``: ``None`` (random initialization, seeded by ``seed``), a tag of
    ``open_clip.list_pretrained_tags_by_model(name)``, or a path to a local weights file. For the
    tiny model, ``pretrained="trained"`` gives :func:`train_tiny_clip` of the default spec (cached).
    ``cache_dir``: where open_clip keeps downloaded weights (default: the Hugging Face cache).
    ``sanitycheck_info`` records the name, tag, weights file and the image mean/std the model expects.
    """
    import logging

    offline = _offline()  # before open_clip imports huggingface_hub / transformers
    oc = import_open_clip()
    register_tiny_config()
    if name == TINY_MODEL_NAME:
        if pretrained is None:
            return build_tiny_clip(DEFAULT_TINY_SPEC, seed=seed).to(device)
        if pretrained == "trained":
            return train_tiny_clip(DEFAULT_TINY_SPEC).to(device)
        if os.path.isfile(str(pretrained)):
            model = build_tiny_clip(DEFAULT_TINY_SPEC, seed=seed)
            state = torch.load(str(pretrained), map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
            model.sanitycheck_info["pretrained"] = str(pretrained)
            return model.to(device).eval()
        raise UnknownNameError(f"pretrained {pretrained!r} of {TINY_MODEL_NAME!r} is neither 'trained' nor a file")
    known = oc.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        if not close:
            close = [k for k in known if name.lower().replace("/", "-") in k.lower()][:5]
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(f"unknown open_clip model {name!r}.{hint} open_clip.list_models() lists "
                               f"{len(known)} names (e.g. {', '.join(known[:4])}, ...).")
    weights_file, tag_cfg = None, {}
    if pretrained is not None:
        pretrained = str(pretrained)
        if os.path.isfile(pretrained):
            weights_file = pretrained
        else:
            tags = oc.list_pretrained_tags_by_model(name)
            if pretrained not in tags and pretrained.lower() not in tags:
                if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
                    raise WeightsUnavailableError(f"weights file {pretrained!r} for open_clip model {name!r} "
                                                  "does not exist")
                close = difflib.get_close_matches(pretrained, tags, n=3, cutoff=0.4)
                hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise UnknownNameError(f"unknown pretrained tag {pretrained!r} for open_clip model {name!r}.{hint} "
                                       f"Its tags: {tags or '(none)'}; or pass a path to a weights file.")
            weights_file, tag_cfg = _resolve_weights(oc, name, pretrained.lower() if pretrained not in tags
                                                     else pretrained, cache_dir)
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "init", name))
            model = oc.create_model(name, pretrained=weights_file, device=device,
                                    force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                                    cache_dir=cache_dir, pretrained_text=False)
    except (OSError, ValueError) as err:
        if "offline" in str(err).lower() or "connect" in str(err).lower() or "local_files_only" in str(err):
            raise WeightsUnavailableError(f"open_clip model {name!r} needs files that are not on this machine "
                                          f"({err}). Download them once with internet access.") from err
        raise ModelError(f"cannot build open_clip model {name!r} with weights {weights_file!r}: {err}") from err
    except RuntimeError as err:
        raise ModelError(f"cannot build open_clip model {name!r} with weights {weights_file!r}: {err}") from err
    finally:
        logger.setLevel(level)
    pp = oc.get_model_preprocess_cfg(model)
    mean = tuple(tag_cfg.get("mean", pp.get("mean", (0.48145466, 0.4578275, 0.40821073))))
    std = tuple(tag_cfg.get("std", pp.get("std", (0.26862954, 0.26130258, 0.27577711))))
    try:
        tokenizer = oc.get_tokenizer(name)
    except Exception as err:  # noqa: BLE001 - e.g. a HF tokenizer not in the cache
        raise WeightsUnavailableError(f"the tokenizer of open_clip model {name!r} is not on this machine ({err}). "
                                      "Download it once with internet access (HF_HUB_OFFLINE=0).") from err
    model.eval()
    model.sanitycheck_tokenizer = tokenizer
    model.sanitycheck_name = name
    model.sanitycheck_info = {"name": name, "pretrained": pretrained, "weights_file": weights_file,
                              "mean": list(mean), "std": list(std), "seed": seed if weights_file is None else None,
                              "context_length": int(getattr(model, "context_length", 77)), "offline": offline}
    return model


# --------------------------------------------------------------------------- the similarity adapter


def _context_length(clip_model: nn.Module, tokenizer: Any) -> int:
    n = getattr(clip_model, "context_length", None)
    if n is None:
        n = getattr(getattr(clip_model, "text", None), "context_length", None)
    if n is None:
        n = getattr(tokenizer, "context_length", None)
    if n is None:
        raise ModelError(f"cannot tell the context length of {type(clip_model).__name__}")
    return int(n)


class Projection(nn.Module):
    """``x @ weight``: an image tower's output projection (``weight`` is shared, not copied)."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.weight = weight

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]} -> {self.weight.shape[1]}"


def _split_projection(visual: nn.Module) -> Tuple[nn.Module, Optional[Projection]]:
    """``(tower, projection)``: for a tower holding its output projection as the raw parameter ``proj``,
    a shallow view of the tower without it (same submodules, same parameter tensors, its own
    parameter table with ``proj=None``) and a :class:`Projection` holding that parameter; else
    ``(visual, None)``. The original tower is not changed."""
    proj = getattr(visual, "_parameters", {}).get("proj")
    if not isinstance(proj, nn.Parameter) or proj.dim() != 2:
        return visual, None
    tower = visual.__class__.__new__(visual.__class__)
    tower.__dict__.update({k: (v.copy() if isinstance(v, (dict, set)) else v) for k, v in visual.__dict__.items()})
    tower._parameters["proj"] = None
    return tower, Projection(proj)


class ClipSimilarity(nn.Module):
    """Similarity of images to a fixed set of text prompts: ``forward(images) -> (B, P)``.

    ``images`` are RGB in [0, 1] at the tower's resolution (a one-channel batch is expanded to three
    channels); they are normalized inside with the model's mean/std (:class:`~sanitycheck.models.layers.Normalize`,
    no parameters). The text features of the prompts are computed once, L2-normalized, and stored
    as the buffer ``text_features``: randomizing the image tower (``visual``, the open_clip visual
    module, sharing every parameter with ``clip_model``) leaves the text side fixed, and the text tower is
    not part of this module, so parameter randomization checks only ever touch the image side.

    Projection: an open_clip ViT keeps its output projection ``proj`` as a raw parameter of the tower,
    beside the class and positional embeddings. A randomization check steps through *modules* in
    forward order, so it would randomize the projection (the top of the tower) together with the
    embeddings at the bottom, and start the cascade with ``ln_post``, whose re-drawn affine parameters
    leave the function nearly unchanged (every method "fails" such a step). Here the projection is the
    module ``projection`` (:class:`Projection`, parameter ``projection.weight`` — the *same* tensor as
    ``clip_model.visual.proj``, not a copy), and ``visual`` is a view of the tower with ``proj=None``
    (open_clip's own ``prune_head`` convention) sharing all its submodules and parameters; ``clip_model``
    itself is not changed. A cascade then runs ``projection``, ``visual.ln_post``, the blocks from the
    last, ``visual.ln_pre``, ``visual`` (class and positional embeddings), ``visual.conv1``.

    ``score``:

    * ``"cosine"`` (default): cosine similarity of the image embedding and each prompt embedding,
      multiplied by ``exp(logit_scale)`` when ``scale=True`` (recorded in ``scaled``);
    * ``"softmax"``: softmax over the prompt set of ``exp(logit_scale) * cosine`` (the scale is always
      applied: a softmax of raw cosines is nearly uniform). A map explaining it is *relative to the
      other prompts* — what makes this prompt win over them — not a map of the raw similarity to the
      query alone; with a single prompt it is constant 1 and every gradient is 0.

    ``logit_scale`` is read once at construction into the buffer ``logit_scale`` (no parameter).
    ``resize`` (default True): images whose size differs from the tower's ``image_size`` are resized
    bilinearly inside ``forward`` (differentiable, so maps stay at the input's resolution): a 224-pixel
    open_clip model can score the 64-pixel scenes. ``resize=False`` makes a size mismatch a DataError.
    Explain prompt ``p`` with target ``p`` (a class index), e.g. ``Gradient()(sim, x, target)``.
    """

    SCORES = ("cosine", "softmax")

    def __init__(self, clip_model: nn.Module, prompts: Union[str, Sequence[str]], *, tokenizer: Any = None,
                 score: str = "cosine", scale: bool = False, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, resize: bool = True):
        super().__init__()
        if score not in self.SCORES:
            raise ConfigError(f"ClipSimilarity: score must be one of {self.SCORES}, got {score!r}")
        if clip_model.training:
            raise ModelError(f"{type(clip_model).__name__} is in train mode; call .eval() before building "
                             "a ClipSimilarity (text features are computed once, now)")
        visual = getattr(clip_model, "visual", None)
        if visual is None or not hasattr(clip_model, "encode_text"):
            raise ModelError(f"{type(clip_model).__name__} is not an open_clip CLIP model "
                             "(no visual tower / encode_text)")
        tokenizer = tokenizer if tokenizer is not None else getattr(clip_model, "sanitycheck_tokenizer", None)
        if tokenizer is None:
            raise ConfigError("ClipSimilarity needs a tokenizer: pass tokenizer=open_clip.get_tokenizer(name), or "
                              "load the model with sanitycheck.models.clip.load_open_clip")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        info = getattr(clip_model, "sanitycheck_info", {}) or {}
        mean = tuple(mean if mean is not None else info.get("mean", TINY_MEAN))
        std = tuple(std if std is not None else info.get("std", TINY_STD))
        n_ctx = _context_length(clip_model, tokenizer)
        tokens = tokenize(tokenizer, prompts, n_ctx)
        device = next(clip_model.parameters()).device
        with torch.no_grad():
            text = clip_model.encode_text(tokens.to(device))
            text = F.normalize(text.float(), dim=-1)
        tower, projection = _split_projection(visual)
        self.visual = tower
        #: the tower's output projection as a module of its own (None when the tower has none, e.g. a ResNet)
        self.projection = projection
        self.normalize = Normalize(mean, std).to(device)
        self.register_buffer("text_features", text.detach().clone())
        self.register_buffer("logit_scale", clip_model.logit_scale.detach().float().exp().clone().reshape(()))
        self.prompts: List[str] = prompts
        self.score = score
        self.scaled = bool(scale) or score == "softmax"
        size = getattr(visual, "image_size", None)
        if isinstance(size, int):
            size = (size, size)
        self.input_size: Optional[Tuple[int, int]] = tuple(int(v) for v in size) if size is not None else None
        self.resize = bool(resize)
        self.sanitycheck_name = f"clip_similarity[{getattr(clip_model, 'sanitycheck_name', type(clip_model).__name__)}]"
        self.sanitycheck_info = {**info, **self.config()}
        self.eval()

    @property
    def n_prompts(self) -> int:
        return len(self.prompts)

    def config(self) -> Dict[str, Any]:
        return {"prompts": list(self.prompts), "score": self.score, "scaled": self.scaled,
                "logit_scale": float(self.logit_scale), "input_size": list(self.input_size or []),
                "resize": self.resize}

    def image_features(self, images: Tensor) -> Tensor:
        """L2-normalized image embeddings ``(B, D)`` of images in [0, 1]."""
        if images.dim() != 4:
            raise DataError(f"ClipSimilarity expects images (B, C, H, W), got shape {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if self.input_size is not None and tuple(images.shape[-2:]) != self.input_size:
            if not self.resize:
                raise DataError(f"{self.sanitycheck_name} takes {self.input_size[0]}x{self.input_size[1]} images, got "
                                f"{images.shape[-2]}x{images.shape[-1]} (build it with resize=True to resize inside)")
            images = F.interpolate(images, size=self.input_size, mode="bilinear", align_corners=False)
        feats = self.visual(self.normalize(images))
        if isinstance(feats, (tuple, list)):
            feats = feats[0]
        if self.projection is not None:
            feats = self.projection(feats)
        return F.normalize(feats, dim=-1)

    def forward(self, images: Tensor) -> Tensor:
        sims = self.image_features(images) @ self.text_features.t().to(images.dtype)
        if self.scaled:
            sims = sims * self.logit_scale
        if self.score == "softmax":
            sims = sims.softmax(dim=-1)
        return sims

    def extra_repr(self) -> str:
        return f"prompts={len(self.prompts)}, score={self.score!r}, scaled={self.scaled}"

    # Pickling goes through :func:`_restore_similarity`, which imports open_clip (with the torchvision shim of
    # :func:`import_open_clip`) *before* unpickling the tower: a plain pickle would import open_clip's modules
    # directly, and that import fails where torchvision's C extension cannot load (CPU-only torch, or the
    # sandbox worker of ``sanitycheck submit``, which refuses native library loads). deepcopy stays the default.
    def __reduce_ex__(self, protocol):
        import io

        buf = io.BytesIO()
        torch.save(self.__dict__, buf)
        return _restore_similarity, (type(self), buf.getvalue())

    def __deepcopy__(self, memo):
        import copy

        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__dict__, memo))
        return new


def _restore_similarity(cls: type, payload: bytes) -> "ClipSimilarity":
    """Unpickle a :class:`ClipSimilarity` (see ``ClipSimilarity.__reduce_ex__``); only reached from an
    unpickler that already runs arbitrary code (``weights_only=False``)."""
    import io

    import_open_clip()
    obj = cls.__new__(cls)
    obj.__setstate__(torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False))
    return obj


def clip_similarity(name: str = TINY_MODEL_NAME, pretrained: Optional[str] = "trained",
                    prompts: Optional[Sequence[str]] = None, score: str = "cosine", scale: bool = False,
                    device: Union[str, torch.device] = "cpu", seed: int = 0,
                    cache_dir: Optional[Union[str, Path]] = None, progress: bool = True,
                    resize: bool = True, model: Optional[str] = None) -> ClipSimilarity:
    """Model factory for the runner: :func:`load_open_clip` wrapped in a :class:`ClipSimilarity`
    over ``prompts`` (default: the ten Fashion-MNIST class prompts of the synthetic scenes, whose
    indices are the labels of :func:`~sanitycheck.data.scenes.clip_scenes_dataset`).

    ``name``/``pretrained``: any open_clip model and tag (weights from the local caches only, unless
    ``HF_HUB_OFFLINE=0``; missing weights fail at once with :class:`~sanitycheck.errors.WeightsUnavailableError`),
    ``pretrained=None`` (or ``"none"``) for a seeded random initialization; the default is the tiny CLIP trained here
    (``cache_dir``/``progress`` go to :func:`train_tiny_clip`). ``score``: ``"cosine"`` or ``"softmax"``
    (recorded in the model's ``sanitycheck_info``, hence in results). ``model`` is the same as ``name``, for
    suites and ``--model-param`` (where ``name`` is the registry's own argument): ``params: {model: ViT-B-32,
    pretrained: openai}``."""
    from ..data.scenes import class_prompts

    if model is not None:
        if name not in (TINY_MODEL_NAME, model):
            raise ConfigError(f"clip_similarity: name={name!r} and model={model!r} disagree; give one of them")
        name = model

    if isinstance(pretrained, str) and pretrained.lower() in ("none", "random"):
        pretrained = None  # as on the command line: --model-param pretrained=none
    if name == TINY_MODEL_NAME and pretrained == "trained":
        register_tiny_config()
        model = train_tiny_clip(DEFAULT_TINY_SPEC, cache_dir=cache_dir, progress=progress).to(device)
    else:
        model = load_open_clip(name, pretrained, device, seed=seed)
    return ClipSimilarity(model, list(prompts) if prompts is not None else class_prompts(), score=score,
                          scale=scale, resize=resize)


# --------------------------------------------------------------------------- images


def load_image(path: Union[str, Path], size: int, *, grayscale: str = "error") -> Tensor:
    """One image file as float32 ``(3, size, size)`` in [0, 1]: CLIP's preprocessing without the
    normalization (shorter side resized to ``size`` with bicubic interpolation, then center-cropped);
    :class:`ClipSimilarity` normalizes inside.

    ``grayscale``: ``"error"`` (default) raises :class:`~sanitycheck.errors.DataError` for a one-channel
    image (CLIP models are trained on colour photos; a grey image is often a mistake in the data);
    ``"convert"`` replicates it to RGB and warns. Images with alpha are composited on black.
    Missing or unreadable files raise DataError naming the file.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:  # pragma: no cover
        raise DataError(f"load_image needs Pillow: {err}") from err
    if grayscale not in ("error", "convert"):
        raise ConfigError(f"load_image: grayscale must be 'error' or 'convert', got {grayscale!r}")
    if not (isinstance(size, int) and size >= 1):
        raise ConfigError(f"load_image: size must be a positive integer, got {size!r}")
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("L", "LA", "1", "I", "I;16", "F") or (mode == "P" and _palette_is_gray(im)):
                if grayscale == "error":
                    raise DataError(f"image {str(path)!r} is grayscale (mode {mode!r}); CLIP expects RGB. Pass "
                                    "grayscale='convert' to replicate it to three channels")
                warnings.warn(f"image {str(path)!r} is grayscale (mode {mode!r}); replicated to RGB", stacklevel=2)
            if mode in ("I", "I;16", "F"):
                import numpy as np

                arr = np.asarray(im, dtype=np.float64)
                hi = 65535.0 if mode.startswith("I") and arr.max() > 255 else (1.0 if mode == "F" else 255.0)
                im = Image.fromarray((np.clip(arr / hi, 0, 1) * 255).astype("uint8"), "L")
            if "A" in im.mode or im.mode == "P":
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(bg, im)
            rgb = im.convert("RGB")
    except FileNotFoundError as err:
        raise DataError(f"image file {str(path)!r} does not exist") from err
    except IsADirectoryError as err:
        raise DataError(f"{str(path)!r} is a directory, not an image file") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read image {str(path)!r}: {err} (not an image, or a corrupt/truncated file)") from err
    w, h = rgb.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    rgb = rgb.resize(new, Image.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    rgb = rgb.crop((left, top, left + size, top + size))
    import numpy as np

    arr = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _palette_is_gray(im) -> bool:
    try:
        pal = im.convert("RGB")
        import numpy as np

        a = np.asarray(pal)
        return bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())
    except Exception:  # noqa: BLE001
        return False


# --------------------------------------------------------------------------- training


def _clip_loss(logits: Tensor, consistent: Optional[Tensor]) -> Tensor:
    """Symmetric InfoNCE; with ``consistent`` (b, b) bool, multi-positive soft targets."""
    n = logits.shape[0]
    if consistent is None:
        labels = torch.arange(n, device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    m = consistent.to(logits.dtype)
    i2t = m / m.sum(1, keepdim=True)
    t2i = m.t() / m.t().sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, i2t) + F.cross_entropy(logits.t(), t2i))


def _param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _train_clip(model: nn.Module, scenes, tokens: Tensor, spec: TinyClipSpec, progress: bool) -> List[float]:
    """AdamW, warm-up + cosine schedule, shuffled epochs from a seeded generator; returns the losses."""
    from tqdm.auto import tqdm

    norm = Normalize(TINY_MEAN, TINY_STD)
    opt = torch.optim.AdamW(_param_groups(model, spec.weight_decay), lr=spec.lr, betas=(0.9, 0.98), eps=1e-6)
    g = generator(spec.seed, "shuffle", TINY_MODEL_NAME)
    n = len(scenes)
    order = torch.randperm(n, generator=g)
    pos = 0
    losses: List[float] = []
    model.train()
    with tqdm(total=spec.steps, desc=f"train {TINY_MODEL_NAME}", disable=not progress, leave=False,
              file=sys.stderr) as bar:
        for step in range(spec.steps):
            if pos + spec.batch_size > n:
                order, pos = torch.randperm(n, generator=g), 0
            idx = order[pos:pos + spec.batch_size]
            pos += spec.batch_size
            if step < spec.warmup:
                lr = spec.lr * (step + 1) / spec.warmup
            else:
                t = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
                lr = 0.5 * spec.lr * (1 + math.cos(math.pi * t))
            for group in opt.param_groups:
                group["lr"] = lr
            x = norm(scenes.image_batch(idx))
            img = F.normalize(model.encode_image(x), dim=-1)
            txt = F.normalize(model.encode_text(tokens[idx]), dim=-1)
            logits = model.logit_scale.exp() * img @ txt.t()
            cons = scenes.consistent(idx, idx) if spec.multi_positive else None
            loss = _clip_loss(logits, cons)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def evaluate_retrieval(model: nn.Module, scenes, batch: int = 500) -> Dict[str, float]:
    """Zero-shot and retrieval accuracies of a CLIP on captioned scenes.

    * ``zero_shot_present``: the top-1 of the ten class prompts names an item present in the image
      (chance ``zero_shot_chance`` = mean items per scene / 10);
    * ``zero_shot_caption_item``: the top-1 class prompt is the captioned item's class;
    * ``image_to_text``: each image's top-1 caption among all the scenes' captions describes it
      (its class is present, at the named cell when positional); chance = the share of captions
      that describe a random image; ``image_to_text_exact``: the top-1 is the image's own caption;
    * ``text_to_image`` / ``text_to_image_exact``: the same from each caption to the images.
    """
    from ..data.scenes import class_prompts

    tok = getattr(model, "sanitycheck_tokenizer")
    n_ctx = _context_length(model, tok)
    info = getattr(model, "sanitycheck_info", {}) or {}
    norm = Normalize(info.get("mean", TINY_MEAN), info.get("std", TINY_STD))
    feats = []
    for i in range(0, len(scenes), batch):
        feats.append(F.normalize(model.encode_image(norm(scenes.image_batch(slice(i, i + batch)))), dim=-1))
    img = torch.cat(feats)
    cap = F.normalize(model.encode_text(tokenize(tok, scenes.captions, n_ctx)), dim=-1)
    prompts = F.normalize(model.encode_text(tokenize(tok, class_prompts(), n_ctx)), dim=-1)
    present = scenes.present()
    zs = (img @ prompts.t()).argmax(1)
    sims = img @ cap.t()
    cons = scenes.consistent()
    n = len(scenes)
    ar = torch.arange(n)
    i2t = sims.argmax(1)
    t2i = sims.argmax(0)
    return {
        "zero_shot_present": float(present[ar, zs].float().mean()),
        "zero_shot_chance": float(present.float().sum(1).mean() / present.shape[1]),
        "zero_shot_caption_item": float((zs == scenes.caption_classes).float().mean()),
        "image_to_text": float(cons[ar, i2t].float().mean()),
        "image_to_text_exact": float((i2t == ar).float().mean()),
        "text_to_image": float(cons[t2i, ar].float().mean()),
        "text_to_image_exact": float((t2i == ar).float().mean()),
        "retrieval_chance": float(cons.float().mean()),
        "retrieval_exact_chance": 1.0 / n,
        "n_test": n,
    }


def checkpoint_path(spec: TinyClipSpec, cache_dir: Optional[Union[str, Path]] = None) -> Path:
    from ..models.training import checkpoint_file

    return checkpoint_file(TINY_MODEL_NAME, spec.key(), cache_dir)


def train_tiny_clip(spec: TinyClipSpec = DEFAULT_TINY_SPEC, cache_dir: Optional[Union[str, Path]] = None,
                    progress: bool = True) -> nn.Module:
    """The tiny CLIP trained by ``spec``: from the cache, or trained (deterministically) and cached.

    Cache: ``<cache_dir>/models/sanitycheck-tiny-vit-<key>.pt`` and a JSON sidecar with the spec,
    key, training seconds, final loss and :func:`evaluate_retrieval` on ``spec.n_test`` test scenes.
    Returns the model in eval mode with ``sanitycheck_tokenizer``, ``sanitycheck_spec`` and
    ``sanitycheck_info``. Initialization (seeded ``manual_seed`` inside ``fork_rng``) and the shuffle
    (a generator seeded from ``spec.seed``) are deterministic; results are bitwise reproducible
    with the same torch build and thread count. Set the Makefile's ``MALLOC_*`` variables before
    starting Python: they make CPU training several times faster (REFERENCES.md).
    """
    from ..data.scenes import load_clip_scenes
    from .training import load_or_train

    def train(model: nn.Module) -> Dict[str, Any]:
        sp = spec.scene_params()
        train = load_clip_scenes("train", spec.n_train, spec.scene_seed, cache_dir=cache_dir, **sp)
        test = load_clip_scenes("test", spec.n_test, spec.scene_seed, cache_dir=cache_dir, **sp)
        tok = model.sanitycheck_tokenizer
        tokens = tokenize(tok, train.captions, spec.context_length)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(spec.seed, "train", TINY_MODEL_NAME))
            start = time.perf_counter()
            losses = _train_clip(model, train, tokens, spec, progress)
            seconds = time.perf_counter() - start
        metrics = evaluate_retrieval(model, test)
        return {**metrics, "train_seconds": round(seconds, 2), "final_loss": float(sum(losses[-20:]) / 20),
                "first_loss": losses[0], "torch_version": str(torch.__version__), "threads": torch.get_num_threads(),
                "train_scenes_checksum": train.checksum, "test_scenes_checksum": test.checksum,
                "logit_scale": float(model.logit_scale.detach().exp())}

    return load_or_train(spec.key(), checkpoint_path(spec, cache_dir), spec=spec, build=lambda: build_tiny_clip(spec),
                         train=train, info_prefix=lambda m: {**m.sanitycheck_info, "pretrained": "trained"})
