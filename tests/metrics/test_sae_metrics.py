"""SAE metrics (issue 15): AUROC against sklearn, eta^2 of token identity, probes, reconstruction, splitting."""

from __future__ import annotations

import json
import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from sanitycheck.errors import DataError
from sanitycheck.metrics.sae import (auroc, auroc_ci, best_latent_auroc, dead_dense, diff_in_means_auroc,
                                     k_sparse_probe_auroc, l0_per_doc, latent_frequencies, logistic_probe_auroc,
                                     loss_recovered, max_cosine, reconstruction_per_doc, splitting_tree,
                                     token_identity_share, undefined_reason)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_auroc_equals_sklearn_with_ties_many_columns():
    g = gen(0)
    y = (torch.rand(300, generator=g) < 0.3).long()
    cont = torch.randn(300, 3, generator=g) + y.unsqueeze(1) * torch.tensor([0.0, 0.5, 2.0])
    ties = torch.randint(0, 4, (300, 2), generator=g).float() + y.unsqueeze(1)  # heavy ties
    sparse = torch.relu(torch.randn(300, 1, generator=g))  # many exact zeros, as latents
    s = torch.cat([cont, ties, sparse], 1)
    got = auroc(s, y)
    ref = torch.tensor([roc_auc_score(y.numpy(), s[:, j].numpy()) for j in range(s.shape[1])], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    assert float(auroc(s[:, 4], y)) == pytest.approx(ref[4].item(), abs=1e-12)


def test_one_class_label_set_is_a_clear_error():
    with pytest.raises(DataError, match=r"concept 'negation scope' has a label set with one class \(0 positive, "
                                        r"5 negative\)"):
        auroc(torch.randn(5), torch.zeros(5), concept="negation scope")
    with pytest.raises(DataError, match="one class"):
        k_sparse_probe_auroc(torch.rand(6, 3), torch.ones(6), torch.rand(4, 3), torch.tensor([0, 1, 0, 1]), k=1)


def test_token_identity_share_is_one_for_a_token_function_and_small_for_noise():
    g = gen(1)
    n, vocab = 20000, 50
    ids = torch.randint(0, vocab, (n,), generator=g)
    table = torch.rand(vocab, generator=g) * 3
    z = torch.stack([table[ids],                                  # a function of the token id
                     torch.relu(torch.randn(n, generator=g)),     # iid noise
                     table[ids] + torch.randn(n, generator=g),     # partly token-driven
                     torch.zeros(n)], 1)                          # dead
    eta = token_identity_share(z, ids, chunk=3000)
    assert eta[0].item() == pytest.approx(1.0, abs=1e-9)
    assert eta[1].item() < 0.01  # expected ~ (vocab - 1) / n
    assert 0.2 < eta[2].item() < 0.8
    assert math.isnan(eta[3].item())
    # reference: eta^2 by a per-group loop on the partly token-driven column
    col = z[:, 2].double()
    ssb = sum(((ids == v).sum() * (col[ids == v].mean() - col.mean()) ** 2).item() for v in range(vocab))
    assert eta[2].item() == pytest.approx(ssb / ((col - col.mean()) ** 2).sum().item(), rel=1e-9)


def test_token_identity_share_min_count_drops_rare_tokens():
    ids = torch.tensor([0, 0, 1, 1, 2])
    z = torch.tensor([[1.0], [1.0], [3.0], [3.0], [100.0]])
    assert token_identity_share(z, ids, min_count=2)[0].item() == pytest.approx(1.0)


def _planted(n=1200, d_sae=200, seed=2):
    g = gen(seed)
    y = (torch.rand(n, generator=g) < 0.4).long()
    z = torch.relu(torch.randn(n, d_sae, generator=g))
    # the concept is spread weakly over latents 5, 17 and 42 (no single latent is enough)
    for j in (5, 17, 42):
        z[:, j] = torch.relu(torch.randn(n, generator=g) + 0.8 * y)
    return z, y


def test_k_sparse_probe_beats_chance_and_single_latent_on_a_planted_concept():
    z, y = _planted()
    tr, te = slice(0, 800), slice(800, None)
    best = best_latent_auroc(z[tr], y[tr], z[te], y[te])
    probe = k_sparse_probe_auroc(z[tr], y[tr], z[te], y[te], k=3, seed=0)
    assert best["latent"] in (5, 17, 42) and best["auroc"] > 0.6
    assert set(probe["latents"]) == {5, 17, 42}
    assert probe["auroc"] > 0.75 and probe["auroc"] > best["auroc"]
    # labels unrelated to the latents: the probe is at chance
    y_rand = (torch.rand(z.shape[0], generator=gen(9)) < 0.5).long()
    null = k_sparse_probe_auroc(z[tr], y_rand[tr], z[te], y_rand[te], k=3, seed=0)
    assert abs(null["auroc"] - 0.5) < 0.1


def test_baselines_on_raw_activations():
    g = gen(3)
    n, d = 1000, 20
    y = (torch.rand(n, generator=g) < 0.5).long()
    w = torch.randn(d, generator=g)
    x = torch.randn(n, d, generator=g) + 1.0 * y.unsqueeze(1) * w / w.norm()
    tr, te = slice(0, 700), slice(700, None)
    dim = diff_in_means_auroc(x[tr], y[tr], x[te], y[te])
    lp = logistic_probe_auroc(x[tr], y[tr], x[te], y[te], seed=0)
    oracle = float(auroc(x[te] @ w, y[te]))
    assert dim["auroc"] > 0.65 and lp["auroc"] > 0.65
    assert abs(dim["auroc"] - oracle) < 0.05


def test_best_latent_sign_corrects_a_latent_that_fires_less_on_the_concept():
    g = gen(4)
    y = (torch.rand(600, generator=g) < 0.5).long()
    z = torch.rand(600, 10, generator=g)
    z[:, 7] = torch.relu(torch.randn(600, generator=g) + 1.0 - 2.0 * y)
    r = best_latent_auroc(z[:400], y[:400], z[400:], y[400:])
    assert r["latent"] == 7 and r["sign"] == -1.0 and r["auroc"] > 0.8


def test_all_dead_dictionary_gives_nan_and_a_reason_but_reconstruction_is_defined():
    z = torch.zeros(100, 16)
    y = torch.tensor([0, 1] * 50)
    assert undefined_reason(z) == "every latent is dead on these tokens"
    for r in (best_latent_auroc(z, y, z, y), k_sparse_probe_auroc(z, y, z, y, k=2, seed=0)):
        assert math.isnan(r["auroc"]) and r["undefined_reason"] == "every latent is dead on these tokens"
    assert torch.isnan(token_identity_share(z, torch.arange(100) % 7)).all()
    assert torch.isnan(max_cosine(torch.randn(16, 4), torch.randn(8, 4), alive_a=torch.zeros(16, dtype=torch.bool))).all()
    freq = latent_frequencies(z)
    assert dead_dense(freq)["dead"].sum() == 16
    x = torch.randn(100, 4, generator=gen(5))
    doc = torch.arange(100) // 10
    rec = reconstruction_per_doc(x, torch.zeros_like(x), doc, 10, total_variance=float(x.var(0, unbiased=False).sum()))
    assert torch.isfinite(rec["mse"]).all() and torch.isfinite(rec["fvu"]).all()
    assert undefined_reason(torch.rand(5, 3)) is None


def test_reconstruction_l0_frequencies_per_doc():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    x_hat = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    doc = torch.tensor([0, 0, 1])
    r = reconstruction_per_doc(x, x_hat, doc, 3, total_variance=2.0)
    assert r["mse"][:2].tolist() == [0.25, 4.0] and math.isnan(r["mse"][2].item())
    assert r["fvu"][:2].tolist() == [0.25, 4.0]
    z = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.1]])
    assert l0_per_doc(z, doc, 2).tolist() == [1.0, 2.0]
    torch.testing.assert_close(latent_frequencies(z), torch.tensor([1 / 3, 1 / 3, 2 / 3], dtype=torch.float64))
    dd = dead_dense(torch.tensor([0.0, 0.05, 0.5]), dense_threshold=0.1)
    assert dd["dead"].tolist() == [1.0, 0.0, 0.0] and dd["dense"].tolist() == [0.0, 0.0, 1.0]


def test_loss_recovered():
    out = loss_recovered(torch.tensor([2.0, 2.0, 3.0]), torch.tensor([2.5, 5.0, 3.0]), torch.tensor([4.0, 4.0, 3.0]))
    assert out[:2].tolist() == [0.75, -0.5] and math.isnan(out[2].item())


def test_max_cosine_permutation_and_dead():
    g = gen(6)
    w = torch.randn(30, 8, generator=g)
    perm = w[torch.randperm(30, generator=g)] * 3.0
    mc = max_cosine(w, perm)
    torch.testing.assert_close(mc, torch.ones(30, dtype=torch.float64))
    alive_b = torch.ones(30, dtype=torch.bool)
    alive_b[0] = False
    mc2 = max_cosine(w, w, alive_b=alive_b)
    assert mc2[0] < 1 - 1e-6 and torch.allclose(mc2[1:], torch.ones(29, dtype=torch.float64))


def test_splitting_tree_finds_planted_children_and_is_json_safe():
    g = gen(7)
    parents = torch.randn(4, 16, generator=g)
    children = torch.cat([parents[0] + 0.3 * torch.randn(3, 16, generator=g),
                          parents[2] + 0.3 * torch.randn(2, 16, generator=g),
                          torch.randn(1, 16, generator=g) * 0.01 + torch.eye(16)[0] * 0.0 + parents[1]])
    unrelated = torch.randn(2, 16, generator=g)
    large = torch.cat([children, unrelated])
    tree = splitting_tree(parents, large, threshold=0.8)
    json.dumps(tree)
    assert tree["n_children"] == [3, 1, 2, 0]
    assert tree["parents"][0]["parent"] == 0 and {c["child"] for c in tree["parents"][0]["children"]} == {0, 1, 2}
    assert tree["orphans"] == 2
    # activation-correlation variant on the same tokens
    zs = torch.relu(torch.randn(500, 2, generator=g))
    zl = torch.cat([zs[:, :1] * 2, zs[:, :1] + 0.01 * torch.rand(500, 1, generator=g), torch.rand(500, 1, generator=g)], 1)
    t2 = splitting_tree(torch.randn(2, 4), torch.randn(3, 4), z_small=zs, z_large=zl, threshold=0.9)
    assert t2["n_children"] == [2, 0] and t2["similarity"] == "activation_correlation"


def test_auroc_ci_covers_the_estimate_and_groups_widen_it():
    g = gen(8)
    n_docs, per = 40, 25
    doc = torch.arange(n_docs).repeat_interleave(per)
    y = (torch.rand(n_docs, generator=g) < 0.5).long()[doc]
    doc_effect = torch.randn(n_docs, generator=g)[doc] * 1.5  # tokens of a text share a shift
    s = doc_effect + 0.5 * y + 0.3 * torch.randn(doc.numel(), generator=g)
    est = float(auroc(s, y))
    lo, hi = auroc_ci(s, y, seed=0, n_boot=400)
    glo, ghi = auroc_ci(s, y, seed=0, n_boot=400, groups=doc)
    assert lo < est < hi and glo < est < ghi
    assert (ghi - glo) > 1.5 * (hi - lo)  # resampling texts, not tokens, shows the texts' dependence
    assert auroc_ci(s, y, seed=0, n_boot=400) == (lo, hi)  # seeded


def test_auroc_ci_singleton_groups_equal_token_resampling_and_padding_is_exact():
    from sanitycheck.metrics.sae import _auroc_resamples

    g = gen(10)
    y = (torch.rand(60, generator=g) < 0.5).long()
    s = torch.randn(60, generator=g) + y
    assert auroc_ci(s, y, seed=3, n_boot=200, groups=torch.arange(60)) == auroc_ci(s, y, seed=3, n_boot=200)
    # ragged resamples (padding) give each resample's exact AUROC
    idx = torch.randint(0, 60, (5, 40), generator=g)
    valid = torch.arange(40).unsqueeze(0) < torch.tensor([[40], [31], [25], [38], [20]])
    got = _auroc_resamples(s.double(), y == 1, idx, valid)
    ref = [roc_auc_score(y[idx[r][valid[r]]].numpy(), s[idx[r][valid[r]]].numpy()) for r in range(5)]
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-12)


def test_token_identity_share_blocks_over_latents_and_sparse_vocab_ids_agree():
    g = gen(11)
    ids = torch.randint(0, 40, (3000,), generator=g) * 997  # large, sparse ids (a 40k vocabulary)
    z = torch.relu(torch.randn(3000, 300, generator=g) + (ids % 7).unsqueeze(1).float() * 0.3)
    full = token_identity_share(z, ids)
    cols = torch.cat([token_identity_share(z[:, j:j + 1], ids) for j in (0, 150, 299)])
    torch.testing.assert_close(full[[0, 150, 299]], cols, rtol=1e-10, atol=1e-12)
    assert (full > 0.1).all()
    torch.testing.assert_close(token_identity_share(z, ids, latent_block=7, chunk=500), full, rtol=1e-10, atol=1e-12)
