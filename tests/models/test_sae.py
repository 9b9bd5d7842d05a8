"""Sparse autoencoders (issue 15): training on synthetic ground truth, determinism, SAELens' on-disk format.

Synthetic data: sparse non-negative combinations of K known unit directions in d dimensions plus small noise; an
SAE that learns the data must recover the directions (max cosine > 0.9) and reconstruct it (FVU < 0.1).
"""

from __future__ import annotations

import json

import pytest
import torch

from sanitycheck.errors import ConfigError, DataError, SAEFormatError, SanityCheckError
from sanitycheck.metrics.sae import max_cosine
from sanitycheck.models.sae import (SAEConfig, SparseAutoencoder, fit_sae, load_sae, save_sae, train_sae)

D_IN, K_TRUE, D_SAE = 32, 64, 128


def synthetic(n=20000, d=D_IN, k=K_TRUE, p=0.05, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(k, d, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    mask = torch.rand(n, k, generator=g) < p
    coef = torch.rand(n, k, generator=g) * 2 * mask
    return coef @ dirs + 0.01 * torch.randn(n, d, generator=g) + offset, dirs


@pytest.fixture(scope="module")
def data():
    return synthetic()


RELU = dict(architecture="relu", l1_coefficient=1.0, train_tokens=300_000, batch_size=256, lr=3e-3)
TOPK = dict(architecture="topk", k=6, train_tokens=160_000, batch_size=256, lr=3e-3)


_TRAINED = {}


@pytest.fixture()
def trained(data):
    """Each architecture trained once per module, on first use (so no single test pays for both)."""
    x, _ = data

    def get(name):
        if name not in _TRAINED:
            kw = {"relu": RELU, "topk": TOPK}[name]
            _TRAINED[name] = train_sae(x, SAEConfig(d_in=D_IN, d_sae=D_SAE, **kw), progress=False)
        return _TRAINED[name]

    return get


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_sae_recovers_ground_truth_directions(data, trained, arch):
    x, dirs = data
    sae, log = trained(arch)
    assert log["fvu"] < 0.1, log
    mc = max_cosine(dirs, sae.W_dec.detach())
    assert float((mc > 0.9).float().mean()) >= 0.8, mc
    with torch.no_grad():
        x_hat, z = sae(x[:2000])
    assert (z >= 0).all()
    fvu = float((x_hat - x[:2000]).pow(2).sum() / (x[:2000] - x[:2000].mean(0)).pow(2).sum())
    assert fvu < 0.1
    if arch == "topk":
        assert int((z > 0).sum(-1).max()) <= 6
    assert set(log) >= {"tokens_per_s", "mse", "l0", "wall_s", "curve", "fvu", "dead_fraction"}
    assert len(log["curve"]) >= 10 and log["curve"][-1]["loss"] < log["curve"][0]["loss"]


def test_relu_decoder_rows_share_one_norm_after_folding(trained):
    sae, log = trained("relu")
    norms = sae.W_dec.detach().norm(dim=1)
    # unit rows during training; folding the scaling factor multiplies every row by it
    assert torch.allclose(norms, torch.full_like(norms, log["scaling_factor"]), rtol=1e-4)
    assert sae.scaling_factor == 1.0


def test_same_seed_same_weights_other_seed_other_weights_same_features(data, trained):
    x, dirs = data
    a, _ = trained("topk")
    cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, **TOPK)
    c, _ = train_sae(x, SAEConfig(**{**cfg.as_dict(), "seed": 1}), progress=False)
    assert not torch.equal(a.W_dec, c.W_dec)
    # the latents of seed 0 that found a true direction are found again by seed 1
    found = max_cosine(a.W_dec.detach(), dirs) > 0.9
    assert int(found.sum()) >= 0.8 * K_TRUE
    mc = max_cosine(a.W_dec.detach(), c.W_dec.detach())
    assert float((mc[found] > 0.85).double().mean()) > 0.9
    # same seed: bit-identical weights (a shorter run, same code path)
    small = SAEConfig(**{**cfg.as_dict(), "train_tokens": 20_000})
    s1, _ = train_sae(x[:5000], small, progress=False)
    s2, _ = train_sae(x[:5000], small, progress=False)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(s1, name), getattr(s2, name)), name


def test_memory_mapped_activations_train_identically(tmp_path, data):
    import numpy as np

    x = data[0][:3000].contiguous()
    mm = np.memmap(tmp_path / "acts.f32", dtype=np.float32, mode="w+", shape=tuple(x.shape))
    mm[:] = x.numpy()
    mm.flush()
    acts = torch.from_numpy(np.memmap(tmp_path / "acts.f32", dtype=np.float32, mode="c", shape=tuple(x.shape)))
    cfg = SAEConfig(d_in=D_IN, d_sae=16, train_tokens=2048, batch_size=256)
    a, _ = train_sae(acts, cfg, progress=False)
    b, _ = train_sae(x, cfg, progress=False)
    assert torch.equal(a.W_dec, b.W_dec) and torch.equal(a.b_dec, b.b_dec)


def test_training_does_not_touch_global_rng(data):
    x, _ = data
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    train_sae(x[:2000], SAEConfig(d_in=D_IN, d_sae=16, train_tokens=512, batch_size=256), progress=False)
    assert torch.equal(torch.rand(3), before)


def test_nan_activations_are_a_clear_error(data):
    x = data[0][:1000].clone()
    x[17, 3] = float("nan")
    with pytest.raises(DataError, match=r"NaN or inf in the activations \(rows \[17\]"):
        train_sae(x, SAEConfig(d_in=D_IN, d_sae=16, train_tokens=512), progress=False)


def test_width_mismatch_in_training_and_encoding(data):
    x = data[0][:100]
    with pytest.raises(ConfigError, match="input width does not match the hooked activation.*d_in=16.*width 32"):
        train_sae(x, SAEConfig(d_in=16, d_sae=16), progress=False)
    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=8, hook_name="blocks.0.mlp"))
    with pytest.raises(ConfigError, match="d_in=16.*blocks.0.mlp.*width 32"):
        sae.encode(x)


def test_unsupported_architecture_in_config():
    with pytest.raises(ConfigError, match="'gated' is not supported.*relu.*topk"):
        SAEConfig(d_in=4, d_sae=8, architecture="gated")


# ---------------------------------------------------------------------------------------------- SAELens format
def _random_sae(arch="relu", scaling=1.0, seed=0):
    cfg = SAEConfig(d_in=12, d_sae=40, architecture=arch, k=5, hook_name="blocks.0.hook_mlp_out")
    sae = SparseAutoencoder(cfg, scaling_factor=scaling)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return sae


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_saelens_round_trip_is_exact(tmp_path, arch):
    sae = _random_sae(arch)
    path = save_sae(sae, tmp_path / "sae", model_name="tiny")
    cfg = json.loads((path / "cfg.json").read_text())
    # the fields SAELens v6 (6.54.12, saes/sae.py SAEConfig.to_dict, topk_sae.TopKSAEConfig) writes and reads
    assert cfg["architecture"] == {"relu": "standard", "topk": "topk"}[arch]
    assert cfg["d_in"] == 12 and cfg["d_sae"] == 40 and cfg["dtype"] == "float32" and cfg["device"] == "cpu"
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["hook_name"] == "blocks.0.hook_mlp_out" and cfg["metadata"]["model_name"] == "tiny"
    assert cfg["metadata"]["sae_lens_version"].startswith("6.")
    if arch == "topk":
        assert cfg["k"] == 5 and cfg["rescale_acts_by_decoder_norm"] is False
    from safetensors.torch import load_file

    st = load_file(str(path / "sae_weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in st.items()} == {"W_enc": (12, 40), "b_enc": (40,), "W_dec": (40, 12),
                                                         "b_dec": (12,)}
    back = load_sae(path, d_in=12)
    x = torch.randn(50, 12, generator=torch.Generator().manual_seed(1))
    assert back.cfg.architecture == arch and back.cfg.hook_name == "blocks.0.hook_mlp_out"
    assert torch.equal(back.encode(x), sae.encode(x))
    z = sae.encode(x)
    assert torch.equal(back.decode(z), sae.decode(z))


def test_scaling_factor_is_folded_on_save(tmp_path):
    sae = _random_sae("relu", scaling=2.5)
    back = load_sae(save_sae(sae, tmp_path / "s"))
    assert back.scaling_factor == 1.0
    x = torch.randn(50, 12, generator=torch.Generator().manual_seed(2)) * 3
    torch.testing.assert_close(back.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(back(x)[0], sae(x)[0], rtol=1e-5, atol=1e-5)
    assert back.extra_cfg["sanitycheck_scaling_factor_folded"] == 2.5


def test_reads_flat_pre_v6_layout(tmp_path):
    sae = _random_sae("topk")
    path = save_sae(sae, tmp_path / "v5")
    cfg = json.loads((path / "cfg.json").read_text())
    flat = {"d_in": 12, "d_sae": 40, "hook_point": "blocks.0.hook_mlp_out", "activation_fn_str": "topk",
            "activation_fn_kwargs": {"k": 5}, "normalize_activations": False, "dtype": "float32",
            "sae_lens_training_version": None}
    assert "architecture" in cfg
    (path / "cfg.json").write_text(json.dumps(flat))
    back = load_sae(path)
    assert back.cfg.architecture == "topk" and back.cfg.k == 5 and back.cfg.hook_name == "blocks.0.hook_mlp_out"
    x = torch.randn(20, 12, generator=torch.Generator().manual_seed(3))
    assert torch.equal(back.encode(x), sae.encode(x))


def _saved(tmp_path, arch="relu"):
    return save_sae(_random_sae(arch), tmp_path / "bad")


def test_error_missing_files(tmp_path):
    with pytest.raises(SAEFormatError, match="does not exist"):
        load_sae(tmp_path / "nowhere")
    p = _saved(tmp_path)
    (p / "sae_weights.safetensors").unlink()
    with pytest.raises(SAEFormatError, match="has no sae_weights.safetensors"):
        load_sae(p)
    (p / "cfg.json").unlink()
    with pytest.raises(SAEFormatError, match="has no cfg.json"):
        load_sae(p)


def test_error_cfg_missing_required_fields_names_all_and_path(tmp_path):
    p = _saved(tmp_path)
    cfg = json.loads((p / "cfg.json").read_text())
    del cfg["d_in"], cfg["architecture"]
    (p / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError) as err:
        load_sae(p)
    msg = str(err.value)
    assert "'d_in'" in msg and "'architecture'" in msg and str(p / "cfg.json") in msg
    assert "'d_sae'" not in msg.split("needs")[0]
    assert isinstance(err.value, SanityCheckError)


def test_error_topk_without_k(tmp_path):
    p = _saved(tmp_path, "topk")
    cfg = json.loads((p / "cfg.json").read_text())
    del cfg["k"]
    (p / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError, match="missing required field.*'k'"):
        load_sae(p)


def test_error_unsupported_architecture_names_supported(tmp_path):
    p = _saved(tmp_path)
    cfg = json.loads((p / "cfg.json").read_text())
    cfg["architecture"] = "jumprelu"
    (p / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError, match="'jumprelu' is not supported; supported: standard, topk"):
        load_sae(p)


def test_error_weight_shapes_inconsistent(tmp_path):
    p = _saved(tmp_path)
    cfg = json.loads((p / "cfg.json").read_text())
    cfg["d_sae"] = 41
    (p / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError, match=r"inconsistent with cfg.json.*W_enc \(12, 40\) \(expected \(12, 41\)\)"):
        load_sae(p)


def test_error_width_mismatch_names_both_widths_and_hook(tmp_path):
    p = _saved(tmp_path)
    with pytest.raises(ConfigError, match=r"input width does not match the hooked activation.*d_in=12.*"
                                          r"blocks.0.hook_mlp_out.*'blocks.3.resid' has width 384"):
        load_sae(p, d_in=384, hook_name="blocks.3.resid")


def test_fit_sae_caches_in_saelens_format(tmp_path, data):
    x = data[0][:4000]
    cfg = SAEConfig(d_in=D_IN, d_sae=32, architecture="topk", k=4, train_tokens=4096, batch_size=256)
    a = fit_sae(x, cfg, key="acts-abc", cache_dir=tmp_path, progress=False)
    dirs = list((tmp_path / "sae").iterdir())
    assert len(dirs) == 1 and (dirs[0] / "cfg.json").is_file() and (dirs[0] / "sae_weights.safetensors").is_file()
    assert not [d for d in (tmp_path / "sae").iterdir() if d.name.startswith(".")]
    mtime = (dirs[0] / "sae_weights.safetensors").stat().st_mtime_ns
    b = fit_sae(x, cfg, key="acts-abc", cache_dir=tmp_path, progress=False)
    assert (dirs[0] / "sae_weights.safetensors").stat().st_mtime_ns == mtime  # loaded, not retrained
    assert torch.equal(a.W_enc, b.W_enc) and a.train_log["steps"] == 16
    fresh, _ = train_sae(x, cfg, progress=False)
    assert torch.equal(fresh.W_dec, a.W_dec)  # the cached SAE is exactly the trained one
    fit_sae(x, cfg, key="acts-other", cache_dir=tmp_path, progress=False)
    assert len(list((tmp_path / "sae").iterdir())) == 2


# ---------------------------------------------------------------------------------------------- sae-lens itself
def _sae_lens():
    try:
        from sanitycheck._compat import import_torchvision

        import_torchvision()
        import sae_lens  # noqa: F401
        from sae_lens import SAE
    except Exception:  # noqa: BLE001 - not installed or not importable here
        return None
    return SAE


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_sae_lens_loads_ours_and_we_load_theirs(tmp_path, arch):
    """Needs sae-lens (test-only; e.g. a venv with --system-site-packages and ``pip install sae-lens==6.54.12``)."""
    SAE = _sae_lens()
    if SAE is None:
        pytest.skip("sae_lens is not importable")
    ours = _random_sae(arch)
    path = save_sae(ours, tmp_path / "ours")
    theirs = SAE.load_from_disk(str(path), device="cpu")
    assert theirs.cfg.architecture() == {"relu": "standard", "topk": "topk"}[arch]
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(theirs.encode(x), ours.encode(x))
        z = ours.encode(x)
        assert torch.equal(theirs.decode(z), ours.decode(z))
        # the reverse: SAELens saves, we load
        theirs.save_model(str(tmp_path / "theirs"))
        back = load_sae(tmp_path / "theirs", d_in=12)
        assert torch.equal(back.encode(x), theirs.encode(x))
        assert torch.equal(back.decode(z), theirs.decode(z))
    assert back.cfg.hook_name == "blocks.0.hook_mlp_out"
