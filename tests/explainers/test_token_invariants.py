"""Invariants of every registered token explainer (registry ``sanitycheck.token_explainers``): shape,
zero at padding, finite, deterministic, independent of the batch, the model untouched; explainers that
need a transformer's self-attention say so on other models."""

from __future__ import annotations

import pytest
import torch

from sanitycheck.errors import NotApplicableError
from sanitycheck.explainers.attention import TextBatch
from sanitycheck.models.attention import AttentionClassifier
from sanitycheck.models.transformer import MiniLMAttentionClassifier
from sanitycheck.registry import TOKEN_EXPLAINERS
from sanitycheck.explainers import get_explainer

NAMES = TOKEN_EXPLAINERS.names()


def _models():
    torch.manual_seed(0)  # test-only
    lstm = AttentionClassifier(30, 3, "bilstm", "additive", embed_dim=8, hidden=6).double().eval()
    bert = MiniLMAttentionClassifier.from_config(3, hidden=16, layers=2, heads=2, vocab_size=32, cls_id=30,
                                                sep_id=31).double().eval()
    return {"bilstm": lstm, "minilm_tiny": bert}


MODELS = _models()


def _batch():
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([7, 2, 5, 1])
    ids = torch.randint(1, 30, (4, 7), generator=g)
    ids[torch.arange(7)[None, :] >= lengths[:, None]] = 0
    return TextBatch(ids, lengths), torch.tensor([0, 2, 1, 0])


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("name", NAMES)
def test_token_explainer_invariants(name, model_name):
    model = MODELS[model_name]
    explainer = get_explainer(name, modality="text")
    batch, target = _batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if getattr(explainer, "needs_self_attention", False) or name in ("self_attention", "attention_rollout",
                                                                         "chefer_relevance"):
        if not hasattr(model, "self_attentions"):
            with pytest.raises(NotApplicableError):
                explainer(model, batch, target)
            return
    maps = explainer(model, batch, target)
    assert maps.shape == batch.ids.shape
    assert torch.isfinite(maps).all()
    pad = torch.arange(7)[None, :] >= batch.lengths[:, None]
    assert (maps[pad] == 0).all()
    again = explainer(model, batch, target)
    assert torch.equal(maps, again)
    part = explainer(model, TextBatch(batch.ids[2:3, :5], batch.lengths[2:3]), target[2:3])
    assert torch.allclose(part[0], maps[2, :5], atol=1e-10)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
