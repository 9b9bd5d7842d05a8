"""Adversarial attention and attention permutation (Jain & Wallace 2019) on a tiny trained BiLSTM."""

from __future__ import annotations

import math

import pytest
import torch

from sanitycheck.checks.adversarial_attention import (
    LN2,
    adversarial_attention,
    jsd,
    output_distribution,
    permutation_test,
    tvd,
)
from sanitycheck.errors import ModelError
from sanitycheck.models.attention import AttentionClassifier


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int, seed: int):
    """label = token 3 present; lengths 4..12, ids in [1, 30), padded with 0."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 13, (n,), generator=g)
    ids = torch.randint(4, 30, (n, 12), generator=g)
    has = torch.rand(n, generator=g) < 0.5
    pos = (torch.rand(n, generator=g) * lengths).long()
    ids[has, pos[has]] = 3
    ids[torch.arange(12)[None, :] >= lengths[:, None]] = 0
    return ids, lengths, has.long()


@pytest.fixture(scope="module")
def trained():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AttentionClassifier(vocab_size=30, n_classes=2, encoder="bilstm", attention="additive",
                                    embed_dim=16, hidden=8)
        ids, lengths, y = _data(256, 1)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(2)
        for _ in range(60):
            idx = torch.randint(0, 256, (64,), generator=g)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(ids[idx], lengths[idx]), y[idx]).backward()
            opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return model


@pytest.fixture(scope="module")
def batch():
    ids, lengths, y = _data(16, 7)
    return ids, lengths, y


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, snap):
    for k, v in model.state_dict().items():
        assert v.dtype == snap[k].dtype and torch.equal(v, snap[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_model_learned_the_task(trained, batch):
    ids, lengths, y = batch
    acc = (trained(ids, lengths).argmax(1) == y).double().mean()
    assert acc >= 0.8


def test_jsd_properties():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(50, 7, generator=g, dtype=torch.float64) * 3, -1)
    q = torch.softmax(torch.randn(50, 7, generator=g, dtype=torch.float64) * 3, -1)
    assert torch.allclose(jsd(p, p), torch.zeros(50, dtype=torch.float64), atol=1e-15)
    d = jsd(p, q)
    assert d.dtype == torch.float64 and (d >= 0).all() and (d <= LN2 + 1e-12).all()
    assert torch.allclose(d, jsd(q, p), atol=1e-15)
    # disjoint supports reach ln 2 exactly; zeros give no NaN, in value or gradient
    a = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[0.0, 0.5, 0.5]], dtype=torch.float64)
    v = jsd(a, b)
    assert math.isclose(float(v.detach()), LN2, rel_tol=1e-12)
    v.sum().backward()
    assert torch.isfinite(a.grad).all()
    # mask drops positions
    mask = torch.tensor([[True, False, False]])
    assert float(jsd(a.detach(), b, mask)) == pytest.approx(0.5 * math.log(2.0))
    assert torch.allclose(tvd(p, p), torch.zeros(50, dtype=torch.float64))
    assert math.isclose(float(tvd(a.detach(), b)), 1.0)


def test_output_distribution_binary_tvd_is_abs_change(trained, batch):
    ids, lengths, _ = batch
    m = trained
    with torch.no_grad():
        hidden, query = m.encode(ids, lengths)
        att = m.attend(hidden, lengths, query)
        p = output_distribution(m, hidden, att, query)
        u = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).float()
        q = output_distribution(m, hidden, u / u.sum(1, keepdim=True), query)
    assert p.shape == (ids.shape[0], 2)
    assert torch.allclose(tvd(p, q), (p[:, 1] - q[:, 1]).abs().double(), atol=1e-6)


def test_permutation_length_one_changes_nothing(trained):
    ids = torch.tensor([[5, 0, 0], [3, 0, 0]])
    res = permutation_test(trained, ids, torch.tensor([1, 1]), n_permutations=20)
    assert res.output_change.shape == (2, 20)
    assert torch.equal(res.median_output_change, torch.zeros(2, dtype=torch.float64))


def test_permutation_batch_invariant_and_deterministic(trained, batch):
    ids, lengths, _ = batch
    snap = _snapshot(trained)
    full = permutation_test(trained, ids, lengths, n_permutations=30, seed=3)
    again = permutation_test(trained, ids, lengths, n_permutations=30, seed=3, chunk_elements=1)  # 1 instance/chunk
    assert torch.equal(full.output_change, again.output_change)
    part = permutation_test(trained, ids[5:9, : int(lengths[5:9].max())], lengths[5:9], n_permutations=30, seed=3)
    assert torch.allclose(part.output_change, full.output_change[5:9], atol=1e-12)
    other = permutation_test(trained, ids, lengths, n_permutations=30, seed=4)
    assert not torch.equal(other.output_change, full.output_change)
    assert full.median_output_change.shape == (ids.shape[0],)
    assert (full.median_output_change >= 0).all() and (full.median_output_change > 0).any()
    assert 0.0 <= full.saturated_share <= 1.0
    _assert_unchanged(trained, snap)


@pytest.fixture(scope="module")
def adversarial(trained, batch):
    ids, lengths, _ = batch
    snap = _snapshot(trained)
    res = adversarial_attention(trained, ids[:8], lengths[:8], k=5, steps=300, seed=0)
    return res, snap


def test_adversarial_finds_distant_attention(adversarial, batch):
    res, _ = adversarial
    ids, lengths, _ = batch
    B = 8
    assert res.candidates.shape == (B, 5, ids.shape[1]) and res.candidates.dtype == torch.float64
    assert res.output_change.shape == (B, 5) and res.jsd.shape == (B, 5)
    assert (res.jsd <= LN2 + 1e-12).all() and (res.jsd >= -1e-15).all()
    found = ~torch.isnan(res.max_jsd)
    assert torch.equal(found, res.found)
    assert res.share_found >= 0.75
    # far from the model's attention for most instances (J&W: those whose output hinges on one token resist)
    assert (res.max_jsd[found] > 0.2).float().mean() >= 0.5
    assert float(res.max_jsd[found].median()) > 0.2
    # max_jsd is over candidates within report_epsilon
    for b in range(B):
        ok = res.output_change[b] <= 0.05
        if ok.any():
            assert float(res.max_jsd[b]) == pytest.approx(float(res.jsd[b][ok].max()))
    assert 0.0 <= res.saturated_share <= 1.0


def test_adversarial_masking(adversarial, batch):
    res, _ = adversarial
    ids, lengths, _ = batch
    pad = torch.arange(ids.shape[1])[None, None, :] >= lengths[:8, None, None]
    assert torch.equal(res.candidates.masked_select(pad.expand_as(res.candidates)),
                       torch.zeros(int(pad.expand_as(res.candidates).sum()), dtype=torch.float64))
    assert torch.allclose(res.candidates.sum(-1), torch.ones(8, 5, dtype=torch.float64))


def test_adversarial_model_unchanged_and_deterministic(trained, adversarial, batch):
    res, snap = adversarial
    _assert_unchanged(trained, snap)
    ids, lengths, _ = batch
    again = adversarial_attention(trained, ids[:3], lengths[:3], k=5, steps=300, seed=0)
    # same seed: same result (batch-invariant draws, elementwise Adam)
    assert torch.allclose(again.candidates, res.candidates[:3], atol=1e-9)
    once = adversarial_attention(trained, ids[:3], lengths[:3], k=5, steps=30, seed=0)
    twice = adversarial_attention(trained, ids[:3], lengths[:3], k=5, steps=30, seed=0)
    assert torch.equal(once.candidates, twice.candidates)
    other = adversarial_attention(trained, ids[:3], lengths[:3], k=5, steps=5, seed=1)
    assert not torch.allclose(other.candidates, once.candidates)
    _assert_unchanged(trained, snap)


def test_train_mode_refused(batch):
    ids, lengths, _ = batch
    m = AttentionClassifier(vocab_size=30, n_classes=2, embed_dim=4, hidden=2)
    with pytest.raises(ModelError):
        permutation_test(m, ids, lengths)


def test_multiclass_and_query():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        m = AttentionClassifier(vocab_size=20, n_classes=4, encoder="cnn", attention="dot", embed_dim=8, hidden=6,
                                query=True).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 20, (3, 7), generator=g)
    q = torch.randint(1, 20, (3, 2), generator=g)
    lengths = torch.tensor([7, 4, 2])
    ids[1, 4:] = 0
    ids[2, 2:] = 0
    res = adversarial_attention(m, ids, lengths, q, torch.tensor([2, 2, 1]), k=3, steps=50)
    assert res.candidates.shape == (3, 3, 7) and res.original_output.shape == (3, 4)
    perm = permutation_test(m, ids, lengths, q, torch.tensor([2, 2, 1]), n_permutations=10)
    assert perm.median_output_change.shape == (3,) and torch.isfinite(perm.median_output_change).all()
