"""The faithfulness metrics' chunk size (MAX_BATCH) changes no number: per-row scores are bit-identical
(torch.equal) between the old 1024-row chunks and the 256-row chunks used since issue 12, on the reference
``fmnist_cnn`` weights and real Fashion-MNIST images."""

from __future__ import annotations

import pytest
import torch

from sanitycheck.metrics import faithfulness as F


@pytest.fixture(scope="module")
def real():
    from sanitycheck.data import load_dataset
    from sanitycheck.explainers import get_explainer
    from sanitycheck.models import load_model

    model = load_model("fmnist_cnn").eval()
    x = load_dataset("fashion_mnist", split="test").images[:60].contiguous()
    with torch.no_grad():
        target = model(x).argmax(1)
    maps = get_explainer("gradient")(model, x, target)
    return model, x, target, maps


@pytest.mark.parametrize("metric", [
    lambda: F.FaithfulnessCorrelation(n_perturbations=20, subset_size=64, baseline=0.0),
    lambda: F.Infidelity(n_perturbations=20),
    lambda: F.ROAD(),
], ids=["faithfulness_correlation", "infidelity", "road"])
def test_chunk_size_changes_no_number(real, metric, monkeypatch):
    model, x, target, maps = real
    assert F.MAX_BATCH == 256
    out = {}
    for chunk in (1024, 256, 100):  # 60 images x 20 perturbations = 1200 rows: several chunks each way
        monkeypatch.setattr(F, "MAX_BATCH", chunk)
        out[chunk] = metric().evaluate(model, x, target, maps, seed=0).scores
    for chunk in (256, 100):
        assert out[chunk].keys() == out[1024].keys()
        for key in out[1024]:
            assert torch.equal(out[chunk][key], out[1024][key]), (key, chunk)


def test_large_inputs_get_fewer_rows_per_forward_and_small_ones_keep_theirs():
    from sanitycheck.metrics import faithfulness as F

    # Fashion-MNIST and the CLIP scenes keep the row limits their published numbers were computed with
    assert F._row_limit(F.MAX_BATCH, 1 * 28 * 28, F.MAX_BATCH_VALUES) == F.MAX_BATCH == 256
    assert F._row_limit(F.MAX_BATCH, 3 * 64 * 64, F.MAX_BATCH_VALUES) == 256
    assert F._row_limit(F.MAX_EXPLAIN_BATCH, 1 * 28 * 28, F.MAX_EXPLAIN_VALUES) == F.MAX_EXPLAIN_BATCH
    # ImageNet at 224: about 20 inputs per forward and 21 per explainer call, not 256 and 4096
    assert F._row_limit(F.MAX_BATCH, 3 * 224 * 224, F.MAX_BATCH_VALUES) == 20
    assert F._row_limit(F.MAX_EXPLAIN_BATCH, 3 * 224 * 224, F.MAX_EXPLAIN_VALUES) == 21
    assert F._row_limit(F.MAX_BATCH, 10 ** 9, F.MAX_BATCH_VALUES) == 1
