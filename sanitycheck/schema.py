"""The published JSON Schema of result documents (``results.json`` and leaderboard submissions).

``leaderboard/schema.json`` is this dictionary, written by ``sanitycheck validate --write-schema``;
a test keeps the two identical.
"""

from __future__ import annotations

from typing import Any, Dict

from .results import SCHEMA_VERSION, VERDICT_STATUSES

_num_or_null = {"type": ["number", "null"]}
_str_or_null = {"type": ["string", "null"]}
_array = {"type": "object", "required": ["shape", "dtype", "data"], "additionalProperties": False,
          "properties": {"shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                         "dtype": {"const": "float16"}, "data": {"type": "string"}}}

RESULT_SCHEMA: Dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://github.com/sanitycheck/sanitycheck/leaderboard/schema.json",
    "title": "sanitycheck result document",
    "description": "Results of one suite run: provenance, per-step records with bootstrap CIs, verdicts, "
                   "per-image scores and thumbnails. A leaderboard submission holds exactly one explainer "
                   "and a 'method' block.",
    "type": "object",
    "required": ["schema_version", "suite", "suite_version", "suite_sha256", "seed", "model", "dataset",
                 "versions", "git_hash", "explainers", "checks", "metrics", "records", "verdicts", "per_sample",
                 "examples"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "suite": {"type": "string", "pattern": "^[a-z0-9_]+$"},
        "suite_version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "suite_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "suite_description": {"type": "string"},
        "suite_reference": {"type": "string"},
        "input_kind": {"enum": ["image", "text", "image_text", "activations"]},
        "created": {"type": "string"},
        "seed": {"type": "integer", "minimum": 0},
        "model": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"},
            # state_dict sha256 of the audited model; reference_weights: shipped weights (true), other
            # weights of a shipped model, e.g. retrained (false), a model without reference weights (null)
            "weights_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "reference_weights": {"type": ["boolean", "null"]}}},
        "dataset": {"type": "object", "required": ["name", "n"],
                    "properties": {"name": {"type": "string"}, "n": {"type": "integer", "minimum": 1}}},
        "versions": {"type": "object", "required": ["python", "torch", "sanitycheck"],
                     "additionalProperties": _str_or_null},
        "git_hash": _str_or_null,
        "method": {"type": "object", "required": ["name", "source", "source_sha256"],
                   "properties": {"name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
                                  "source": {"type": "string"},
                                  "source_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                                  "params": {"type": "object"}}},
        "explainers": {"type": "object", "minProperties": 1, "additionalProperties": {
            "type": "object", "required": ["config", "code_hash"],
            "properties": {"config": {"type": "object"}, "code_hash": {"type": "string"},
                           "requires_model": {"type": "boolean"}}}},
        "checks": {"type": "object", "minProperties": 1, "additionalProperties": {
            "type": "object", "required": ["steps", "verdict_rule"],
            "properties": {"kind": {"enum": ["randomization", "evaluation"]},
                           "steps": {"type": "array", "items": {"type": "string"}},
                           # absent: one score per audited input; else what one score is (latents, runs)
                           "sample_unit": {"type": "string", "pattern": "^[a-z_]+$"},
                           "verdict_rule": {"oneOf": [
                               {"type": "null"},
                               {"type": "object", "required": ["metric", "threshold", "rule"],
                                "properties": {"direction": {"enum": ["below", "above"]},
                                               "min_n": {"type": "integer", "minimum": 2}}}]}}}},
        "metrics": {"type": "object", "minProperties": 1, "additionalProperties": {
            "type": "object", "required": ["name", "higher_is_better", "category"]}},
        "records": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["explainer", "check", "metric", "step", "step_index", "mean", "ci_low", "ci_high", "n",
                         "n_undefined", "undefined_reason"],
            "properties": {"explainer": {"type": "string"}, "check": {"type": "string"},
                           "metric": {"type": "string"}, "step": {"type": "string"},
                           "step_index": {"type": "integer", "minimum": 0},
                           "mean": _num_or_null, "ci_low": _num_or_null, "ci_high": _num_or_null,
                           "n": {"type": "integer", "minimum": 0}, "n_undefined": {"type": "integer", "minimum": 0},
                           "undefined_reason": _str_or_null}}},
        "verdicts": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "description": "status: pass | fail | inconclusive (the 95% CI straddles the threshold) | undefined "
                           "(the trained model's maps carry no ranking) | insufficient_data (fewer than min_n "
                           "defined samples) | noise (suites with noise_ceiling only: the maps are dominated by "
                           "sampling noise, the ceiling's upper CI bound is below the threshold; step is then "
                           "'<ceiling check>/<its step>'); passed is true exactly for pass; measured is the "
                           "deciding CI bound at step, n the defined samples behind the decision",
            "required": ["explainer", "check", "passed", "reason", "metric", "rule", "threshold", "measured", "step",
                         "status", "direction", "n", "min_n"],
            "properties": {"explainer": {"type": "string"}, "check": {"type": "string"},
                           "passed": {"type": "boolean"}, "reason": {"type": "string", "minLength": 10},
                           "metric": {"type": "string"}, "rule": {"enum": ["all_steps", "final_step"]},
                           "threshold": {"type": "number"}, "measured": _num_or_null, "step": _str_or_null,
                           "status": {"enum": list(VERDICT_STATUSES)},
                           "direction": {"enum": ["below", "above"]},
                           "n": {"type": "integer", "minimum": 0}, "min_n": {"type": "integer", "minimum": 2},
                           # gate mode (--strict) only: how the sequential gate stopped this verdict
                           "sequential": {
                               "type": "object", "required": ["stopped", "stop", "n_images", "cs_low", "cs_high",
                                                              "reason"],
                               "description": "gate mode only: stopped is true when the verdict was decided before "
                                              "the budget; stop: decided | budget | not_gated (no confidence "
                                              "sequence: undefined or insufficient data, or unbounded scores); "
                                              "n_images: images the verdict consumed; cs_low/cs_high: the "
                                              "betting confidence sequence at the deciding step when it stopped; "
                                              "reason: e.g. 'decided: upper CS bound 0.31 < 0.5 after 32 images'",
                               "properties": {"stopped": {"type": "boolean"},
                                              "stop": {"enum": ["decided", "budget", "not_gated"]},
                                              "n_images": {"type": "integer", "minimum": 0},
                                              "cs_low": _num_or_null, "cs_high": _num_or_null,
                                              "confidence": {"type": "number"},
                                              "reason": {"type": "string"}}}}}},
        "per_sample": {"type": "object", "description": "{explainer: {check: {step: {metric: [score|null]}}}}",
                       "additionalProperties": {"type": "object", "additionalProperties": {
                           "type": "object", "additionalProperties": {
                               "type": "object", "additionalProperties": {"type": "array",
                                                                          "items": _num_or_null}}}}},
        "files": {"type": "object", "description": "files of the run beside results.json, by role: figure_maps, "
                                                   "the example maps its figures are drawn from",
                  "properties": {"figure_maps": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]*$"}}},
        "resources": {"type": "object", "description": "memory of the run in MiB (optional; not carried by "
                                                       "leaderboard files): peak_rss_mb is the process's peak "
                                                       "resident set (getrusage), which includes what was loaded "
                                                       "before the run; rss_at_start_mb/rss_at_end_mb the resident "
                                                       "set at the run's start and end; gpu_peak_mb the peak CUDA "
                                                       "memory allocated by torch, only on a CUDA device",
                      "required": ["peak_rss_mb"],
                      "properties": {"peak_rss_mb": {"type": "number", "minimum": 0},
                                     "rss_at_start_mb": _num_or_null, "rss_at_end_mb": _num_or_null,
                                     "gpu_peak_mb": {"type": "number", "minimum": 0},
                                     "batch_size": {"type": "object", "required": ["value", "source"],
                                                    "description": "the batch size the run used, where it came "
                                                                   "from (suite, option, auto) and why",
                                                    "properties": {"value": {"type": "integer", "minimum": 1},
                                                                   "source": {"enum": ["suite", "option", "auto"]},
                                                                   "why": {"type": "string"}}},
                                     "note": {"type": "string"}}},
        "gate": {"type": "object", "description": "gate mode (--strict) only: the sequential gate's rounds, budget, "
                                                  "alpha and its model evaluations against the full run's",
                 "required": ["alpha", "budget", "rounds", "model_evaluations"],
                 "properties": {"alpha": {"type": "number"}, "budget": {"type": "integer", "minimum": 1},
                                "rounds": {"type": "array"}, "model_evaluations": {
                                    "type": "object", "required": ["gate", "full_run", "definition"]}}},
        "examples": {"type": "object", "required": ["explainers"],
                     "description": "input 0 ('image', or the 'text' tokens of a text suite) and its maps per state",
                     "properties": {"image": _array, "text": {"type": "array", "items": {"type": "string"}},
                                    "explainers": {
                         "type": "object", "additionalProperties": {"type": "object", "additionalProperties": {
                             "type": "object", "additionalProperties": _array}}}}},
    },
}
