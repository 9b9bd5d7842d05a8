import pytest
import yaml

from sanitycheck.errors import ConfigError, UnknownNameError
from sanitycheck.suites import DEFAULT_SUITE, available_suites, load_suite


def test_default_suite_loads_and_names_registered_parts():
    suite = load_suite(DEFAULT_SUITE)
    assert suite.name == "adebayo2018" and suite.version.count(".") == 2
    assert set(suite.explainer_names) == {"gradient", "gradient_x_input", "smoothgrad", "vargrad",
                                          "integrated_gradients", "guided_backprop", "gradcam", "guided_gradcam",
                                          "occlusion", "lime", "kernel_shap", "rise", "score_cam", "deeplift",
                                          "deeplift_shap", "gradient_shap", "lrp", "sobel", "noise"}
    assert [c.name for c in suite.checks] == ["cascading_randomization", "independent_randomization",
                                              "data_randomization", "noise_ceiling", "sampling_convergence"]
    assert suite.dataset["n"] >= 128 and len(suite.sha256) == 64


def _write(tmp_path, **changes):
    data = yaml.safe_load(open(available_suites()[DEFAULT_SUITE]))
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("changes, message", [
    (dict(version=None), "'version' is a required property"),
    (dict(version="1"), "at version"),
    (dict(explainers=["gradient", "guided_backprob"]), "Did you mean 'guided_backprop'"),
    (dict(metrics=["spearman_abs", "spearmann"]), "Did you mean 'spearman'"),
    (dict(metrics=["ssim"]), "does not compute"),
    (dict(checks=[{"name": "cascading_randomization"}]), "needs a 'verdict'"),
    (dict(seed=-1), "at seed"),
    (dict(python_code="import os"), "Additional properties are not allowed"),
])
def test_malformed_suites_fail_with_the_location(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("'", "'")):
        load_suite(str(_write(tmp_path, **changes)))


def test_unknown_suite_name_suggests_close_ones():
    with pytest.raises(UnknownNameError, match="Did you mean 'adebayo2018'"):
        load_suite("adebayo2019")


def test_invalid_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_suite(str(path))


ISSUE14_METHODS = {"occlusion", "lime", "kernel_shap", "rise", "score_cam", "deeplift", "deeplift_shap",
                   "gradient_shap", "lrp"}


@pytest.mark.parametrize("name", sorted(available_suites()))
def test_every_image_suite_runs_the_issue_14_methods_with_their_noise_ceilings(name):
    """Issue 14: the perturbation, Shapley and propagation methods on every image suite, each sampled one beside
    its noise ceiling and its n-vs-2n convergence; a method a suite leaves out is named, with the reason, in its
    description (the suite file is what the board shows)."""
    from sanitycheck.checks.sampling import is_sampled
    from sanitycheck.explainers import get_explainer

    suite = load_suite(name)
    if suite.input_kind not in ("image", "image_text"):
        pytest.skip(f"{name} audits {suite.input_kind} models")
    from sanitycheck.registry import CHECKS

    if all(getattr(CHECKS.get(c.name), "unit", "state") == "check" for c in suite.checks):
        pytest.skip(f"{name} holds only audits (issue 16: TCAV's concept tests), no saliency maps under model states")
    present = set(suite.explainer_names) & ISSUE14_METHODS
    assert len(present) >= 4, f"{name} runs only {sorted(present)} of the issue 14 methods"
    checks = [c.name for c in suite.checks]
    assert "noise_ceiling" in checks and "sampling_convergence" in checks
    sampled = [n for n, params in suite.explainers if is_sampled(get_explainer(n, **params))]
    assert sampled, f"{name} has no sampled explainer to take a ceiling of"
    words = {"lime": "LIME", "kernel_shap": "KernelSHAP", "rise": "RISE", "score_cam": "Score-CAM",
             "deeplift": "DeepLIFT", "deeplift_shap": "DeepLIFT-SHAP", "gradient_shap": "GradientSHAP",
             "lrp": "LRP", "occlusion": "occlusion"}
    text = " ".join(suite.description.split())
    for method in sorted(ISSUE14_METHODS - present - {"occlusion"}):
        if suite.input_kind == "image_text" and method in ("deeplift", "deeplift_shap", "lrp", "score_cam"):
            continue  # registered for image classifiers only (a CLIP similarity has no module rules / conv map)
        assert words[method] in text, f"{name} leaves out {method} without saying why in its description"
