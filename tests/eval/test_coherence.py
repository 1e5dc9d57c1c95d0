"""Coherence, latent classification and the coherence classifiers, on toy problems with known
answers: a label-copying model (coherence 1), a generator that ignores z (chance), and the
subset-batched computation against a per-subset loop."""

import json

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_mmvae.guides import IndependentPrivate, MoPoE, MultimodalGuide, PoE, expert_encoder
from pyro_mmvae.models import GaussianDecoder, MultimodalModel, StandardNormalPrior, image_modality
from pyro_mmvae.models.networks import text_modality
from pyro_mmvae.eval.classifiers import (ModalityClassifier, classifier_accuracy, infer_kind,
                                         load_classifiers, predict, save_classifiers,
                                         train_modality_classifiers)
from pyro_mmvae.eval.coherence import (all_subsets, conditional_coherence, encode_subsets,
                                       joint_coherence, latent_classification, subset_matrix)
from pyro_mmvae.protocol import DATA_PLATE, num_points
from tests.eval.coherence_problems import (ARGMAX, MODS, K, CopyGuide, classified_linear_problem,
                                           copy_model, labelled, mean_guide_of, noise_model)


def test_subset_matrix_names_and_errors():
    assert all_subsets(["a", "b"]) == [("a",), ("b",), ("a", "b")]
    names, rows = subset_matrix(None, MODS)
    assert len(names) == 7 and names[0] == "a" and names[-1] == "a+b+c"
    names, rows = subset_matrix(["c+a", ("b",), "b+c"], MODS)
    assert names == ["a+c", "b", "b+c"]
    assert rows.tolist() == [[True, False, True], [False, True, False], [False, True, True]]
    with pytest.raises(ValueError, match="unknown modality 'd'"):
        subset_matrix(["a+d"], MODS)
    with pytest.raises(ValueError, match="twice"):
        subset_matrix(["a+b", "b+a"], MODS)


def test_label_copying_model_is_perfectly_coherent():
    data, y = labelled(50)
    out = conditional_coherence(copy_model(), CopyGuide(), data, y, ARGMAX, batch_size=16,
                                num_samples=2)
    assert set(out["coherence"]) == {"a", "b", "c", "a+b", "a+c", "b+c", "a+b+c"}
    for per_target in out["coherence"].values():
        assert per_target == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert out["cross_by_num_inputs"] == {1: 1.0, 2: 1.0}
    assert out["self_by_num_inputs"] == {1: 1.0, 2: 1.0, 3: 1.0}
    assert "a+b+c" not in out["cross"] and out["self"]["a+b+c"] == 1.0
    assert out["leave_one_out"] == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert out["leave_one_out_mean"] == 1.0
    assert set(out["num_points"].values()) == {50}
    json.dumps(out)  # plain values only
    # generating samples rather than means changes nothing here (noise 0.1 << margin 1)
    out = conditional_coherence(copy_model(), CopyGuide(), data, y, ARGMAX, use_mean=False)
    assert out["leave_one_out_mean"] == 1.0
    assert joint_coherence(copy_model(), ARGMAX, num_samples=300, batch_size=128) == 1.0


def test_coherence_per_subset_with_an_uninformative_modality():
    # c carries no label: from c alone the guide guesses (chance), any subset with a or b is
    # perfect (all decoders copy z) -- every subset row of the stacked computation is its own
    data, y = labelled(2000, seed=1, uninformative=("c",))
    out = conditional_coherence(copy_model(), CopyGuide(), data, y, ARGMAX, batch_size=500)
    coh = out["coherence"]
    for name, per_target in coh.items():
        for target, acc in per_target.items():
            if name == "c":
                assert abs(acc - 1 / K) < 0.05, (name, target, acc)
            else:
                assert acc == 1.0, (name, target)


def test_generator_ignoring_z_is_at_chance():
    data, y = labelled(1000, seed=2)
    out = conditional_coherence(noise_model(), CopyGuide(), data, y, ARGMAX, use_mean=False,
                                batch_size=250)
    accs = [acc for per_target in out["coherence"].values() for acc in per_target.values()]
    assert len(accs) == 21
    assert all(abs(acc - 1 / K) < 0.07 for acc in accs), accs
    assert abs(out["leave_one_out_mean"] - 1 / K) < 0.05
    # three independent uniform labels agree with probability K * K^-3
    joint = joint_coherence(noise_model(), ARGMAX, num_samples=4000, use_mean=False)
    assert abs(joint - 1 / K ** 2) < 0.02


def test_mask_restricts_each_subset_to_points_where_it_is_observed():
    data, y = labelled(40)
    mask = {"a": torch.arange(40) < 30, "b": torch.arange(40) >= 10,
            "c": torch.ones(40, dtype=torch.bool)}
    # corrupt the unobserved entries: they must never reach the result
    data["a"][30:] = F.one_hot((y[30:] + 1) % K, K).double()
    out = conditional_coherence(copy_model(), CopyGuide(), data, y, ARGMAX, mask=mask,
                                batch_size=16)
    assert out["num_points"] == {"a": 30, "b": 30, "c": 40, "a+b": 20, "a+c": 30, "b+c": 30,
                                 "a+b+c": 20}
    assert out["leave_one_out_mean"] == 1.0
    assert all(v == 1.0 for per in out["coherence"].values() for v in per.values())


def test_subset_batching_equals_a_loop_over_subsets():
    model, guide, data, y, classifiers = classified_linear_problem()
    g = torch.Generator().manual_seed(4)
    mask = {m: torch.rand(37, generator=g) < 0.7 for m in data}
    out = conditional_coherence(model, mean_guide_of(guide), data, y, classifiers, mask=mask,
                                batch_size=10)
    names, rows = subset_matrix(None, list(data))
    with torch.no_grad():
        for name, row in zip(names, rows):
            s_mask = {m: torch.full((37,), bool(on)) for m, on in zip(data, row)}
            valid = torch.stack([mask[m] for m, on in zip(data, row) if on]).all(0)
            z = guide.distribution(data, s_mask).mean
            for m in data:
                pred = classifiers[m](model.decoders[m](z).mean).argmax(-1)
                expected = (pred == y)[valid].double().mean().item()
                assert out["coherence"][name][m] == expected, (name, m)
            assert out["num_points"][name] == int(valid.sum())
        codes = encode_subsets(guide, data, rows, batch_size=10)
        for i, row in enumerate(rows):
            s_mask = {m: torch.full((37,), bool(on)) for m, on in zip(data, row)}
            torch.testing.assert_close(codes[i], guide.distribution(data, s_mask).mean,
                                       rtol=0, atol=1e-12)


def test_one_guide_and_one_model_call_per_minibatch():
    model, guide, data, y, classifiers = classified_linear_problem(n=20)
    calls = {"guide": 0, "model": 0}

    def counted(fn, key):
        def wrapper(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)
        wrapper.vectorized = True  # as the wrapped library model and guide declare
        return wrapper

    conditional_coherence(counted(model, "model"), counted(guide, "guide"), data, y,
                          classifiers, batch_size=8, num_samples=3)
    assert calls == {"guide": 3, "model": 3}


def test_mixture_guide_private_latents_images_and_text_run():
    # MoPoE guide over an image and a text modality: shapes through the stacked plates
    torch.manual_seed(0)
    enc_i, dec_i = image_modality((1, 8, 8), 2, channels=(4,))
    enc_t, dec_t = text_modality(6, 2, alphabet_size=5, channels=8)
    model = MultimodalModel(StandardNormalPrior(2), {"img": dec_i, "txt": dec_t})
    guide = MultimodalGuide({"img": enc_i, "txt": enc_t}, MoPoE())
    n = 10
    data = {"img": torch.rand(n, 1, 8, 8),
            "txt": F.one_hot(torch.randint(5, (n, 6)), 5).double()}
    y = torch.randint(K, (n,))
    clfs = {"img": ModalityClassifier("image", (1, 8, 8), K, channels=(4,)),
            "txt": ModalityClassifier("text", (6, 5), K, channels=8)}
    clfs = {m: c.double() for m, c in clfs.items()}
    out = conditional_coherence(model, guide, data, y, clfs, num_samples=2, batch_size=4)
    assert set(out["coherence"]) == {"img", "txt", "img+txt"}
    assert all(0 <= v <= 1 for per in out["coherence"].values() for v in per.values())
    assert 0 <= joint_coherence(model, clfs, num_samples=7, batch_size=3) <= 1
    res = latent_classification(guide, data, y, data, y, num_train=8)
    assert set(res["accuracy"]) == {"img", "txt", "img+txt"}
    assert res["num_train"]["img"] == 8 and res["num_test"]["img"] == n
    # private latents (PE-PoE): the w of each generated modality is sampled as well
    dims = {"a": 3, "b": 4, "c": 2}
    model = MultimodalModel(StandardNormalPrior(2),
                            {m: GaussianDecoder(nn.Linear(4, d)) for m, d in dims.items()},
                            private_dim=2)
    data = {m: torch.randn(n, d) for m, d in dims.items()}
    guide = MultimodalGuide({m: expert_encoder(d, 4, (8,)) for m, d in dims.items()}, PoE(),
                            private=IndependentPrivate(4, 2), shared_features=4)  # PE-PoE
    out = conditional_coherence(model, guide, data, y,
                                {m: nn.Linear(d, K) for m, d in dims.items()})
    assert len(out["coherence"]) == 7 and set(out["leave_one_out"]) == set(dims)


def test_decoded_text_is_the_per_position_argmax():
    from pyro_mmvae.eval.coherence import decoded_value
    logits = torch.randn(3, 6, 5)
    fn = dist.OneHotCategorical(logits=logits).to_event(1)
    site = {"fn": fn, "value": fn.sample()}
    out = decoded_value(site)
    assert torch.equal(out, F.one_hot(logits.argmax(-1), 5).double())
    assert decoded_value(site, use_mean=False) is site["value"]
    normal = dist.Normal(torch.randn(3, 2), 1.0).to_event(1)
    site = {"fn": normal, "value": normal.sample()}
    assert torch.equal(decoded_value(site), normal.mean)


def test_latent_classification_label_in_latent_vs_noise():
    train, y_train = labelled(600, seed=5, noise=0.5)
    test, y_test = labelled(800, seed=6, noise=0.5)
    res = latent_classification(CopyGuide(), train, y_train, test, y_test, num_train=200)
    assert set(res["num_train"].values()) == {200}
    assert all(acc > 0.9 for acc in res["accuracy"].values()), res["accuracy"]
    assert set(res["by_num_inputs"]) == {1, 2, 3}
    assert res["by_num_inputs"][3] >= res["by_num_inputs"][1] > 0.9
    json.dumps(res)

    def noise_guide(data, mask=None):
        with pyro.plate(DATA_PLATE, num_points(data)):
            return pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))

    res = latent_classification(noise_guide, train, y_train, test, y_test,
                                subsets=["a", "a+b+c"], use_mean=False)
    assert set(res["accuracy"]) == {"a", "a+b+c"}
    assert all(abs(acc - 1 / K) < 0.07 for acc in res["accuracy"].values()), res


def _separable(n, seed):
    """An easy 3-class problem in three shapes: images (bright quadrant), one-hot text (first
    character) and vectors (cluster means)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(3, (n,), generator=g)
    img = 0.1 * torch.rand(n, 1, 8, 8, generator=g)
    for c in range(3):
        rows, cols = divmod(c, 2)
        img[y == c, :, 4 * rows:4 * rows + 4, 4 * cols:4 * cols + 4] += 1.0
    chars = torch.randint(5, (n, 6), generator=g)
    chars[:, 0] = y
    txt = F.one_hot(chars, 5).double()
    vec = 3 * F.one_hot(y, 3).double() + torch.randn(n, 3, generator=g)
    return {"img": img, "txt": txt, "vec": vec}, y


def test_train_classifiers_save_and_load(tmp_path):
    data, y = _separable(240, seed=7)
    test, y_test = _separable(200, seed=8)
    arch = {"img": {"channels": (8,)}, "txt": {"channels": 16}, "vec": {"hidden": (16,)}}
    clfs = train_modality_classifiers(data, y, 3, epochs=15, batch_size=32, lr=3e-3,
                                      architectures=arch)
    assert {m: c.kind for m, c in clfs.items()} == {"img": "image", "txt": "text",
                                                    "vec": "flat"}
    acc = classifier_accuracy(clfs, test, y_test)
    assert all(a > 0.9 for a in acc.values()), acc
    # the same seed gives the same classifiers
    again = train_modality_classifiers({"vec": data["vec"]}, y, 3, epochs=15, batch_size=32,
                                       lr=3e-3, architectures=arch)
    assert torch.equal(predict(again["vec"], test["vec"]), predict(clfs["vec"], test["vec"]))

    path = tmp_path / "run" / "classifiers.pt"
    save_classifiers(path, clfs)
    assert [p.name for p in path.parent.iterdir()] == ["classifiers.pt"]  # no temp file left
    loaded = load_classifiers(path)
    for m in clfs:
        assert loaded[m].config() == clfs[m].config() and not loaded[m].training
        with torch.no_grad():
            assert torch.equal(loaded[m](test[m]), clfs[m](test[m]))
    assert classifier_accuracy(loaded, test, y_test) == acc


def test_classifier_input_errors(tmp_path):
    assert infer_kind(torch.zeros(2, 1, 4, 4)) == "image"
    with pytest.raises(ValueError, match="cannot pick a classifier"):
        infer_kind(torch.zeros(2, 1, 1, 4, 4))
    with pytest.raises(ValueError, match="labels must lie"):
        train_modality_classifiers({"a": torch.zeros(3, 2)}, torch.tensor([0, 1, 5]), 3)
    with pytest.raises(ValueError, match="only ModalityClassifier"):
        save_classifiers(tmp_path / "c.pt", {"a": nn.Linear(2, 3)})
    with pytest.raises(ValueError, match="unknown modality"):
        conditional_coherence(copy_model(), CopyGuide(), *labelled(4), ARGMAX, subsets=["d"])


def test_classifier_training_is_fit_and_leaves_the_param_store_alone():
    """The classifiers train through the one loop (fit) in a param store of their own: a
    model's pyro.param values stay, and no classifier parameter is left behind; the global
    RNG is not re-seeded."""
    from unittest import mock

    import pyro_mmvae.eval.classifiers as classifiers_module

    data, y = _separable(96, seed=3)
    pyro.clear_param_store()
    w = pyro.param("user_weight", torch.tensor([1.5, -2.0]))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with mock.patch.object(classifiers_module, "fit", wraps=classifiers_module.fit) as spy:
        clfs = train_modality_classifiers({"vec": data["vec"]}, y, 3, epochs=3, batch_size=32)
    assert spy.call_count == 1 and spy.call_args.kwargs["isolate_params"] is True
    assert list(pyro.get_param_store().keys()) == ["user_weight"]
    assert pyro.param("user_weight") is w
    assert torch.equal(torch.get_rng_state(), before)  # nothing drawn: no latent, no dropout
    assert clfs["vec"].training is False
