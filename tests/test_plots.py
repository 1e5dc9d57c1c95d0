"""Generation pictures: the generations behind them, and the PNG files."""

import torch
import torch.nn.functional as F

from pyro_mmvae.models import MultimodalModel, StandardNormalPrior, image_modality, text_modality
from pyro_mmvae.guides import MultimodalGuide, PoE
from pyro_mmvae.data.text import encode_text
from pyro_mmvae.diagnostics.plots import (conditional_generations, save_generation_grid,
                                          save_samples_grid, unconditional_samples)
from tests.eval.coherence_problems import K, MODS, CopyGuide, copy_model, labelled

PNG = b"\x89PNG\r\n\x1a\n"


def test_conditional_generations_from_each_subset_copy_the_observed_label():
    # CopyGuide puts z = one-hot label of the observed modalities; every decoder's mean is z.
    data, y = labelled(20, uninformative=("c",))
    out = conditional_generations(copy_model(), CopyGuide(), data, ["a", "b+c", "c"])
    assert list(out) == ["a", "b+c", "c"]
    truth = F.one_hot(y, K).double()
    for name in ("a", "b+c"):
        for m in MODS:
            assert torch.equal(out[name][m], truth), (name, m)
    # "c" carries no label: z is the argmax of near-zero noise, not the label for most points
    assert not torch.equal(out["c"]["a"], truth)


def test_unconditional_samples_have_one_entry_per_modality():
    samples = unconditional_samples(copy_model(), 7)
    assert set(samples) == set(MODS)
    for x in samples.values():  # one-hot labels, the same for every modality of a sample
        assert x.shape == (7, K) and torch.equal(x, samples["a"])


def test_generation_and_sample_grids_with_images_and_text(tmp_path):
    torch.manual_seed(0)
    enc_i, dec_i = image_modality((3, 8, 8), 2, channels=(4,))
    enc_t, dec_t = text_modality(8, 2, channels=8)
    model = MultimodalModel(StandardNormalPrior(2), {"img": dec_i, "text": dec_t})
    guide = MultimodalGuide({"img": enc_i, "text": enc_t}, PoE())
    data = {"img": torch.rand(5, 3, 8, 8), "text": encode_text(["one", "two", "three", "four",
                                                                "five"]).double()}
    with torch.no_grad():
        grid = save_generation_grid(tmp_path / "g.png", model, guide, data, ["text"], 4)
        samples = save_samples_grid(tmp_path / "s.png", model, 3)
    for path in (grid, samples):
        assert path.read_bytes()[:8] == PNG
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
