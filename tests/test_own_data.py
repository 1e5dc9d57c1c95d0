"""Your own data: pyro_mmvae.data.files (.npz, a folder of arrays, a folder per modality),
checked at the door, and ``pyro-mmvae train --data PATH`` end to end with missing entries."""

import json

import numpy as np
import pytest
import torch

from pyro_mmvae import cli
from pyro_mmvae.data.files import parse_kinds, read_multimodal
from pyro_mmvae.models import MultimodalModel
from pyro_mmvae.nn import MLP, ConvImageEncoder


def linear_data(n=120, seed=0, missing=0.3):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    a = z @ rng.normal(size=(2, 5)) + 0.1 * rng.normal(size=(n, 5))
    b = z @ rng.normal(size=(2, 3)) + 0.1 * rng.normal(size=(n, 3))
    gone = rng.random(n) < missing
    a[gone] = np.nan
    return {"a": a, "b": b}, ~gone


def test_npz_with_nan_rows_masks_and_labels(tmp_path):
    arrays, observed = linear_data()
    img = (np.arange(120 * 36) % 256).astype(np.uint8).reshape(120, 6, 6)
    mask_img = np.arange(120) % 5 != 0
    np.savez(tmp_path / "d.npz", **arrays, img=img, mask_img=mask_img,
             labels=np.arange(120) % 4)
    ds, kinds = read_multimodal(tmp_path / "d.npz")
    assert kinds == {"a": "vector", "b": "vector", "img": "image"}
    assert ds.data["img"].shape == (120, 1, 6, 6)  # a channel axis added
    assert torch.allclose(ds.data["img"][0, 0, 0, :3].double(),
                          torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64) / 255)
    assert torch.equal(ds.mask["a"], torch.as_tensor(observed))
    assert torch.equal(ds.mask["img"], torch.as_tensor(mask_img))
    assert ds.mask["b"].all()
    assert torch.isfinite(ds.data["a"]).all()  # placeholders, never NaN
    assert torch.equal(ds.labels, torch.arange(120) % 4)
    assert ds.info["format"] == "npz" and len(ds.info["sha256"]) == 64
    assert ds.info["observed_fraction"]["img"] == pytest.approx(mask_img.mean())


def test_a_folder_of_arrays_and_a_folder_per_modality(tmp_path):
    arrays, _ = linear_data(n=30)
    (tmp_path / "arrays").mkdir()
    for m, x in arrays.items():
        np.save(tmp_path / "arrays" / f"{m}.npy", x)
    hwc = np.random.default_rng(1).random((30, 5, 5, 3))
    np.save(tmp_path / "arrays" / "rgb.npy", hwc)
    ds, kinds = read_multimodal(tmp_path / "arrays")
    assert kinds["rgb"] == "image" and ds.data["rgb"].shape == (30, 3, 5, 5)
    assert torch.allclose(ds.data["rgb"][2, :, 1, 4].double(), torch.as_tensor(hwc[2, 1, 4]))
    # one folder per modality: ids are file names, a missing file is a missing entry
    from PIL import Image

    root = tmp_path / "items"
    for m in ("vec", "pic"):
        (root / m).mkdir(parents=True)
    for i in range(6):
        np.save(root / "vec" / f"p{i}.npy", np.full(4, float(i)))
        if i % 2 == 0:
            Image.fromarray(np.full((4, 4), 51 * (i // 2), dtype=np.uint8)).save(
                root / "pic" / f"p{i}.png")
    (root / "labels.csv").write_text("id,label\n" + "".join(f"p{i},{i % 3}\n" for i in range(6)))
    ds, kinds = read_multimodal(root)
    assert kinds == {"pic": "image", "vec": "vector"}
    assert ds.mask["pic"].tolist() == [True, False, True, False, True, False]
    assert ds.data["vec"][:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert ds.data["pic"][4, 0, 0, 0].item() == pytest.approx(102 / 255)
    assert ds.labels.tolist() == [0, 1, 2, 0, 1, 2]


def write(tmp_path, name="d.npz", **arrays):
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


@pytest.mark.parametrize("arrays, message", [
    ({"a": np.zeros((5, 2)), "b": np.zeros((4, 2))}, "different numbers of data points: 'a' 5"),
    ({"a": np.array(["x"] * 5)}, "modality 'a'.*dtype"),
    ({"a": np.array([[1.0, np.inf]] * 5)}, "modality 'a': infinite"),
    ({"a": np.array([[1.0, np.nan]] + [[0.0, 0.0]] * 4)},
     r"modality 'a': data point\(s\) \[0\] are partly NaN"),
    ({"a": np.zeros((5, 2)), "mask_c": np.ones(5, bool)}, "mask_c masks no modality"),
    ({"a": np.zeros((5, 2)), "mask_a": np.ones(4, bool)}, r"mask_a: expected \(5,\)"),
    ({"a": np.zeros((5, 2)), "mask_a": np.zeros(5, bool)}, "'a' is observed at no data point"),
    ({"a": np.zeros((3, 2)), "b": np.zeros((3, 2)), "mask_a": np.array([1, 0, 1], bool),
      "mask_b": np.array([1, 0, 1], bool)}, r"data point\(s\) \[1\] observe no modality"),
    ({"a": np.zeros((5, 2)), "labels": np.array([0, 1, -1, 0, 1])}, "labels: expected"),
    ({"a": np.zeros((5, 2, 2, 2, 2))}, "cannot tell the kind"),
    ({"labels": np.zeros(5, int)}, "no modality arrays"),
])
def test_bad_files_are_clear_errors_naming_what_is_wrong(tmp_path, arrays, message):
    with pytest.raises(ValueError, match=message):
        read_multimodal(write(tmp_path, **arrays))


def test_nan_under_a_mask_that_says_observed_and_other_errors(tmp_path):
    a = np.zeros((4, 2))
    a[1] = np.nan
    with pytest.raises(ValueError, match="data point 1 is NaN but mask_a says it is observed"):
        read_multimodal(write(tmp_path, a=a, b=np.zeros((4, 2)), mask_a=np.ones(4, bool)))
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_multimodal(tmp_path / "missing.npz")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="expected an .npz archive or a folder"):
        read_multimodal(tmp_path / "x.csv")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="broken.npz: cannot be read"):
        read_multimodal(tmp_path / "broken.npz")
    with pytest.raises(ValueError, match="names 'c', which is not a modality"):
        read_multimodal(write(tmp_path, a=np.zeros((4, 2))), {"c": "image"})
    assert parse_kinds("a=image, b=text") == {"a": "image", "b": "text"}
    with pytest.raises(ValueError, match="MODALITY=KIND"):
        parse_kinds("a:image")


def test_modality_names_read_no_values(tmp_path):
    from pyro_mmvae.data.files import modality_names

    path = write(tmp_path, b=np.zeros((3, 2)), a=np.full((3, 1), np.inf), labels=np.zeros(3, int),
                 mask_a=np.ones(3, bool))
    assert modality_names(path) == ["a", "b"]  # the infinite values are read_multimodal's
    (tmp_path / "items" / "x").mkdir(parents=True)
    assert modality_names(tmp_path / "items") == ["x"]
    with pytest.raises(FileNotFoundError):
        modality_names(tmp_path / "nope.npz")


def test_given_kinds_override_the_inferred_ones(tmp_path):
    path = write(tmp_path, t=np.eye(4)[np.random.default_rng(0).integers(0, 4, (6, 3))],
                 g=np.random.default_rng(1).random((6, 4, 4)))
    _, kinds = read_multimodal(path)
    assert kinds == {"t": "image", "g": "image"}
    ds, kinds = read_multimodal(path, {"t": "text"})
    assert kinds["t"] == "text" and ds.data["t"].shape == (6, 3, 4)


@pytest.fixture
def npz(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arrays, observed = linear_data(n=150)
    np.savez(tmp_path / "mine.npz", **arrays)
    return tmp_path / "mine.npz", observed


def test_train_on_your_own_data_passes_its_masks_and_records_it(npz, monkeypatch, capsys):
    path, observed = npz
    seen = {}
    real_fit = cli.fit

    def spy(*args, **kwargs):
        seen.update(kwargs, data=args[3])
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(cli, "fit", spy)
    assert cli.main(["train", "--data", str(path), "--epochs", "2", "--batch-size", "32",
                     "--output-dir", "run", "--no-progress", "--val-fraction", "0.25",
                     "--early-stopping", "3", "--aggregator", "poe"]) == 0
    n_train = 150 - 30  # --test-fraction 0.2 by default: the last 30 points are the test split
    assert torch.equal(seen["mask"]["a"], torch.as_tensor(observed[:n_train]))
    assert seen["mask"]["b"].all() and seen["data"]["a"].shape == (n_train, 5)
    assert seen["val_fraction"] == 0.25 and seen["early_stopping"] == 3
    saved = json.loads((path.parent / "run" / "config.json").read_text())
    assert saved["dataset"] == "file" and saved["data"] == "mine.npz"  # relative, as given
    assert len(saved["dataset_info"]["sha256"]) == 64
    evaluation = json.loads((path.parent / "run" / "evaluation.json").read_text())
    assert evaluation["observed_fraction"]["a"] == pytest.approx(observed[n_train:].mean())
    assert evaluation["num_eval_points"] == 30
    assert set(evaluation["test_conditional_log_likelihood"]) == {"a", "b"}
    metrics = json.loads((path.parent / "run" / "metrics.json").read_text())
    assert len(metrics["history"]["val_loss"]) == len(metrics["history"]["epoch"])


def test_a_run_on_your_own_data_builds_vector_and_image_networks(tmp_path, monkeypatch):
    from pyro_mmvae.config import RunConfig
    from pyro_mmvae.runs import build_guide, build_model, load_data

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez("mix.npz", v=rng.normal(size=(40, 3)), img=rng.random((40, 8, 8)))
    config = RunConfig(dataset="file", data="mix.npz", likelihood="bernoulli").resolve()
    assert cli.config_from_argv(["--data", "mix.npz"]).dataset == "file"
    data = load_data(config)
    assert data.kinds == {"v": "vector", "img": "image"}
    model, guide = build_model(config, data), build_guide(config, data)
    assert isinstance(model, MultimodalModel)
    assert isinstance(model.decoders["v"].net, MLP)
    assert type(model.decoders["img"]).__name__ == "BernoulliDecoder"
    assert isinstance(guide.encoders["img"], ConvImageEncoder)


def test_resume_and_evaluate_refuse_changed_data(npz, capsys):
    path, _ = npz
    base = ["--epochs", "1", "--batch-size", "32", "--no-progress", "--no-evaluate"]
    assert cli.main(["train", "--data", str(path), "--output-dir", "run", *base]) == 0
    arrays = dict(np.load(path))
    arrays["b"][0, 0] += 1.0
    np.savez(path.parent / "mine.npz", **arrays)
    capsys.readouterr()
    for argv in (["train", "--resume", "run", "--epochs", "2", "--no-progress"],
                 ["evaluate", "run"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not the data the run was trained on" in err[0]


@pytest.mark.parametrize("argv, message", [
    (["--data", "nothere.npz"], "no such file or folder"),
    (["--dataset", "linear-gaussian", "--data", "mine.npz"], "--data does not apply"),
    (["--data", "mine.npz", "--early-stopping", "2"], "give --val-fraction too"),
    (["--data", "mine.npz", "--modality-kinds", "a=picture"], "MODALITY=KIND"),
    (["--data", "mine.npz", "--val-fraction", "1.5"], "--val-fraction"),
    (["--data", "mine.npz", "--test-fraction", "0.999"], "both splits"),
])
def test_bad_data_options_are_one_line_errors(npz, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *argv, "--epochs", "1", "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_an_early_stopped_run_is_evaluated_with_its_best_epoch(npz, monkeypatch):
    from pyro_mmvae.runs import load_run
    from pyro_mmvae.train import load_checkpoint

    path, _ = npz
    assert cli.main(["train", "--data", str(path), "--epochs", "6", "--batch-size", "16",
                     "--lr", "0.05", "--output-dir", "run", "--no-progress", "--no-evaluate",
                     "--val-fraction", "0.3", "--early-stopping", "1"]) == 0
    run = path.parent / "run"
    best = load_checkpoint(run / "best.pt")
    last = load_checkpoint(run / "checkpoint.pt")
    metrics = json.loads((run / "metrics.json").read_text())["history"]
    assert best["epoch"] == metrics["best_epoch"]
    _, _, _, guide, ckpt = load_run(run)
    assert ckpt["epoch"] == best["epoch"]
    state = {k: v for k, v in guide.state_dict().items()}
    assert all(torch.equal(state[k], best["guide"][k]) for k in state)
    assert metrics["status"] == "stopped_early" and best["epoch"] < last["epoch"]  # lr 0.05
    assert not all(torch.equal(best["guide"][k], last["guide"][k]) for k in state)
    # --overwrite removes best.pt with the rest
    assert cli.main(["train", "--data", str(path), "--epochs", "1", "--batch-size", "16",
                     "--output-dir", "run", "--overwrite", "--no-progress",
                     "--no-evaluate"]) == 0
    assert not (run / "best.pt").exists()


def test_the_evaluation_of_masked_data_is_exact_for_the_exact_posterior():
    """With the exact posterior as guide, importance sampling is exact: the joint and the
    conditional log-likelihoods equal the linear-Gaussian model's closed forms."""
    from types import SimpleNamespace

    from pyro_mmvae.models import ExactPosteriorGuide, LinearGaussianModel
    from pyro_mmvae.report import evaluate_masked

    torch.manual_seed(0)
    dims = {"a": 3, "b": 2, "c": 4}
    model = LinearGaussianModel(dims, 2)
    data = {m: torch.randn(12, d) for m, d in dims.items()}
    mask = {m: torch.rand(12) < 0.7 for m in dims}
    mask["a"][~(mask["b"] | mask["c"])] = True  # every point observes something
    out = evaluate_masked(SimpleNamespace(eval_points=None, is_samples=3),
                          SimpleNamespace(test=data, test_mask=mask), model,
                          ExactPosteriorGuide(model), "cpu")
    with torch.no_grad():
        joint = model.exact_log_likelihood(data, mask)
        assert out["test_log_likelihood"] == pytest.approx(joint.mean().item(), rel=1e-9)
        for m in dims:
            rest = model.exact_log_likelihood(data, {**mask, m: torch.zeros(12, dtype=bool)})
            others = torch.stack([mask[o] for o in dims if o != m]).any(0)
            scored = mask[m] & others
            got = out["test_conditional_log_likelihood"][m]
            assert got["num_points"] == int(scored.sum())
            assert got["mean"] == pytest.approx((joint - rest)[scored].mean().item(), rel=1e-9)
