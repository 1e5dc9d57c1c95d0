import hashlib
import os

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from pyro_mmvae.data import digits
from pyro_mmvae.data.digits import (DIGIT_WORDS, POLY_MODALITIES, TEXT_ALPHABET, MultimodalDataset,
                                    decode_text, digit_text, digits_svhn_text, encode_text,
                                    load_digits_svhn_text, load_poly_digits, poly_backgrounds,
                                    poly_digits, split_indices)

TARGET = load_digits().target


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def strip(strings):
    return [s.strip() for s in strings]


# --- text ------------------------------------------------------------------------------------

def test_alphabet_is_mopoes_71_symbols():
    assert len(TEXT_ALPHABET) == 71
    assert TEXT_ALPHABET[:36] == "abcdefghijklmnopqrstuvwxyz0123456789"
    assert TEXT_ALPHABET[69:] == " \n"
    assert [i for i, c in enumerate(TEXT_ALPHABET) if c == "-"] == [36, 59]


def test_encode_decode_round_trip_and_errors():
    x = encode_text(["seven", " one", "a-b"])
    assert x.shape == (3, 8, 71) and x.dtype == torch.float32
    assert torch.equal(x.sum(-1), torch.ones(3, 8))
    assert x[2, 1].argmax() == 36  # the first "-"
    assert strip(decode_text(x)) == ["seven", "one", "a-b"]
    assert decode_text(x)[1] == " one    "
    assert encode_text("two").shape == (1, 8, 71)
    assert strip(decode_text(torch.randn(2, 8, 71) + 10 * x[:2])) == ["seven", "one"]  # logits
    with pytest.raises(ValueError, match="'é'"):
        encode_text(["café"])
    with pytest.raises(ValueError, match=r"\(N, L, 71\)"):
        decode_text(x[0, 0])


def test_digit_text_random_offsets_follow_mopoe():
    labels = torch.arange(10).repeat(100)
    x = digit_text(labels, generator=torch.Generator().manual_seed(0))
    assert x.shape == (1000, 8, 71)
    assert strip(decode_text(x)) == [DIGIT_WORDS[c] for c in labels.tolist()]
    space = TEXT_ALPHABET.index(" ")
    start = (x.argmax(-1) != space).float().argmax(-1)  # first non-space position
    lens = torch.tensor([len(w) for w in DIGIT_WORDS])[labels]
    assert (start <= 8 - 1 - lens).all()  # randint(0, 8 - 1 - len) inclusive
    for c in range(10):  # every allowed offset occurs
        assert set(start[labels == c].tolist()) == set(range(8 - len(DIGIT_WORDS[c])))


# --- split -------------------------------------------------------------------------------------

def test_split_is_stratified_and_disjoint():
    train, test = split_indices("train"), split_indices("test")
    assert len(train) + len(test) == 1797 and len(np.intersect1d(train, test)) == 0
    frac = np.bincount(TARGET[test], minlength=10) / np.bincount(TARGET, minlength=10)
    assert np.allclose(frac, 0.2, atol=0.01)


# --- PolyDigits -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def poly(tmp_path_factory):
    root = tmp_path_factory.mktemp("poly")
    return load_poly_digits(root, num_train=300, num_test=100)


def test_poly_digits_shapes_ranges_and_labels(poly):
    train, test = poly
    assert (len(train), len(test)) == (300, 100)
    assert train.modalities == POLY_MODALITIES
    for ds, split in ((train, "train"), (test, "test")):
        assert ds.labels.dtype == torch.long and ds.labels.shape == (len(ds),)
        for m in POLY_MODALITIES:
            x = ds.data[m]
            assert x.shape == (len(ds), 3, 16, 16) and x.dtype == torch.float32
            assert 0 <= x.min() and x.max() <= 1
            assert ds.mask[m].dtype == torch.bool and ds.mask[m].all()
            # every modality's digit has the tuple's label and comes from the split's digits
            src = ds.source_index[m].numpy()
            assert np.array_equal(TARGET[src], ds.labels.numpy())
            assert np.isin(src, split_indices(split)).all()
    # digits are drawn independently per modality
    assert (train.source_index["m0"] != train.source_index["m1"]).float().mean() > 0.9
    # train and test share no underlying digit
    used = {s: np.concatenate([d.source_index[m].numpy() for m in POLY_MODALITIES])
            for s, d in (("train", train), ("test", test))}
    assert len(np.intersect1d(used["train"], used["test"])) == 0
    assert set(train.labels.tolist()) == set(range(10))


@pytest.mark.slow
def test_poly_digits_inverts_the_background_crop_where_the_digit_is(poly):
    train = poly[0]
    backgrounds = poly_backgrounds(16)
    assert backgrounds.shape == (5, 107, 160, 3)
    glyphs = digits._glyphs(16) > 0.5
    for mi, m in enumerate(POLY_MODALITIES):
        bg = torch.from_numpy(backgrounds[mi]).permute(2, 0, 1)  # (3, Hb, Wb)
        windows = bg.unfold(1, 16, 1).unfold(2, 16, 1)  # (3, Hb-15, Wb-15, 16, 16)
        for i in range(2):
            on = torch.from_numpy(glyphs[train.source_index[m][i]])
            x = train.data[m][i].double()
            undone = torch.where(on, 1 - x, x)  # undo the inversion: the plain crop
            err = (windows - undone[:, None, None]).abs().amax(dim=(0, 3, 4))
            assert err.min() <= 0.5 / 255 + 1e-6, (m, i)  # a crop of modality m's background
    flat = torch.from_numpy(backgrounds).flatten(1)  # five distinct backgrounds
    assert (torch.cdist(flat, flat) / flat.shape[1] ** 0.5 + torch.eye(5)).min() > 0.1


def test_poly_digits_same_bytes_every_time_and_seed_matters(tmp_path, poly):
    a = poly_digits(tmp_path / "a", "test", num_tuples=100)
    b = poly_digits(tmp_path / "b", "test", num_tuples=100)
    assert a.path.name == "polydigits-v1-test-16px-n100-seed0.npz"
    assert _sha(a.path) == _sha(b.path) == _sha(poly[1].path)
    for m in POLY_MODALITIES:
        assert torch.equal(a.data[m], b.data[m])
    c = poly_digits(tmp_path / "a", "test", num_tuples=100, seed=1)
    assert c.path != a.path and not torch.equal(a.data["m0"], c.data["m0"])
    assert not torch.equal(a.source_index["m0"], c.source_index["m0"])
    assert set(os.listdir(tmp_path / "a")) == {a.path.name, c.path.name}  # no temp files left


def test_cached_file_is_loaded_not_regenerated(tmp_path, monkeypatch):
    first = poly_digits(tmp_path, "test", num_tuples=40)
    mtime = first.path.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated")

    monkeypatch.setattr(digits, "_build_poly_digits", fail)
    monkeypatch.setattr(digits, "_build_digits_svhn_text", fail)
    second = poly_digits(tmp_path, "test", num_tuples=40)
    assert first.path.stat().st_mtime_ns == mtime
    assert all(torch.equal(first.data[m], second.data[m]) for m in POLY_MODALITIES)
    with pytest.raises(AssertionError, match="regenerated"):  # a new parameter set builds
        poly_digits(tmp_path, "test", num_tuples=41)
    # a file whose contents do not match its name is reported, not silently used
    os.replace(first.path, tmp_path / "polydigits-v1-test-16px-n40-seed5.npz")
    with pytest.raises(ValueError, match="delete it to regenerate"):
        poly_digits(tmp_path, "test", num_tuples=40, seed=5)
    (tmp_path / "polydigits-v1-test-16px-n40-seed6.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="unreadable.*delete it to regenerate"):
        poly_digits(tmp_path, "test", num_tuples=40, seed=6)


def test_root_defaults_to_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_MMVAE_DATA", str(tmp_path / "env"))
    assert digits.default_root() == tmp_path / "env"
    ds = poly_digits(split="test", num_tuples=10, image_size=12, dtype=torch.float64)
    assert ds.path.parent == tmp_path / "env"
    assert ds.data["m3"].shape == (10, 3, 12, 12) and ds.data["m3"].dtype == torch.float64
    monkeypatch.delenv("PYRO_MMVAE_DATA")
    assert digits.default_root() == digits.Path.home() / ".cache" / "pyro_mmvae"


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="val"), "split must be 'train' or 'test'"),
    (dict(image_size=4), "image_size must be an integer >= 8"),
    (dict(num_tuples=0), "num_tuples must be an integer >= 1"),
    (dict(seed=-1), "seed must be an integer >= 0"),
])
def test_poly_digits_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        poly_digits(tmp_path, **kwargs)


# --- DigitsSVHNText --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dst(tmp_path_factory):
    return load_digits_svhn_text(tmp_path_factory.mktemp("dst"), pairs_per_digit=2)


def test_digits_svhn_text_shapes_pairing_and_split(dst):
    train, test = dst
    assert (len(train), len(test)) == (2 * 1438, 2 * 359)
    assert train.modalities == ("mnist", "svhn", "text")
    for ds, split in ((train, "train"), (test, "test")):
        n = len(ds)
        assert ds.data["mnist"].shape == (n, 1, 16, 16)
        assert ds.data["svhn"].shape == (n, 3, 16, 16)
        assert ds.data["text"].shape == (n, 8, 71)
        for x in ds.data.values():
            assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        assert torch.equal(ds.data["text"].sum(-1), torch.ones(n, 8))
        assert all(mk.all() for mk in ds.mask.values())
        mnist, svhn = ds.source_index["mnist"].numpy(), ds.source_index["svhn"].numpy()
        # same class, different underlying digit
        assert np.array_equal(TARGET[mnist], ds.labels.numpy())
        assert np.array_equal(TARGET[svhn], ds.labels.numpy())
        assert (mnist != svhn).all()
        # each digit is paired pairs_per_digit times in each image modality
        pool = split_indices(split)
        assert np.array_equal(np.bincount(mnist, minlength=1797)[pool], np.full(len(pool), 2))
        assert np.array_equal(np.bincount(svhn, minlength=1797)[pool], np.full(len(pool), 2))
        distractors = ds.info["svhn_distractors"].numpy()
        assert np.isin(distractors[distractors >= 0], pool).all()
        assert 0.6 < (distractors >= 0).mean() < 0.9
    used = [np.concatenate([d.source_index["mnist"].numpy(), d.source_index["svhn"].numpy(),
                            d.info["svhn_distractors"].numpy().ravel()]) for d in dst]
    assert set(used[0]) & set(used[1]) <= {-1}  # train and test share no digit


def test_digits_svhn_text_text_and_mnist_content(dst):
    train = dst[0]
    words = [DIGIT_WORDS[c] for c in train.labels.tolist()]
    raw = decode_text(train.data["text"])
    assert strip(raw) == words
    offsets = train.info["text_offset"].tolist()
    assert all(r.index(w) == o and o <= 8 - 1 - len(w) for r, w, o in zip(raw, words, offsets))
    # "mnist" is the upsampled grey digit itself
    glyphs = torch.from_numpy(digits._glyphs(16))
    expected = glyphs[train.source_index["mnist"][:50]].float()
    assert (train.data["mnist"][:50, 0] - expected).abs().max() <= 0.5 / 255 + 1e-6
    # "svhn" is colourful and noisy: channels differ and neighbouring pixels vary
    svhn = train.data["svhn"]
    assert (svhn[:, 0] - svhn[:, 1]).abs().mean() > 0.05
    assert svhn.std() > 0.15


def test_digits_svhn_text_deterministic_bytes_and_seed(tmp_path, dst):
    a = digits_svhn_text(tmp_path / "a", "test", pairs_per_digit=2)
    b = digits_svhn_text(tmp_path / "b", "test", pairs_per_digit=2)
    assert a.path.name == "digitssvhntext-v1-test-16px-x2-seed0.npz"
    assert _sha(a.path) == _sha(b.path) == _sha(dst[1].path)
    c = digits_svhn_text(tmp_path / "a", "test", pairs_per_digit=2, seed=3)
    assert not torch.equal(a.data["svhn"], c.data["svhn"])
    assert not torch.equal(a.source_index["svhn"], c.source_index["svhn"])
    d = digits_svhn_text(tmp_path / "a", "test", pairs_per_digit=1, image_size=20)
    assert d.data["svhn"].shape == (359, 3, 20, 20) and d.data["mnist"].shape == (359, 1, 20, 20)
    with pytest.raises(ValueError, match="pairs_per_digit must be an integer >= 1"):
        digits_svhn_text(tmp_path, pairs_per_digit=0)


# --- the dataset object ----------------------------------------------------------------------

def test_batches_cover_the_data_once(poly):
    test = poly[1]
    seen = []
    for data, mask, labels in test.batches(32, generator=torch.Generator().manual_seed(0),
                                           with_labels=True):
        assert set(data) == set(mask) == set(POLY_MODALITIES)
        assert data["m2"].shape[1:] == (3, 16, 16) and mask["m2"].shape == labels.shape
        seen.append(labels)
    assert [len(s) for s in seen] == [32, 32, 32, 4]
    assert torch.equal(torch.cat(seen).sort().values, test.labels.sort().values)
    again = [d["m0"] for d, _ in test.batches(32, generator=torch.Generator().manual_seed(0))]
    first = next(test.batches(32, generator=torch.Generator().manual_seed(0)))[0]["m0"]
    assert torch.equal(again[0], first)
    assert [len(d["m0"]) for d, _ in test.batches(32, drop_last=True)] == [32, 32, 32]
    ordered = next(test.batches(100, shuffle=False))[0]
    assert torch.equal(ordered["m4"], test.data["m4"])
    with pytest.raises(ValueError, match="batch_size"):
        next(test.batches(0))


def test_indexing_and_to(poly):
    test = poly[1]
    sub = test[torch.arange(5)]
    assert isinstance(sub, MultimodalDataset) and len(sub) == 5 and sub.path is None
    assert torch.equal(sub.source_index["m1"], test.source_index["m1"][:5])
    assert len(test[-1]) == 1 and torch.equal(test[-1].labels, test.labels[-1:])
    with pytest.raises(IndexError):
        test[100]
    doubled = test.to("cpu", torch.float64)
    assert doubled.data["m0"].dtype == torch.float64 and doubled.labels.dtype == torch.long
