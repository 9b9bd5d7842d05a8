import math

import pytest
import torch

from sanitycheck.metrics.localization import (box_masks, chance_levels, energy_pointing_game, pointing_game,
                                      random_maps_baseline)
from sanitycheck.errors import ConfigError

BOXES = torch.tensor([[0, 0, 4, 4], [4, 4, 8, 8], [0, 0, 4, 4], [0, 0, 4, 4], [2, 2, 6, 6]])


def _maps():
    m = torch.zeros(5, 8, 8)
    m[0, 1, 2] = 1.0          # hit (x=2, y=1 in the box 0..4)
    m[1, 1, 2] = 1.0          # miss
    m[2, 0, 0] = m[2, 7, 7] = 1.0  # a tie, one of two maxima inside -> 0.5
    # m[3] constant (all zero) -> undefined
    m[4] = -1.0
    m[4, 1, 1] = 0.5          # max just outside the box [2, 6)
    return m


def test_pointing_game_on_hand_made_maps():
    scores = pointing_game(_maps(), BOXES)
    assert scores[:3].tolist() == [1.0, 0.0, 0.5]
    assert math.isnan(scores[3])
    assert scores[4] == 0.0
    assert pointing_game(_maps(), BOXES, tolerance=1)[4] == 1.0
    assert pointing_game(_maps()[:, None], BOXES)[0] == 1.0  # (B, 1, H, W) accepted


def test_energy_pointing_game_on_hand_made_maps():
    m = torch.zeros(3, 8, 8)
    m[0, 0:4, 0:4] = 1.0
    m[0, 7, 7] = 16.0         # half the positive energy outside
    m[1] = -1.0               # no positive energy -> undefined
    m[2, 0, 0] = 3.0
    m[2, 5, 5] = -100.0       # negative values do not count
    scores = energy_pointing_game(m, BOXES[:3])
    assert scores[0] == pytest.approx(0.5)
    assert math.isnan(scores[1])
    assert scores[2] == pytest.approx(1.0)  # the large negative value outside the box does not count


def test_chance_and_random_baseline():
    boxes = torch.tensor([[0, 0, 32, 32]] * 200)
    levels = chance_levels(boxes, 64, 64)
    assert levels == {"area": 0.25, "cell": 0.25}
    rnd = random_maps_baseline(boxes, 64, 64, seed=1)
    assert abs(rnd["pointing_game"] - 0.25) < 0.1 and abs(rnd["energy_pointing_game"] - 0.25) < 0.02
    assert box_masks(boxes[:1], 64, 64).sum() == 32 * 32


def test_bad_inputs():
    with pytest.raises(ConfigError):
        pointing_game(torch.zeros(2, 8), BOXES[:2])
    with pytest.raises(ConfigError, match="negative"):
        pointing_game(torch.zeros(1, 8, 8), torch.tensor([[-1, -1, -1, -1]]))
    with pytest.raises(ConfigError):
        energy_pointing_game(torch.zeros(2, 8, 8), BOXES[:3])
