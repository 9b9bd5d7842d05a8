"""The claim this repository makes about its method, gated in CI by sanitycheck's pytest plugin.

``pytest -m sanity`` runs these (the `sanity` fixture marks them); ``--sanity-fail-on cascading_randomization``
also fails any test in which an un-asserted explainer fails that check.
"""

import pytest

import sanitycheck as sc
from my_method import edge_baseline, explain

N = 32  # first 32 Fashion-MNIST test images; the suite's thresholds apply unchanged


@pytest.fixture(scope="module")
def model():
    return sc.load_model("fmnist_cnn")  # trained (~35 s) and cached on first use


@pytest.fixture(scope="module")
def data():
    return sc.load_dataset("fashion_mnist", split="test")


@pytest.mark.sanity
def test_my_method_depends_on_the_model(sanity, model, data):
    """Claim: the maps lose their similarity as the layers are randomized from the logits down."""
    report = sanity.check("cascading_randomization", explain, model, data, suite="adebayo2018", n=N, name="my_method")
    report.assert_passes()


@pytest.mark.sanity
def test_edge_baseline_is_caught(sanity, model, data):
    """Control: a model-independent baseline must fail the same check (else the check proves nothing)."""
    report = sanity.check("cascading_randomization", edge_baseline, model, data, suite="adebayo2018", n=N)
    report.assert_fails()
