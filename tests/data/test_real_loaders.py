"""Real-dataset loaders on tiny files written in the real formats (IDX, MATLAB v5, PNG, JPEG
plus the CelebA annotation lists); nothing is downloaded (sockets are blocked here)."""

import gzip
import re
import socket
import struct

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from pyro_mmvae.data import MultimodalDataset
from pyro_mmvae.data.real import (CELEBA_ATTRIBUTES, DatasetFormatError, DatasetNotFoundError,
                                  RealDataset, celeba, mnist, mnist_svhn, polymnist, svhn)
from pyro_mmvae.data.text import ALPHABET, DIGIT_WORDS, decode_text, digit_text, encode_text


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a loader tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _in_message(path):
    return re.escape(str(path))


# --- writers for the real formats --------------------------------------------------------------

def write_idx(path, array, gz=False):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    blob = (struct.pack(">I", 0x0800 + array.ndim)
            + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def make_mnist(root, train_labels, test_labels=(0, 1, 2, 3), gz=False, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    out = {}
    for prefix, labels in (("train", train_labels), ("t10k", test_labels)):
        labels = np.asarray(labels, dtype=np.uint8)
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz)
        out[prefix] = (images, labels)
    return out


def make_svhn(folder, labels, split="train", seed=1):
    """SVHN .mat: X (32, 32, 3, N) uint8, y (N, 1) with 10 for the digit 0."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    x = rng.integers(0, 256, size=(32, 32, 3, len(labels)), dtype=np.uint8)
    y = np.where(labels == 0, 10, labels).reshape(-1, 1).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(folder / f"{split}_32x32.mat"), {"X": x, "y": y})
    return x, labels


# --- text ---------------------------------------------------------------------------------------

def test_alphabet_is_mopoe_order():
    assert len(ALPHABET) == 71
    assert ALPHABET[:36] == "abcdefghijklmnopqrstuvwxyz0123456789"
    assert ALPHABET[-2:] == " \n"
    assert ALPHABET.index("-") == 36 and ALPHABET.rindex("-") == 59


def test_encode_decode_round_trip():
    x = encode_text(["  seven ", "Zero", "a-b"], 8)
    assert x.shape == (3, 8, 71) and x.dtype == torch.float32
    assert torch.equal(x.sum(-1), torch.ones(3, 8))  # padded with spaces: every row one-hot
    assert decode_text(x) == ["  seven ", "zero    ", "a-b     "]
    assert decode_text(x[0]) == "  seven "
    assert x[2, 1].argmax() == 36  # the first "-", as str.find
    assert decode_text(encode_text("toolongstring", 4))[0] == "tool"
    with pytest.raises(ValueError, match="'é'"):
        encode_text(["café"], 8)


def test_digit_text_offsets():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat(20)
    strings = digit_text(labels, 8, generator=g)
    starts = set()
    for label, s in zip(labels.tolist(), strings):
        word = DIGIT_WORDS[label]
        assert len(s) == 8 and s.strip() == word
        start = s.index(word)
        assert 0 <= start <= 8 - 1 - len(word)
        starts.add((label, start))
    assert (3, 2) in starts and (1, 4) in starts  # the extreme offsets are reachable
    with pytest.raises(ValueError, match="too short"):
        digit_text([3], 5)


# --- MNIST --------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_exactly(tmp_path, gz):
    written = make_mnist(tmp_path, list(range(10)) * 2, gz=gz)
    for train, prefix in ((True, "train"), (False, "t10k")):
        ds = mnist(tmp_path, train=train)
        images, labels = written[prefix]
        assert isinstance(ds, RealDataset) and isinstance(ds, MultimodalDataset)
        assert ds.modalities == ("mnist",) and ds.name == "mnist"
        assert ds.split == ("train" if train else "test") and ds.path == tmp_path
        x = ds.data["mnist"]
        assert x.shape == (len(labels), 1, 28, 28) and x.dtype == torch.float32
        assert torch.equal(x, torch.from_numpy(images).float().unsqueeze(1) / 255)
        assert torch.equal(ds.labels, torch.from_numpy(labels).long())
        assert ds.labels.dtype == torch.long
        assert ds.mask["mnist"].dtype == torch.bool and ds.mask["mnist"].all()
        assert len(ds) == len(labels)


def test_mnist_legacy_processed_file(tmp_path):
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    labels = torch.tensor([3, 1, 4, 1, 5])
    (tmp_path / "MNIST" / "processed").mkdir(parents=True)
    torch.save((images, labels), tmp_path / "MNIST" / "processed" / "training.pt")
    ds = mnist(tmp_path)
    assert torch.equal(ds.data["mnist"], images.float().unsqueeze(1) / 255)
    assert torch.equal(ds.labels, labels)


def test_mnist_missing_file_names_path(tmp_path):
    with pytest.raises(DatasetNotFoundError,
                       match=_in_message(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte")
                       ) as err:
        mnist(tmp_path)
    assert isinstance(err.value, FileNotFoundError)
    assert "never downloads" in str(err.value) and "download=True" in str(err.value)
    make_mnist(tmp_path, [0, 1])
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError,
                       match=_in_message(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte")):
        mnist(tmp_path, train=False)


def test_mnist_malformed_files(tmp_path):
    make_mnist(tmp_path, list(range(10)))
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    blob = path.read_bytes()
    path.write_bytes(blob[:-100])
    with pytest.raises(DatasetFormatError, match=_in_message(path) + ".*truncated"):
        mnist(tmp_path)
    path.write_bytes(struct.pack(">I", 0x0801) + blob[4:])  # a labels magic number
    with pytest.raises(DatasetFormatError, match="magic number 0x00000801, expected 0x00000803"):
        mnist(tmp_path)
    path.write_bytes(blob)
    write_idx(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte", np.zeros(7))
    with pytest.raises(DatasetFormatError, match="10 images but .* 7 labels"):
        mnist(tmp_path)


def test_mnist_truncated_gzip(tmp_path):
    make_mnist(tmp_path, list(range(10)), gz=True)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DatasetFormatError, match=_in_message(path)):
        mnist(tmp_path)


# --- SVHN ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("subdir", ["", "SVHN"])
def test_svhn_reads_mat_exactly(tmp_path, subdir):
    labels = [0, 1, 2, 9, 0, 5]
    x, _ = make_svhn(tmp_path / subdir if subdir else tmp_path, labels, split="test")
    ds = svhn(tmp_path, split="test")
    assert ds.data["svhn"].shape == (6, 3, 32, 32) and ds.data["svhn"].dtype == torch.float32
    expected = torch.from_numpy(x).permute(3, 2, 0, 1).float() / 255  # (N, C, H, W)
    assert torch.equal(ds.data["svhn"], expected)
    assert ds.data["svhn"][1, 2, 5, 7] == x[5, 7, 2, 1] / 255  # one pixel, by hand
    assert ds.labels.tolist() == labels  # 10 read back as 0
    assert ds.mask["svhn"].all()


def test_svhn_missing_and_malformed(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=_in_message(tmp_path / "train_32x32.mat")
                       ) as err:
        svhn(tmp_path)
    assert "ufldl.stanford.edu" in str(err.value)
    with pytest.raises(ValueError, match="split"):
        svhn(tmp_path, split="validation")
    (tmp_path / "train_32x32.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(DatasetFormatError, match=_in_message(tmp_path / "train_32x32.mat")):
        svhn(tmp_path)
    scipy.io.savemat(str(tmp_path / "train_32x32.mat"),
                     {"X": np.zeros((32, 32, 3, 2), np.uint8)})
    with pytest.raises(DatasetFormatError, match="'X' and 'y'"):
        svhn(tmp_path)
    scipy.io.savemat(str(tmp_path / "train_32x32.mat"),
                     {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))})
    with pytest.raises(DatasetFormatError, match="2 images in 'X' but 3 labels"):
        svhn(tmp_path)


# --- MNIST-SVHN(-Text) --------------------------------------------------------------------------

MNIST_LABELS = [0, 1, 2, 0, 1, 2, 0, 1, 0, 3]  # per class: 4, 3, 2, 1
SVHN_LABELS = [1, 0, 0, 2, 2, 2, 1, 1, 1, 0, 4]  # per class: 3, 4, 3, 0 (+ a 4 MNIST lacks)


@pytest.fixture
def ms_root(tmp_path):
    written = make_mnist(tmp_path, MNIST_LABELS)
    x, _ = make_svhn(tmp_path, SVHN_LABELS)
    return tmp_path, written["train"][0], x


def test_mnist_svhn_pairing(ms_root):
    root, m_images, s_x = ms_root
    dm = 3
    ds = mnist_svhn(root, pairs_per_digit=dm, seed=0)
    assert ds.modalities == ("mnist", "svhn") and ds.info["pairing"] == "generated"
    # n_l = min(#MNIST_l, #SVHN_l): class 0 -> 3, 1 -> 3, 2 -> 2, 3 -> 0.
    assert len(ds) == dm * (3 + 3 + 2)
    m_idx, s_idx = ds.index["mnist"], ds.index["svhn"]
    m_labels, s_labels = torch.tensor(MNIST_LABELS), torch.tensor(SVHN_LABELS)
    assert torch.equal(m_labels[m_idx], s_labels[s_idx])
    assert torch.equal(ds.labels, m_labels[m_idx])
    # The data rows are the indexed images, exactly.
    assert torch.equal(ds.data["mnist"], torch.from_numpy(m_images)[m_idx].float()[:, None] / 255)
    s_all = torch.from_numpy(s_x).permute(3, 2, 0, 1).float() / 255
    assert torch.equal(ds.data["svhn"], s_all[s_idx])
    # Each of the first n_l images of a class (in file order) is in exactly dm pairs.
    for label, n in ((0, 3), (1, 3), (2, 2)):
        first_m = torch.nonzero(m_labels == label).flatten()[:n]
        first_s = torch.nonzero(s_labels == label).flatten()[:n]
        for i in first_m.tolist():
            assert (m_idx == i).sum() == dm
        for i in first_s.tolist():
            assert (s_idx == i).sum() == dm
    assert not (m_idx == 8).any()  # the 4th zero of MNIST is beyond n_0 = 3
    # Seeded.
    again = mnist_svhn(root, pairs_per_digit=dm, seed=0)
    other = mnist_svhn(root, pairs_per_digit=dm, seed=1)
    assert torch.equal(again.index["svhn"], s_idx)
    assert not torch.equal(other.index["svhn"], s_idx) or not torch.equal(
        other.index["mnist"], m_idx)
    capped = mnist_svhn(root, pairs_per_digit=2, max_per_class=1)
    assert len(capped) == 2 * 3


def test_mnist_svhn_text(ms_root):
    root, _, _ = ms_root
    ds = mnist_svhn(root, pairs_per_digit=20, text=True, seed=0)
    text = ds.data["text"]
    assert text.shape == (len(ds), 8, 71) and text.dtype == torch.float32
    assert torch.equal(text.sum(-1), torch.ones(len(ds), 8))
    starts = set()
    for label, s in zip(ds.labels.tolist(), decode_text(text)):
        word = DIGIT_WORDS[label]
        assert s.strip() == word and len(s) == 8
        assert 0 <= s.index(word) <= 8 - 1 - len(word)
        starts.add((label, s.index(word)))
    assert {(0, k) for k in range(4)} <= starts  # all offsets of "zero" are drawn
    # A sub-dataset (still lazy) agrees with the materialised data.
    sub = ds[torch.tensor([0, 5, 7])]
    assert isinstance(sub, RealDataset) and "data" not in vars(sub)
    for m in ds.modalities:
        assert torch.equal(sub.data[m], ds.data[m][[0, 5, 7]]) and sub.mask[m].shape == (3,)
    assert torch.equal(sub.labels, ds.labels[[0, 5, 7]])


def test_mnist_svhn_reads_index_files(ms_root):
    root, _, _ = ms_root
    s_idx = torch.tensor([1, 2, 0, 5])  # SVHN labels 0, 0, 1, 2
    with pytest.raises(DatasetFormatError, match="do not pair.*pair 3: MNIST 9 is a 3, SVHN 5 a 2"):
        torch.save(torch.tensor([0, 3, 1, 9]), root / "train-ms-mnist-idx.pt")
        torch.save(s_idx, root / "train-ms-svhn-idx.pt")
        mnist_svhn(root)
    m_idx = torch.tensor([0, 3, 1, 2])  # labels 0, 0, 1, 2
    torch.save(m_idx, root / "train-ms-mnist-idx.pt")
    ds = mnist_svhn(root, pairs_per_digit=7, seed=3)
    assert ds.info["pairing"] == "files"
    assert torch.equal(ds.index["mnist"], m_idx) and torch.equal(ds.index["svhn"], s_idx)
    assert ds.labels.tolist() == [0, 0, 1, 2]
    assert len(mnist_svhn(root, pairs_per_digit=1, use_index_files=False)) == 3 + 3 + 2
    torch.save(torch.tensor([0, 99]), root / "train-ms-mnist-idx.pt")
    with pytest.raises(DatasetFormatError, match="indices outside 0..9"):
        mnist_svhn(root)
    (root / "train-ms-svhn-idx.pt").unlink()
    with pytest.raises(DatasetNotFoundError, match=_in_message(root / "train-ms-svhn-idx.pt")):
        mnist_svhn(root)


def test_mnist_svhn_missing_svhn(tmp_path):
    make_mnist(tmp_path, MNIST_LABELS)
    with pytest.raises(DatasetNotFoundError, match=_in_message(tmp_path / "test_32x32.mat")):
        mnist_svhn(tmp_path, train=False)


# --- PolyMNIST ----------------------------------------------------------------------------------

def make_polymnist(root, split="train", num_modalities=3, per_digit=2, digits=(0, 1, 2, 3),
                   seed=0):
    rng = np.random.default_rng(seed)
    written = {}
    for k in range(num_modalities):
        folder = root / split / f"m{k}"
        folder.mkdir(parents=True)
        for digit in digits:
            for i in range(per_digit):
                pixels = rng.integers(0, 256, size=(28, 28, 3), dtype=np.uint8)
                Image.fromarray(pixels, mode="RGB").save(folder / f"{i}.{digit}.png")
                written[(f"m{k}", i, digit)] = pixels
    return written


def test_polymnist_reads_pngs_exactly(tmp_path):
    written = make_polymnist(tmp_path, num_modalities=3)
    ds = polymnist(tmp_path, num_modalities=3)
    assert ds.modalities == ("m0", "m1", "m2") and len(ds) == 8
    # Ordered by (index, label): digits interleave.
    assert ds.info["files"][:5] == ["0.0.png", "0.1.png", "0.2.png", "0.3.png", "1.0.png"]
    assert ds.labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    for n, name in enumerate(ds.info["files"]):
        i, digit = map(int, name.split(".")[:2])
        for m in ds.modalities:
            x = ds.data[m][n]
            assert x.shape == (3, 28, 28) and x.dtype == torch.float32
            expected = torch.from_numpy(written[(m, i, digit)]).permute(2, 0, 1).float() / 255
            assert torch.equal(x, expected)
    assert all(ds.mask[m].all() for m in ds.modalities)
    few = polymnist(tmp_path, num_modalities=2, limit=4)
    assert few.modalities == ("m0", "m1") and few.labels.tolist() == [0, 1, 2, 3]
    assert few[1:3].info["files"] == ["0.1.png", "0.2.png"]  # a per-item record


def test_polymnist_nested_folder_and_test_split(tmp_path):
    make_polymnist(tmp_path / "PolyMNIST", split="test", num_modalities=1, per_digit=1)
    ds = polymnist(tmp_path, train=False, num_modalities=1)
    assert len(ds) == 4


def test_polymnist_missing_and_malformed(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=_in_message(tmp_path / "train" / "m0")) as err:
        polymnist(tmp_path)
    assert "thomassutter/MoPoE" in str(err.value)
    make_polymnist(tmp_path, num_modalities=2)
    with pytest.raises(DatasetNotFoundError, match=_in_message(tmp_path / "train" / "m2")):
        polymnist(tmp_path, num_modalities=3)
    (tmp_path / "train" / "m1" / "1.2.png").unlink()
    with pytest.raises(DatasetFormatError,
                       match=_in_message(tmp_path / "train" / "m1" / "1.2.png") + " is missing"):
        polymnist(tmp_path, num_modalities=2)
    (tmp_path / "train" / "m0" / "1.2.png").unlink()
    (tmp_path / "train" / "m0" / "1.3.png").write_bytes(b"\x89PNG truncated")
    bad = tmp_path / "train" / "m0" / "1.3.png"
    with pytest.raises(DatasetFormatError, match=_in_message(bad)):
        polymnist(tmp_path, num_modalities=2)
    (tmp_path / "train" / "m0" / "1.3.png").unlink()
    (tmp_path / "train" / "m1" / "1.3.png").unlink()
    for k in range(2):
        (tmp_path / "train" / f"m{k}" / "0.0.png").rename(tmp_path / "train" / f"m{k}" / "img0.png")
    with pytest.raises(DatasetFormatError, match=r"not \{index\}\.\{label\}\.png"):
        polymnist(tmp_path, num_modalities=2)


# --- CelebA -------------------------------------------------------------------------------------

def make_celeba(root, partitions=(0, 0, 0, 1, 2, 0), size=(20, 24), seed=0):
    """Images (W, H) = size as JPEGs plus the two annotation lists in their .txt formats."""
    rng = np.random.default_rng(seed)
    base = root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(partitions))]
    attrs = rng.choice([-1, 1], size=(len(names), 40))
    for name in names:
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels, mode="RGB").save(base / "img_align_celeba" / name, quality=90)
    lines = [str(len(names)), " ".join(CELEBA_ATTRIBUTES) + " "]
    lines += [name + " " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, attrs)]
    (base / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (base / "list_eval_partition.txt").write_text(
        "".join(f"{name} {p}\n" for name, p in zip(names, partitions)))
    return names, attrs


def _decoded(path):
    with Image.open(path) as img:
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)


def test_celeba_reads_images_and_attributes(tmp_path):
    names, attrs = make_celeba(tmp_path)
    img_dir = tmp_path / "celeba" / "img_align_celeba"
    ds = celeba(tmp_path, split="train", image_size=None, center_crop=None)
    assert ds.modalities == ("image", "attributes") and len(ds) == 4
    assert ds.info["files"] == [names[i] for i in (0, 1, 2, 5)]
    assert ds.info["attribute_names"] == list(CELEBA_ATTRIBUTES)
    for n, name in enumerate(ds.info["files"]):
        assert torch.equal(ds.data["image"][n], _decoded(img_dir / name).float() / 255)
    expected = torch.from_numpy((attrs[[0, 1, 2, 5]] > 0).astype(np.int64))
    assert torch.equal(ds.labels, expected)
    assert torch.equal(ds.data["attributes"], expected.float())
    assert ds.data["attributes"].dtype == torch.float32
    assert all(ds.mask[m].all() for m in ds.modalities)
    assert celeba(tmp_path, split="valid", image_size=None, center_crop=None
                  ).info["files"] == [names[3]]
    assert len(celeba(tmp_path, split="all", image_size=None, center_crop=None)) == 6
    sub = celeba(tmp_path, split="test", attributes=["Smiling", "Male"], image_size=None,
                 center_crop=None)
    i_smile, i_male = CELEBA_ATTRIBUTES.index("Smiling"), CELEBA_ATTRIBUTES.index("Male")
    assert sub.info["attribute_names"] == ["Smiling", "Male"]
    assert sub.labels.tolist() == [[int(attrs[4, i_smile] > 0), int(attrs[4, i_male] > 0)]]


def test_celeba_transforms(tmp_path):
    names, _ = make_celeba(tmp_path)
    img_dir = tmp_path / "celeba" / "img_align_celeba"
    ds = celeba(tmp_path, limit=2)  # MoPoE defaults: crop 148 (clamped to 20), resize to 64
    assert ds.data["image"].shape == (2, 3, 64, 64) and len(ds) == 2
    ds = celeba(tmp_path, image_size=8, center_crop=16, limit=1)
    with Image.open(img_dir / names[0]) as img:  # 20 x 24: offsets (24-16)//2, (20-16)//2
        ref = img.convert("RGB").crop((2, 4, 18, 20)).resize((8, 8), Image.BICUBIC)
    assert torch.equal(ds.data["image"][0],
                       torch.from_numpy(np.array(ref)).permute(2, 0, 1).float() / 255)
    mvae = celeba(tmp_path, image_size=10, center_crop=None, limit=3)
    assert mvae.data["image"].shape == (3, 3, 10, 10)
    assert mvae.data["image"].min() >= 0 and mvae.data["image"].max() <= 1


def test_celeba_missing_and_malformed(tmp_path):
    with pytest.raises(DatasetNotFoundError,
                       match=_in_message(tmp_path / "celeba" / "list_attr_celeba.txt")) as err:
        celeba(tmp_path)
    assert "list_eval_partition.txt" in str(err.value) and "never downloads" in str(err.value)
    names, _ = make_celeba(tmp_path)
    base = tmp_path / "celeba"
    (base / "img_align_celeba" / names[1]).unlink()
    gone = base / "img_align_celeba" / names[1]
    with pytest.raises(DatasetNotFoundError, match=_in_message(gone)):
        celeba(tmp_path)
    with pytest.raises(ValueError, match="unknown CelebA attribute 'Happy'"):
        celeba(tmp_path, attributes=["Smiling", "Happy"])
    with pytest.raises(ValueError, match="split"):
        celeba(tmp_path, split="val")
    lines = (base / "list_attr_celeba.txt").read_text().splitlines()
    (base / "list_attr_celeba.txt").write_text("\n".join(lines[:-2]) + "\n")
    with pytest.raises(DatasetFormatError, match="announces 6 images but the file lists 4"):
        celeba(tmp_path)
    (base / "list_attr_celeba.txt").write_text("\n".join(lines[:3] + [lines[3][:30]]) + "\n")
    with pytest.raises(DatasetFormatError, match=_in_message(base / "list_attr_celeba.txt")):
        celeba(tmp_path)
    (base / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetNotFoundError,
                       match=_in_message(base / "list_eval_partition.txt")):
        celeba(tmp_path)


# --- the dataset object -------------------------------------------------------------------------

def test_dataset_indexing_batches_and_dataloader(tmp_path):
    make_mnist(tmp_path, list(range(10)) * 2)
    ds = mnist(tmp_path)
    one = ds[3]  # a sub-dataset of one item, as for every MultimodalDataset
    assert isinstance(one, RealDataset) and len(one) == 1 and "data" not in vars(ds)
    assert one.data["mnist"].shape == (1, 1, 28, 28) and one.mask["mnist"].shape == (1,)
    sub = ds[2:5]
    assert sub.data["mnist"].shape == (3, 1, 28, 28) and sub.labels.shape == (3,)
    assert torch.equal(sub.index["mnist"], torch.arange(2, 5))
    seen = torch.cat([b[2] for b in ds.batches(6, shuffle=True, with_labels=True,
                                               generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == sorted(ds.labels.tolist())
    assert len(list(ds.batches(6, drop_last=True))) == 3
    assert "data" not in vars(ds)  # batches materialise only their own rows
    sampler = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(range(len(ds))),
                                            8, False)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, sampler=sampler)
    batch = next(iter(loader))
    assert isinstance(batch, RealDataset)
    assert torch.equal(batch.data["mnist"], ds.data["mnist"][:8]) and batch.mask["mnist"].all()
    with pytest.raises(IndexError):
        ds[20]
