"""The one dataset type, MultimodalDataset: construction, checks, batches, indexing, to(), and
every dataset of the library being one."""

import struct

import numpy as np
import pytest
import torch

from pyro_mmvae.data import (IdentifiableData, LinearGaussianData, MultimodalDataset,
                             ambiguous_gaussians, bimodal_label_study, digit_images,
                             digit_sources, eight_gaussians, illustrative_bimodal,
                             multimodal_missing_study, pendulum, poly_digits,
                             private_latent_study, procedural_shapes, shared_latent_study)
from pyro_mmvae.data import dataset as dataset_module
from pyro_mmvae.data import digits as digits_module
from pyro_mmvae.data.conditional_vae import ConditionalVAE
from pyro_mmvae.data.correlated import class_pairing, correlated_pairs, within_class_shuffle
from pyro_mmvae.data.real import RealDataset, mnist
from pyro_mmvae.train import iterate_minibatches


def _toy(n=10, **kw):
    g = torch.Generator().manual_seed(0)
    data = {"a": torch.randn(n, 2, generator=g, dtype=torch.float32),
            "b": torch.randn(n, 3, 4, generator=g, dtype=torch.float32)}
    return MultimodalDataset(data, **kw)


# --- construction ------------------------------------------------------------------------------

def test_construction_defaults():
    ds = _toy()
    assert len(ds) == 10 and ds.modalities == ("a", "b")
    assert set(ds.mask) == {"a", "b"}
    assert all(k.dtype == torch.bool and k.shape == (10,) and k.all() for k in ds.mask.values())
    assert ds.labels is None and ds.latents is None and ds.info == {} and ds.item_info == ()
    assert (ds.name, ds.split, ds.path) == ("", "", None)
    assert ds.modality_shapes == {"a": (2,), "b": (3, 4)}
    assert ds.modality_dims == {"a": 2, "b": 12}
    assert ds.source_index == {}
    assert "N=10" in repr(ds) and "b: (3, 4)" in repr(ds)
    named = _toy(labels=torch.arange(10), latents=torch.zeros(10, 2), name="toy", split="test",
                 path="/tmp/toy.npz")
    assert named.path.name == "toy.npz" and "name='toy'" in repr(named)
    assert "labels (10,)" in repr(named) and "latents (10, 2)" in repr(named)
    attrs = _toy(labels=torch.zeros(10, 4, dtype=torch.long))  # (N, A) labels
    assert attrs.labels.shape == (10, 4)


def test_fully_observed():
    ds = MultimodalDataset.fully_observed({"a": torch.zeros(3, 1)}, [2, 0, 1], "toy", "train",
                                          {"a": torch.tensor([5, 6, 7])},
                                          {"z": torch.ones(3, 2), "seed": 4}, item_info=("z",))
    assert ds.labels.dtype == torch.long and ds.labels.tolist() == [2, 0, 1]
    assert ds.mask["a"].all() and ds.source_index["a"].tolist() == [5, 6, 7]
    assert set(ds.item_info) == {"z", "source_index"} and ds.info["seed"] == 4
    sub = ds[[2, 0]]
    assert sub.source_index["a"].tolist() == [7, 5] and sub.info["z"].shape == (2, 2)
    assert sub.info["seed"] == 4


@pytest.mark.parametrize("kwargs, message", [
    ({"mask": {"a": torch.ones(10, dtype=torch.bool)}}, "no entry for modality 'b'"),
    ({"mask": {"a": torch.ones(10, dtype=torch.bool), "b": torch.ones(10, dtype=torch.bool),
               "c": torch.ones(10, dtype=torch.bool)}}, "modality 'c', which is not in data"),
    ({"mask": {"a": torch.ones(10, dtype=torch.bool), "b": torch.ones(9, dtype=torch.bool)}},
     r"mask of modality 'b' must be a bool tensor of shape \(10,\)"),
    ({"mask": {"a": torch.ones(10), "b": torch.ones(10, dtype=torch.bool)}},
     r"mask of modality 'a' must be a bool tensor"),
    ({"labels": torch.zeros(9)}, r"labels must have shape \(N,\) or \(N, A\) with N = 10"),
    ({"latents": torch.zeros(10)}, r"latents must have shape \(N, d\)"),
    ({"latents": torch.zeros(11, 2)}, r"latents must have shape \(N, d\) with N = 10"),
    ({"info": {"r": torch.zeros(9)}, "item_info": ("r",)}, r"info\['r'\] has 9 entries"),
    ({"info": {"r": {"a": torch.zeros(10), "b": [1, 2]}}, "item_info": ("r",)},
     r"info\['r'\]\['b'\] has 2 entries"),
    ({"info": {"r": 3.0}, "item_info": ("r",)}, "not a per-item record"),
    ({"item_info": ("r",)}, "item_info names 'r', which is not in info"),
])
def test_construction_checks_name_the_culprit(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _toy(**kwargs)


def test_mismatched_modality_lengths():
    with pytest.raises(ValueError, match="modality 'b' has 4 items but modality 'a' has 5"):
        MultimodalDataset({"a": torch.zeros(5, 1), "b": torch.zeros(4, 1)})
    with pytest.raises(ValueError, match="modality 'a': expected a tensor"):
        MultimodalDataset({"a": [1.0, 2.0]})


# --- batches -----------------------------------------------------------------------------------

def test_batches_order_drop_last_and_labels():
    ds = _toy(13, labels=torch.arange(13) % 3)
    first = ds.data["a"]
    order = torch.randperm(13, generator=torch.Generator().manual_seed(5))
    got = list(ds.batches(4, generator=torch.Generator().manual_seed(5)))
    assert [len(d["a"]) for d, _ in got] == [4, 4, 4, 1]
    for k, (data, mask) in enumerate(got):  # consecutive slices of the permutation
        assert torch.equal(data["a"], first[order[4 * k:4 * k + 4]])
        assert torch.equal(data["b"], ds.data["b"][order[4 * k:4 * k + 4]])
        assert set(mask) == {"a", "b"} and mask["b"].shape == (len(data["a"]),)
    dropped = list(ds.batches(4, generator=torch.Generator().manual_seed(5), drop_last=True))
    assert len(dropped) == 3 and torch.equal(dropped[2][0]["a"], got[2][0]["a"])
    ordered = [d["a"] for d, _ in ds.batches(5, shuffle=False)]
    assert torch.equal(torch.cat(ordered), first) and [len(x) for x in ordered] == [5, 5, 3]
    for data, mask, labels in ds.batches(6, shuffle=False, with_labels=True):
        assert torch.equal(labels, (torch.arange(13) % 3)[:6]) and len(data["a"]) == 6
        break
    assert list(ds.batches(20, drop_last=True)) == []
    with pytest.raises(ValueError, match="batch_size"):
        next(ds.batches(0))
    with pytest.raises(ValueError, match="no labels"):
        next(_toy().batches(2, with_labels=True))


def test_batches_global_rng_when_no_generator():
    ds = _toy(8)
    torch.manual_seed(3)
    a = [d["a"] for d, _ in ds.batches(3)]
    torch.manual_seed(3)
    b = [d["a"] for d, _ in ds.batches(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("n, batch_size", [(128, 50), (100, 10), (7, 8)])
def test_batches_match_iterate_minibatches(n, batch_size):
    g = torch.Generator().manual_seed(1)
    data = {"x": torch.randn(n, 3, generator=g), "y": torch.randn(n, 2, 2, generator=g)}
    mask = {"x": torch.arange(n) % 2 == 0, "y": torch.arange(n) % 3 != 0}
    ds = MultimodalDataset(data, mask)
    g_loop, g_ds = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(2):  # two epochs: the generators advance alike
        expected = list(iterate_minibatches(data, mask, batch_size=batch_size,
                                            generator=g_loop))
        got = list(ds.batches(batch_size, shuffle=True, generator=g_ds, drop_last=True))
        assert len(got) == len(expected) == n // batch_size
        for (d1, m1), (d2, m2) in zip(expected, got):
            assert d1.keys() == d2.keys() and m1.keys() == m2.keys()
            assert all(torch.equal(d1[m], d2[m]) for m in d1)
            assert all(torch.equal(m1[m], m2[m]) for m in m1)
    assert torch.equal(g_loop.get_state(), g_ds.get_state())


# --- indexing and to() -------------------------------------------------------------------------

def test_getitem_sub_datasets():
    info = {"rec": torch.arange(10) * 10, "names": [f"n{i}" for i in range(10)],
            "src": {"a": torch.arange(10), "b": np.arange(10) + 100}, "param": torch.ones(10, 3)}
    ds = _toy(labels=torch.arange(10), latents=torch.randn(10, 2), info=info, name="toy",
              path="/tmp/x", mask={"a": torch.arange(10) < 5, "b": torch.ones(10, dtype=bool)},
              item_info=("rec", "names", "src"))
    sub = ds[torch.tensor([3, 1])]
    assert isinstance(sub, MultimodalDataset) and len(sub) == 2 and sub.path is None
    assert sub.name == "toy" and sub.item_info == ds.item_info
    assert torch.equal(sub.data["b"], ds.data["b"][[3, 1]])
    assert torch.equal(sub.latents, ds.latents[[3, 1]]) and sub.labels.tolist() == [3, 1]
    assert sub.mask["a"].tolist() == [True, True] and sub.info["rec"].tolist() == [30, 10]
    assert sub.info["names"] == ["n3", "n1"] and sub.info["src"]["b"].tolist() == [103, 101]
    assert sub.info["param"] is info["param"]  # not a per-item record: shared as it is
    assert ds.info["names"][0] == "n0" and len(ds) == 10  # the original is unchanged
    one = ds[-1]
    assert len(one) == 1 and one.data["a"].shape == (1, 2) and one.labels.tolist() == [9]
    assert ds[2:8:2].labels.tolist() == [2, 4, 6]
    assert ds[[0, -1]].labels.tolist() == [0, 9]
    assert ds[np.array([4])].labels.tolist() == [4]
    assert ds[ds.labels >= 8].labels.tolist() == [8, 9]
    assert len(ds[torch.tensor([], dtype=torch.long)]) == 0 and len(ds[[]]) == 0
    with pytest.raises(IndexError):
        ds[10]
    with pytest.raises(IndexError):
        ds[[0, -11]]
    with pytest.raises(IndexError):
        ds[torch.tensor([0.5])]
    with pytest.raises(IndexError):
        ds[torch.ones(3, dtype=torch.bool)]


def test_to_converts_floating_tensors_only():
    ds = _toy(labels=torch.arange(10), latents=torch.randn(10, 2, dtype=torch.float32),
              info={"z": torch.randn(10, 2, dtype=torch.float32), "ids": torch.arange(10),
                    "note": "x"},
              item_info=("z", "ids"))
    out = ds.to("cpu", torch.float64)
    assert out is not ds and out.data["a"].dtype == torch.float64
    assert out.latents.dtype == torch.float64 and out.info["z"].dtype == torch.float64
    assert out.info["ids"].dtype == torch.long and out.info["note"] == "x"
    assert out.labels.dtype == torch.long and out.mask["a"].dtype == torch.bool
    assert ds.data["a"].dtype == torch.float32 and torch.equal(out.data["a"].float(), ds.data["a"])
    assert out.to(dtype=torch.float32).data["b"].dtype == torch.float32


# --- the library's datasets are all MultimodalDatasets ----------------------------------------

def test_linear_gaussian_simulations():
    for sim in (shared_latent_study(50, num_modalities=2, latent_dim=3, seed=1),
                private_latent_study(40, num_modalities=2, shared_dim=2, private_dim=1,
                                     dim_range=(4, 6), seed=0),
                illustrative_bimodal(30, seed=0, dtype=torch.float64)):
        assert isinstance(sim, LinearGaussianData) and isinstance(sim, MultimodalDataset)
        assert sim.weights is sim.info["weights"] and sim.biases is sim.info["biases"]
        assert sim.noise_scales is sim.info["noise_scales"] and sim.latents.shape[0] == len(sim)
        assert sim.modality_dims == {m: x.shape[1] for m, x in sim.data.items()}
        assert all(k.all() for k in sim.mask.values()) and sim.name
        for m, x in sim.data.items():
            assert sim.weights[m].shape == (x.shape[1], sim.latents.shape[1])
            assert sim.weights[m].dtype == x.dtype == sim.latents.dtype
    assert illustrative_bimodal(30, seed=0, dtype=torch.float64).data["less_noisy"].dtype \
        == torch.float64
    sub = sim[:5]
    assert isinstance(sub, LinearGaussianData) and sub.weights is sim.weights
    assert sim.to(dtype=torch.float32).weights["less_noisy"].dtype == torch.float32


def test_identifiable_simulations():
    ds = bimodal_label_study(num_labels=3, per_label=10, seed=0)
    assert isinstance(ds, MultimodalDataset) and IdentifiableData is MultimodalDataset
    assert ds.latents.shape == (30, 2) and ds.labels.shape == (30,)
    train, test = multimodal_missing_study(num_modalities=3, num_labels=2, per_label=20,
                                           latent_dim=2, modality_dim=4, seed=0)
    assert (train.split, test.split) == ("train", "test") and len(train) == len(test) == 20
    assert not all(k.all() for k in train.mask.values())
    assert train.latents.shape == (20, 2) and train.labels.shape == (20,)


def test_other_builders(tmp_path):
    built = [eight_gaussians(20), ambiguous_gaussians(3), digit_sources("qu", "test"),
             pendulum(num_points=5, image_size=8), procedural_shapes(20),
             digit_images("test")]
    a, b = ConditionalVAE(), ConditionalVAE()
    e = correlated_pairs(a, b, 12, seed=0)
    built += [e, within_class_shuffle(e, seed=1),
              class_pairing(torch.rand(6, 2), [0, 1, 0, 1, 0, 1], torch.rand(4, 3), [1, 0, 1, 0],
                            8, seed=0)]
    built.append(poly_digits(tmp_path, "test", image_size=8, num_tuples=12))
    for ds in built:
        assert isinstance(ds, MultimodalDataset) and ds.labels is not None
        data, mask, labels = next(ds.batches(4, with_labels=True))
        assert labels.shape == (4,) and all(mask[m].shape == (4,) for m in ds.modalities)
    assert torch.equal(e.latents, e.info["z"]) and "z" in e.item_info
    assert torch.equal(e[3:5].latents, e.latents[3:5])
    poly = built[-1]
    assert poly.path.parent == tmp_path and set(poly.source_index) == set(poly.modalities)
    assert torch.equal(poly[2:4].source_index["m3"], poly.source_index["m3"][2:4])
    assert digits_module.MultimodalDataset is dataset_module.MultimodalDataset


# --- the lazy real-data dataset ----------------------------------------------------------------

def _write_idx(path, array):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    path.write_bytes(struct.pack(">I", 0x0800 + array.ndim)
                     + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes())


def test_real_dataset_is_a_lazy_multimodal_dataset(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte",
                   rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(12) % 3)
    ds = mnist(tmp_path)
    assert isinstance(ds, MultimodalDataset) and "paired=False" in repr(ds)
    assert ds.modality_shapes == {"mnist": (1, 28, 28)} and "data" not in vars(ds)

    # a paired RealDataset: its batches are the base class's, read through the index
    sources = {"x": torch.randint(0, 256, (5, 2, 3), dtype=torch.uint8), "t": torch.eye(4)}
    index = {"x": torch.tensor([0, 4, 4, 1, 2, 3, 0]), "t": torch.tensor([3, 2, 1, 0, 0, 1, 2])}
    lazy = RealDataset(sources, torch.arange(7), index=index, dtype=torch.float64)
    assert type(lazy).batches is MultimodalDataset.batches
    eager = MultimodalDataset(lazy.data, lazy.mask, lazy.labels)
    assert lazy.data["x"].dtype == torch.float64
    assert torch.equal(lazy.data["x"], sources["x"][index["x"]].double() / 255)
    for (d1, m1, l1), (d2, m2, l2) in zip(
            lazy.batches(3, generator=torch.Generator().manual_seed(2), with_labels=True),
            eager.batches(3, generator=torch.Generator().manual_seed(2), with_labels=True)):
        assert all(torch.equal(d1[m], d2[m]) for m in d2) and torch.equal(l1, l2)
        assert all(torch.equal(m1[m], m2[m]) for m in m2)
    sub = lazy[[6, 1]]
    assert isinstance(sub, RealDataset) and "data" not in vars(sub)
    assert sub.index["x"].tolist() == [0, 4] and sub.sources["x"] is sources["x"]
    assert torch.equal(sub.data["t"], torch.eye(4, dtype=torch.float64)[[2, 2]])
    whole = RealDataset.fully_observed({"t": torch.eye(3)}, [0, 1, 2], "toy")
    assert isinstance(whole, RealDataset) and whole.index is None and whole.mask["t"].all()
    moved = lazy.to("cpu", torch.float32)
    assert moved.sources["x"].dtype == torch.uint8 and moved.data["x"].dtype == torch.float32
    with pytest.raises(ValueError, match="modality 't' has no index"):
        RealDataset(sources, torch.arange(7), index={"x": index["x"]})
    with pytest.raises(ValueError, match="modality 't' has 5 items but modality 'x' has 7"):
        RealDataset(sources, torch.arange(7), index={"x": index["x"], "t": torch.arange(5)})
