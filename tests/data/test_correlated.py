"""The M2VAE's correlated-dataset generator: the procedural shapes, the label-conditional VAE,
the correlated pairs and their two controls, and e-digits."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

from pyro_mmvae.data import (ConditionalVAE, MultimodalDataset, class_pairing, correlated_pairs,
                             digit_images, e_digit_cvaes, e_digits, procedural_shapes,
                             train_conditional_vae, within_class_shuffle)
from pyro_mmvae.data.correlated import IMAGE, LABEL, SHAPE_CLASSES, truncated_normal
from pyro_mmvae.train import fit


def tiny_cvae(seed=0, hidden=(16,)):
    torch.manual_seed(seed)
    return ConditionalVAE(hidden=hidden).eval()


# --- the shapes ----------------------------------------------------------------------------

def test_shapes_are_deterministic_balanced_and_in_the_unit_interval():
    a, b = procedural_shapes(500, seed=3), procedural_shapes(500, seed=3)
    assert isinstance(a, MultimodalDataset) and a.modalities == (IMAGE,)
    x = a.data[IMAGE]
    assert x.shape == (500, 64) and x.dtype == torch.get_default_dtype()
    assert torch.equal(x, b.data[IMAGE]) and torch.equal(a.labels, b.labels)
    assert not torch.equal(x, procedural_shapes(500, seed=4).data[IMAGE])
    assert x.min() >= 0 and x.max() <= 1
    assert torch.bincount(a.labels, minlength=10).tolist() == [50] * 10
    assert bool(a.mask[IMAGE].all()) and len(SHAPE_CLASSES) == 10
    # anti-aliased: many pixels are strictly between 0 and 1
    assert ((x > 0.05) & (x < 0.95)).double().mean() > 0.05
    assert procedural_shapes(20, seed=3, dtype=torch.float32).data[IMAGE].dtype == torch.float32


def test_shape_classes_differ_and_each_varies_continuously():
    """A nearest-class-mean classifier fitted on one sample classifies a fresh one far above
    chance; within a class the images differ (no two the same, rarely), and the ink of a bar
    follows its area 2h x t, of a disc h^2 (continuous in the parameters)."""
    train, test = procedural_shapes(2000, seed=0), procedural_shapes(1000, seed=1)
    means = torch.stack([train.data[IMAGE][train.labels == c].mean(0) for c in range(10)])
    guess = torch.cdist(test.data[IMAGE], means).argmin(-1)
    assert (guess == test.labels).double().mean() > 0.6  # chance: 0.1
    for c in range(10):
        x = train.data[IMAGE][train.labels == c]
        assert len(torch.unique(x, dim=0)) > 0.9 * len(x), SHAPE_CLASSES[c]
        assert x.std(0).max() > 0.2, SHAPE_CLASSES[c]
    h, t, ink = train.info["half_size"], train.info["thickness"], train.data[IMAGE].sum(-1)

    def corr(u, v):
        return torch.corrcoef(torch.stack([u, v]))[0, 1]

    bar = train.labels == SHAPE_CLASSES.index("horizontal bar")
    disc = train.labels == SHAPE_CLASSES.index("circle")
    assert corr(ink[bar], (2 * h * t)[bar]) > 0.9  # up to the 4x4 supersampling's steps
    assert corr(ink[disc], (h ** 2)[disc]) > 0.9


def test_digit_images_are_the_bundled_split_in_the_unit_interval():
    train, test = digit_images("train"), digit_images("test")
    assert train.data[IMAGE].shape == (1438, 64) and test.data[IMAGE].shape == (359, 64)
    assert train.data[IMAGE].min() == 0 and train.data[IMAGE].max() == 1
    assert not set(train.source_index[IMAGE].tolist()) & set(test.source_index[IMAGE].tolist())


# --- the CVAE -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_cvae_trains_with_fit_and_follows_the_protocol():
    """fit lowers its ELBO loss; with the image masked out the model generates one (in the
    Bernoulli's support) and the guide falls back to the prior."""
    shapes = procedural_shapes(256, seed=0)
    cvae = tiny_cvae(hidden=(32,))
    data = cvae.batch(shapes.data[IMAGE], shapes.labels)
    assert data[LABEL].shape == (256, 10) and bool((data[LABEL].sum(-1) == 1).all())
    history = fit(cvae.model, cvae.guide, TraceMeanField_ELBO(), data, epochs=6, batch_size=32,
                  lr=1e-2, progress=False)
    assert history["loss"][-1] < history["loss"][0] - 1.0
    hidden = {IMAGE: torch.zeros(256, dtype=torch.bool), LABEL: torch.ones(256, dtype=torch.bool)}
    trace = poutine.trace(cvae.model).get_trace({LABEL: data[LABEL]}, hidden)
    drawn = trace.nodes["x_image"]["value"]
    assert drawn.shape == (256, 64) and bool(((drawn == 0) | (drawn == 1)).all())
    q = cvae.guide.distribution(data, hidden)
    assert torch.equal(q.mean, torch.zeros(256, 2)) and torch.equal(q.stddev, torch.ones(256, 2))
    with pytest.raises(ValueError, match="one-hot class label"):
        cvae.model({IMAGE: data[IMAGE]})


def test_train_conditional_vae_leaves_the_caller_s_store_and_rng_alone():
    store = pyro.get_param_store()
    pyro.param("user_parameter", torch.ones(2))
    mine = store._params["user_parameter"]
    rng = torch.get_rng_state()
    shapes = procedural_shapes(128, seed=0)
    cvae = train_conditional_vae(shapes.data[IMAGE], shapes.labels, epochs=2, seed=1,
                                 hidden=(16,), batch_size=64)
    assert list(store.keys()) == ["user_parameter"]
    assert store._params["user_parameter"] is mine
    assert torch.equal(torch.get_rng_state(), rng)
    assert not cvae.training and len(cvae.history["loss"]) == 2
    again = train_conditional_vae(shapes.data[IMAGE], shapes.labels, epochs=2, seed=1,
                                  hidden=(16,), batch_size=64)
    z, c = torch.randn(5, 2), torch.arange(5)
    assert torch.equal(cvae.decode(z, c), again.decode(z, c))  # deterministic given the seed


# --- the correlated pairs -------------------------------------------------------------------

def test_correlated_pairs_are_truncated_uniform_deterministic_and_decoded():
    a, b = tiny_cvae(0), tiny_cvae(1)
    e = correlated_pairs(a, b, 5000, seed=7)
    z = e.info["z"]
    assert e.modalities == ("a", "b") and e.data["a"].shape == (5000, 64)
    assert e.data["a"].dtype == torch.get_default_dtype()
    assert z.shape == (5000, 2) and bool((z.abs() <= 2).all())
    # N(0, 1) truncated to [-2, 2] has standard deviation 0.880
    assert torch.allclose(z.std(0), torch.full((2,), 0.880), atol=0.03)
    counts = torch.bincount(e.labels, minlength=10)
    assert counts.min() > 400 and counts.max() < 600  # 500 expected each
    assert torch.equal(e.data["a"], a.decode(z, e.labels))  # the decoder means at (z, c)
    assert torch.equal(e.data["b"], b.decode(z, e.labels))
    assert e.data["b"].min() >= 0 and e.data["b"].max() <= 1
    again = correlated_pairs(a, b, 5000, seed=7)
    assert torch.equal(again.data["b"], e.data["b"]) and torch.equal(again.labels, e.labels)
    assert not torch.equal(correlated_pairs(a, b, 5000, seed=8).info["z"], z)
    wide = truncated_normal(20000, 2, None, torch.Generator().manual_seed(0))
    assert wide.abs().max() > 2.5
    with pytest.raises(ValueError, match="share the latent size"):
        correlated_pairs(a, ConditionalVAE(latent_dim=3), 10, seed=0)


def _out_of_sample_r2(x, y):
    """R^2 of the least-squares regression of ``y`` on ``[x, 1]`` fitted on the first half of
    the rows and evaluated on the second."""
    half = len(x) // 2
    design = torch.cat([x, torch.ones(len(x), 1)], -1)
    coef = torch.linalg.lstsq(design[:half], y[:half]).solution
    resid = y[half:] - design[half:] @ coef
    return 1 - resid.pow(2).sum() / (y[half:] - y[half:].mean(0)).pow(2).sum()


def test_the_modalities_are_correlated_through_z_and_the_shuffle_destroys_it():
    """Within every class a linear regression from b to the latent of a predicts it well out of
    sample on the correlated pairs, and not at all once b is shuffled within the class."""
    e = correlated_pairs(tiny_cvae(0), tiny_cvae(1), 4000, seed=0)
    me = within_class_shuffle(e, "b", seed=0)
    for c in range(10):
        rows = e.labels == c
        z = e.info["z"][rows]
        assert _out_of_sample_r2(e.data["b"][rows], z) > 0.9
        assert _out_of_sample_r2(me.data["b"][rows], z) < 0.2


def test_within_class_shuffle_keeps_classes_and_multisets_and_permutes():
    e = correlated_pairs(tiny_cvae(0), tiny_cvae(1), 1000, seed=0)
    before = e.data["b"].clone()
    me = within_class_shuffle(e, "b", seed=3)
    assert torch.equal(e.data["b"], before)  # the input is not changed
    assert torch.equal(me.labels, e.labels) and torch.equal(me.data["a"], e.data["a"])
    assert torch.equal(me.info["z"], e.info["z"])
    perm = me.info["shuffled_from"]
    assert torch.equal(torch.sort(perm).values, torch.arange(1000))
    assert torch.equal(e.labels[perm], e.labels)  # every row comes from its own class
    assert torch.equal(me.data["b"], e.data["b"][perm])
    for c in range(10):  # so each class keeps its multiset of b rows
        rows = e.labels == c
        assert torch.equal(torch.unique(me.data["b"][rows], dim=0),
                           torch.unique(e.data["b"][rows], dim=0))
    assert (perm == torch.arange(1000)).double().mean() < 0.05  # ~1/100 stay in place
    assert torch.equal(within_class_shuffle(e, "b", seed=3).data["b"], me.data["b"])
    assert not torch.equal(within_class_shuffle(e, "b", seed=4).data["b"], me.data["b"])
    with pytest.raises(ValueError, match="modality 'c' is not in the dataset"):
        within_class_shuffle(e, "c", seed=0)


def test_class_pairing_pairs_real_images_of_the_same_class_only():
    digits = digit_images("train")
    shapes = procedural_shapes(300, seed=0)
    keep = shapes.labels != 9  # a class the shapes lack is never drawn
    xb, yb = shapes.data[IMAGE][keep], shapes.labels[keep]
    m = class_pairing(digits.data[IMAGE], digits.labels, xb, yb, 2000, seed=1)
    ia, ib = m.source_index["a"], m.source_index["b"]
    assert torch.equal(digits.labels[ia], m.labels) and torch.equal(yb[ib], m.labels)
    assert torch.equal(m.data["a"], digits.data[IMAGE][ia])
    assert torch.equal(m.data["b"], xb[ib])
    counts = torch.bincount(m.labels, minlength=10)
    assert counts[9] == 0 and counts[:9].min() > 160  # 222 expected each
    assert len(torch.unique(ia)) > 800 and len(torch.unique(ib)) > 200  # random, not fixed
    again = class_pairing(digits.data[IMAGE], digits.labels, xb, yb, 2000, seed=1)
    assert torch.equal(again.source_index["a"], ia) and torch.equal(again.source_index["b"], ib)


# --- e-digits --------------------------------------------------------------------------------

def test_e_digits_builds_the_three_variants_deterministically():
    kwargs = dict(n_train=300, n_test=100, seed=0, epochs=2, num_shapes=200)
    out = e_digits(**kwargs)
    assert set(out) == {"e", "me", "m"}
    for key, name in (("e", "e_digits"), ("me", "me_digits"), ("m", "m_digits")):
        train, test = out[key]
        assert (train.name, train.split, len(train)) == (name, "train", 300)
        assert (test.name, test.split, len(test)) == (name, "test", 100)
        assert train.data["a"].shape == (300, 64) and train.data["b"].shape == (300, 64)
        assert train.data["a"].dtype == torch.get_default_dtype()
    e, me = out["e"][0], out["me"][0]
    assert torch.equal(e.data["a"], me.data["a"]) and torch.equal(e.labels, me.labels)
    assert torch.equal(me.data["b"], e.data["b"][me.info["shuffled_from"]])
    assert not torch.equal(out["e"][0].info["z"][:100], out["e"][1].info["z"])
    cvaes = e_digit_cvaes(seed=0, epochs=2, num_shapes=200)
    assert cvaes is e_digit_cvaes(seed=0, epochs=2, num_shapes=200)  # cached in memory
    z = e.info["z"].to(torch.float32)
    assert torch.allclose(e.data["b"], cvaes[1].decode(z, e.labels).to(e.data["b"].dtype))
    again = e_digits(**kwargs)
    for key in out:
        for split in (0, 1):
            for mod in ("a", "b"):
                assert torch.equal(out[key][split].data[mod], again[key][split].data[mod])
    # the m test split pairs the held-out digits
    test_digits = set(digit_images("test").source_index[IMAGE].tolist())
    source = digit_images("test").source_index[IMAGE][out["m"][1].source_index["a"]]
    assert set(source.tolist()) <= test_digits


@pytest.mark.slow
def test_e_digits_at_the_default_budget_is_class_consistent():
    """The default CVAEs generate images a classifier of the real data labels correctly, and
    e-digits' b predicts its latent within a class where me-digits' does not."""
    from sklearn.linear_model import LogisticRegression

    out = e_digits(n_train=2000, n_test=200)
    e, me = out["e"][0], out["me"][0]
    real = {"a": digit_images("train"), "b": procedural_shapes(2000, seed=11)}
    for m, data in real.items():
        clf = LogisticRegression(max_iter=2000).fit(data.data[IMAGE].numpy(),
                                                    data.labels.numpy())
        assert clf.score(e.data[m].numpy(), e.labels.numpy()) > 0.9, m
    for c in range(10):
        rows = e.labels == c
        z = e.info["z"][rows]
        shuffled = _out_of_sample_r2(me.data["b"][rows], z)
        assert _out_of_sample_r2(e.data["b"][rows], z) > shuffled + 0.5


def test_fully_observed_dataset_has_all_true_masks_and_long_labels():
    from pyro_mmvae.data import MultimodalDataset

    ds = MultimodalDataset.fully_observed({"a": torch.zeros(3, 2), "b": torch.ones(3, 1)},
                                          [2, 0, 1], "toy", "test", info={"z": torch.ones(3)})
    assert set(ds.mask) == {"a", "b"} and all(m.dtype == torch.bool and m.all() and
                                              m.shape == (3,) for m in ds.mask.values())
    assert ds.labels.dtype == torch.long and ds.labels.tolist() == [2, 0, 1]
    assert (ds.name, ds.split, ds.path, set(ds.info)) == ("toy", "test", None, {"z"})
