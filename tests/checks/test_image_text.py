"""text_randomization, pointing_game, the scenes' ground truth in a run, and the randomization of the image tower."""

from __future__ import annotations

import pytest
import torch

from sanitycheck.checks.randomization import CascadingRandomization, IndependentRandomization
from sanitycheck.checks.image_text import PointingGame, TextRandomization, unrelated_classes
from sanitycheck.metrics.localization import PointingGameScores
from sanitycheck.data.scenes import SCENE_TRUTH_KEY, scene_truth
from sanitycheck.errors import ConfigError, DataError
from sanitycheck.seeding import sample_keys
from sanitycheck.targets import ClassTarget


@pytest.fixture(scope="module")
def dataset(scenes):
    return scenes.to_image_dataset()


def test_registered_everywhere():
    from clip_fixtures import CLIP_REGISTRY_ENTRIES as REGISTRY_ENTRIES
    from sanitycheck.registry import CHECKS, DATASETS, EXPLAINERS, MODELS, load_object

    registries = {"explainers": EXPLAINERS, "datasets": DATASETS, "models": MODELS, "checks": CHECKS}
    for group, entries in REGISTRY_ENTRIES.items():
        for name, path in entries.items():
            assert name in registries[group]
            assert registries[group].get(name) is load_object(path)
    assert CHECKS.get("text_randomization") is TextRandomization and CHECKS.get("pointing_game") is PointingGame
    for name in ("vit_gradcam", "vit_chefer", "vit_attention_rollout"):
        assert EXPLAINERS.get(name).input_kind == "image_text"  # `sanitycheck submit` gives them the CLIP suites
    assert getattr(EXPLAINERS.get("occlusion"), "input_kind", "image") == "image"


def test_scene_truth_follows_head_and_indices(scenes, dataset):
    truth = scene_truth(dataset)
    assert len(truth) == len(scenes)
    assert torch.equal(truth.caption_boxes, scenes.caption_boxes)
    assert torch.equal(truth.present(), scenes.present())
    assert torch.equal(truth.caption_classes, dataset.labels)
    head = dataset.head(10)
    assert torch.equal(scene_truth(head).boxes, scenes.boxes[:10])
    # the runner's subset of the first n (validate re-runs a seeded sample of images)
    from sanitycheck.data import ImageDataset

    idx = [7, 2, 5]
    sub = ImageDataset(head.name, head.images[idx], head.labels[idx], head.classes, head.source, head.checksum,
                       {**head.meta, "indices": idx})
    assert torch.equal(scene_truth(sub).boxes, scenes.boxes[idx])
    shuffled = ImageDataset(head.name, head.images[idx], head.labels[idx], head.classes, head.source, head.checksum,
                            dict(head.meta))  # reordered without saying so: caught by the label check
    if not torch.equal(head.labels[idx], head.labels[:3]):
        with pytest.raises(DataError, match="does not match its labels"):
            scene_truth(shuffled)
    plain = ImageDataset("digits", head.images, head.labels, head.classes, "x", "y", {})
    with pytest.raises(ConfigError, match="clip_scenes"):
        scene_truth(plain, who="pointing_game")
    assert SCENE_TRUTH_KEY in dataset.meta


def test_unrelated_classes_are_absent_seeded_and_batch_invariant(scenes):
    present = scenes.present()
    keys = sample_keys(scenes.images)
    other = unrelated_classes(present, keys, seed=0)
    assert not present[torch.arange(len(scenes)), other].any()
    assert torch.equal(other, unrelated_classes(present, keys, seed=0))
    assert torch.equal(other[5:9], unrelated_classes(present[5:9], keys[5:9], seed=0))  # per-image draws
    assert not torch.equal(other, unrelated_classes(present, keys, seed=1))
    full = torch.ones(1, 10, dtype=torch.bool)
    with pytest.raises(ConfigError, match="every one"):
        unrelated_classes(full, ["k"], seed=0)


def test_text_randomization_target(sim, scenes, dataset):
    check = TextRandomization()
    x = scenes.images[:12].contiguous()
    target = ClassTarget(dataset.labels[:12])
    with torch.no_grad():
        logits = sim(x)
    out = check.transform_target(target, logits, seed=0, x=x, dataset=dataset)
    assert isinstance(out, ClassTarget) and len(out) == 12
    assert not scenes.present()[torch.arange(12), out.classes].any()  # names nothing in the scene
    assert not torch.equal(out.classes, target.classes)
    assert check.steps(sim, x) == ["unrelated_prompt"]
    [state] = list(check.states(sim, seed=0, example_input=x[:2]))
    assert state.step == "unrelated_prompt" and state.model is not sim
    with pytest.raises(ConfigError, match="dataset"):
        check.transform_target(target, logits, seed=0, x=x)
    absent = ClassTarget(out.classes)  # explaining a prompt of an absent class is not the caption
    with pytest.raises(ConfigError, match="target: label"):
        check.transform_target(absent, logits, seed=0, x=x, dataset=dataset)


def test_pointing_game_family(scenes, dataset):
    from sanitycheck.metrics.localization import box_masks

    n = 12
    x = scenes.images[:n]
    target = ClassTarget(dataset.labels[:n])
    boxes = scenes.caption_boxes[:n]
    inside = box_masks(boxes, 64, 64).float()
    family = PointingGameScores()  # the metric behind the pointing_game check
    ev = family.evaluate(None, x, target, inside * torch.rand(n, 64, 64, generator=torch.Generator().manual_seed(0)),
                         seed=0, dataset=dataset)
    assert ev.summary_step == "score" and ev.curve is None
    assert torch.equal(ev.scores["pointing"], torch.ones(n, dtype=torch.float64))
    assert torch.allclose(ev.scores["energy_pointing"], torch.ones(n, dtype=torch.float64))
    # a map on another item of the scene misses
    other_cell = [[c for c in range(4) if c != int(scenes.caption_cell[i]) and scenes.classes[i, c] >= 0][0]
                  for i in range(n)]
    other = box_masks(scenes.boxes[torch.arange(n), torch.tensor(other_cell)], 64, 64).float()
    ev2 = family.evaluate(None, x, target, other + 0.01 * inside, seed=0, dataset=dataset)
    assert (ev2.scores["pointing"] == 0).all() and (ev2.scores["energy_pointing"] < 0.05).all()
    # signed vs absolute maps
    neg = -2 * other + inside
    assert (family.evaluate(None, x, target, neg, seed=0, dataset=dataset).scores["pointing"] == 1).all()
    assert (PointingGameScores(absolute=True).evaluate(None, x, target, neg, seed=0, dataset=dataset)
            .scores["pointing"] == 0).all()
    notes = ev.notes
    assert notes["chance_area"] == pytest.approx(28 * 28 / 64 ** 2)
    assert notes["chance_cell"] == pytest.approx(float((1 / scenes.n_items[:n].double()).mean()))
    assert 0 < notes["random_maps"]["pointing_game"] < 1
    const = family.evaluate(None, x, target, torch.zeros(n, 64, 64), seed=0, dataset=dataset)
    assert const.scores["pointing"].isnan().all() and const.notes["undefined_pointing"] == n
    with pytest.raises(ConfigError, match="dataset"):
        family.evaluate(None, x, target, inside, seed=0)
    with pytest.raises(ConfigError, match="target must be 'label'"):
        family.evaluate(None, x, ClassTarget((dataset.labels[:n] + 1) % 10), inside, seed=0, dataset=dataset)
    with pytest.raises(ConfigError, match="tolerance"):
        PointingGame(tolerance=-1)


def test_cascade_steps_cover_the_image_tower_top_down(sim, batch):
    x, _ = batch
    check = CascadingRandomization(group_depth=4)
    steps = check.steps(sim, x)
    assert steps == ["projection", "visual.ln_post", *[f"visual.transformer.resblocks.{i}" for i in (3, 2, 1, 0)],
                     "visual.ln_pre", "visual", "visual.conv1"]
    before = {k: v.clone() for k, v in sim.named_parameters()}
    seen = []
    for state in check.states(sim, seed=0, example_input=x):
        seen.append({k for k, p in state.model.named_parameters() if not torch.equal(p, before[k])})
    assert seen[0] == {"projection.weight"}  # the top of the tower first
    assert {"visual.class_embedding", "visual.positional_embedding"} <= seen[-2]
    assert seen[-1] == set(before)  # in the end every parameter of the image side, nothing else exists
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in seen[5] - seen[4]
    independent = [s.step for s in IndependentRandomization(group_depth=4).states(sim, seed=0, example_input=x)]
    assert independent == steps
    # the CLIP model the similarity was built from is never changed, and keeps its own projection
    assert sim.projection.weight is not None


def test_projection_is_shared_not_copied(tiny_clip, sim):
    assert sim.projection.weight is tiny_clip.visual.proj
    assert tiny_clip.visual.proj is not None and sim.visual.proj is None
    assert sim.visual is not tiny_clip.visual
    assert sim.visual.conv1 is tiny_clip.visual.conv1  # submodules shared: no second copy of the weights
