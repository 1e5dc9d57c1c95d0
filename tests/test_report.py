"""Grouping of the per-point rates and distortions of an evaluation by subset size."""

import pytest
import torch

from pyro_mmvae.report import rate_distortion_by_subset_size, rate_distortion_points


def test_rate_distortion_groups_points_by_subset_size():
    rd = {"subset_size": torch.tensor([1, 2, 1, 3, 0]),
          "rate": torch.tensor([1.0, 5.0, 3.0, 9.0, 0.0]),
          "cross_rate": torch.tensor([2.0, 1.0, 4.0, 7.0, 0.0]),
          "cross_reconstruction": torch.tensor([-6.0, -4.0, -12.0, 0.0, -8.0]),
          "conditional_reconstruction": torch.tensor([-3.0, -2.0, -3.0, 0.0, -8.0])}
    by_size = rate_distortion_by_subset_size(rd, num_modalities=3)
    # sizes 0 and M are no cross generation; size 1: points 0 and 2, two target modalities
    assert set(by_size) == {1, 2}
    assert by_size[1] == pytest.approx({"rate": 2.0, "cross_rate": 3.0, "cross_distortion": 4.5,
                                        "conditional_distortion": 1.5, "num_points": 2})
    assert by_size[2] == pytest.approx({"rate": 5.0, "cross_rate": 1.0, "cross_distortion": 4.0,
                                        "conditional_distortion": 2.0, "num_points": 1})
    points = rate_distortion_points({"full_rate": 7.0, "full_reconstruction": -30.0}, by_size, 3)
    assert points == ({"all inputs: −log p(x|z) / M": (7.0, 10.0),
                       "1 input: cross": (2.0, 4.5), "2 inputs: cross": (5.0, 4.0)})
