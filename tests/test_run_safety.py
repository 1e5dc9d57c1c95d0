"""Safe runs: no silent overwrite, verified checkpoints, atomic durable writes, one-line errors,
run files without paths or options that do not apply, plots that leave matplotlib alone."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pyro_mmvae import cli, io
from pyro_mmvae.runs import DATASETS
from pyro_mmvae.train import (CHECKPOINT, CheckpointError, load_checkpoint, save_checkpoint,
                              state_digest)

SMALL = ["--dataset", "linear-gaussian", "--epochs", "1", "--num-points", "200",
         "--num-modalities", "2", "--latent-dim", "2", "--hidden", "8", "--is-samples", "4",
         "--no-progress"]


def train(run, *extra, evaluate=False):
    argv = ["train", *SMALL, *(() if evaluate else ("--no-evaluate",)), *extra,
            "--output-dir", str(run)]
    return cli.main(argv)


def user_error(capsys, argv) -> str:
    """Run the CLI, expect a user error: exit status 2 and one line on stderr (returned)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("pyro-mmvae"), err
    assert ": error: " in err
    return err


def no_data(args):
    raise AssertionError("the data was loaded before the options were checked")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small finished linear-Gaussian run (copied by the tests that change it)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert train(run) == 0
    return run


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def flip_a_weight_bit(path: Path) -> str:
    """Flip one bit inside the stored bytes of a guide weight; returns the parameter's name."""
    ckpt = torch.load(path, weights_only=True)
    name, value = next((k, v) for k, v in ckpt["guide"].items() if v.numel() >= 8)
    raw = bytearray(path.read_bytes())
    at = raw.find(value.numpy().tobytes())
    assert at >= 0
    raw[at + 3] ^= 0x04
    path.write_bytes(bytes(raw))
    return name


# --- an existing run is never overwritten silently ---------------------------------------------

def test_an_existing_run_is_not_overwritten(run, capsys, monkeypatch):
    before = (run / CHECKPOINT).read_bytes()
    monkeypatch.setattr(DATASETS["linear-gaussian"], "load", no_data)
    err = user_error(capsys, ["train", *SMALL, "--seed", "3", "--output-dir", str(run)])
    assert f"--output-dir {run} already holds a run" in err
    assert f"--resume {run}" in err and "--overwrite" in err
    assert (run / CHECKPOINT).read_bytes() == before


def test_overwrite_trains_afresh_and_deletes_only_the_old_runs_files(run):
    for name in ("evaluation.json", "classifiers.pt", "generation_m0.png"):
        (run / name).write_text("from the old run")
    (run / "notes.txt").write_text("mine")
    assert train(run, "--seed", "3", "--overwrite") == 0
    assert json.loads((run / "config.json").read_text())["seed"] == 3
    assert load_checkpoint(run / CHECKPOINT)["config"]["seed"] == 3
    for name in ("evaluation.json", "classifiers.pt", "generation_m0.png"):
        assert not (run / name).exists(), name
    assert (run / "notes.txt").read_text() == "mine"


def test_an_empty_output_directory_is_used(tmp_path):
    assert train(tmp_path) == 0 and (tmp_path / CHECKPOINT).is_file()


def test_help_documents_overwrite(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "--overwrite" in capsys.readouterr().out


# --- checkpoints: checksums and the configuration they were written with ----------------------

def test_a_flipped_bit_in_the_weights_is_an_error_naming_the_file(run, capsys):
    flip_a_weight_bit(run / CHECKPOINT)
    for argv in (["train", "--resume", str(run), "--epochs", "2", "--no-progress"],
                 ["evaluate", str(run), "--no-progress"],
                 ["generate", str(run), "--given", "m0"]):
        err = user_error(capsys, argv)
        assert f"{run / CHECKPOINT} is corrupted" in err and "'guide'" in err
        assert "SHA-256" in err


def test_load_checkpoint_verifies_every_entry(tmp_path):
    model, guide = torch.nn.Linear(3, 2), torch.nn.Linear(2, 3)
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, model, guide, None, epoch=1, history={"loss": [1.0]},
                    config={"lr": 0.1}, step=4)
    ckpt = load_checkpoint(path, model, guide)
    assert set(ckpt["sha256"]) == set(ckpt) - {"sha256"}
    assert ckpt["sha256"]["model"] == state_digest(model.state_dict())

    ckpt["history"]["loss"] = [0.5]  # an edited entry, saved without its checksum
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt is corrupted: its 'history'"):
        load_checkpoint(path)
    ckpt["sha256"]["history"] = state_digest(ckpt["history"])
    ckpt["extra"] = 1  # an entry without a checksum
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="entry 'extra' has no checksum"):
        load_checkpoint(path)
    del ckpt["extra"], ckpt["step"]  # an optional entry removed: still verified and loaded
    torch.save(ckpt, path)
    assert "step" not in load_checkpoint(path)
    del ckpt["sha256"]  # written before checksums: loaded, with a warning
    torch.save(ckpt, path)
    with pytest.warns(UserWarning, match="without checksums"):
        load_checkpoint(path, model, guide)


def test_state_digest_depends_on_every_value():
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": 3, "t": (1, "a", None), "f": 0.1}
    digest = state_digest(state)
    assert state_digest(dict(reversed(list(state.items())))) == digest  # not on order
    assert state_digest({**state, "w": state["w"].clone()}) == digest
    for changed in ({"w": state["w"].reshape(3, 2)}, {"w": state["w"].float()}, {"n": 4},
                    {"t": (1, "a", 0)}, {"f": 0.1 + 1e-16}, {"x": 1}):
        assert state_digest({**state, **changed}) != digest, changed
    w = state["w"].clone()
    w.view(-1).view(torch.uint8)[5] ^= 1  # one bit
    assert state_digest({**state, "w": w}) != digest


def test_resuming_with_the_checkpoint_of_another_configuration_names_the_keys(run, tmp_path,
                                                                              capsys):
    other = tmp_path / "other"
    assert train(other, "--seed", "7", "--lr", "0.05") == 0  # the same shapes
    shutil.copyfile(other / CHECKPOINT, run / CHECKPOINT)
    err = user_error(capsys, ["train", "--resume", str(run), "--epochs", "2", "--no-progress"])
    assert f"the checkpoint {run / CHECKPOINT} was written by another configuration" in err
    assert "lr: 0.05 in the checkpoint, 0.01 here" in err and "seed: 7" in err
    err = user_error(capsys, ["evaluate", str(run), "--no-progress"])
    assert "another configuration" in err and "lr" in err


def test_a_resume_may_change_the_runtime_options_only(trained, capsys):
    for option in (["--lr", "0.1"], ["--overwrite"], ["--output-dir", "elsewhere"],
                   ["--dataset", "linear-gaussian"]):
        err = user_error(capsys, ["train", "--resume", str(trained), *option])
        assert f"{option[0]} does not apply with --resume" in err, err


# --- one-line errors ----------------------------------------------------------------------------

def test_an_output_dir_that_is_a_file_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setattr(DATASETS["linear-gaussian"], "load", no_data)
    err = user_error(capsys, ["train", *SMALL, "--output-dir", str(afile)])
    assert f"--output-dir {afile} is a file, not a directory" in err
    monkeypatch.undo()
    err = user_error(capsys, ["train", *SMALL, "--output-dir", str(afile / "run")])
    assert "cannot create the run directory" in err
    assert afile.read_text() == "x"


def test_generate_into_a_path_below_a_file_is_a_one_line_error(trained, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    err = user_error(capsys, ["generate", str(trained), "--given", "m0", "--output",
                              str(afile / "g.png")])
    assert f"{afile} is a file" in err
    err = user_error(capsys, ["generate", str(trained), "--given", "m0", "--output",
                              str(tmp_path)])
    assert "is a directory" in err


def test_path_errors_reaching_main_are_one_line_but_bugs_keep_their_traceback(
        trained, capsys, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "somewhere/evaluation.json")

    monkeypatch.setattr(cli, "evaluate_run", denied)
    err = user_error(capsys, ["evaluate", str(trained), "--no-progress"])
    assert err == "pyro-mmvae evaluate: error: somewhere/evaluation.json: Permission denied\n"

    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "evaluate_run", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["evaluate", str(trained), "--no-progress"])


@pytest.mark.parametrize("argv,message", [
    ([*SMALL, "--train-points", "50"],
     "--train-points does not apply to --dataset linear-gaussian .*--num-points"),
    ([*SMALL, "--image-size", "8"], "--image-size does not apply to --dataset linear-gaussian"),
    ([*SMALL, "--data-root", "cache"], "--data-root does not apply to --dataset linear-gaussian"),
    ([*SMALL, "--channels", "4"], "--channels does not apply to --dataset linear-gaussian"),
    (["--num-points", "100"], "--num-points does not apply to --dataset polydigits"),
    (["--dataset", "digits-svhn-text", "--hidden", "8"],
     "--hidden does not apply to --dataset digits-svhn-text"),
])
def test_options_that_do_not_apply_to_the_dataset_are_errors(argv, message, capsys,
                                                             monkeypatch):
    import re

    for spec in DATASETS.values():
        monkeypatch.setattr(spec, "load", no_data)
    err = user_error(capsys, ["train", *argv])
    assert re.search(message, err), err


# --- run files ------------------------------------------------------------------------------

def strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)
    elif isinstance(obj, str):
        yield obj


def test_config_json_has_no_paths_and_only_the_options_that_apply(trained):
    assert trained.is_absolute()
    config = json.loads((trained / "config.json").read_text())
    for value in strings(config):
        assert not os.path.isabs(value), value
    assert str(trained.parent) not in (trained / "config.json").read_text()
    for key in ("output_dir", "data_root", "image_size", "train_points", "channels",
                "likelihood", "classifier_epochs", "eval_points", "overwrite", "resume"):
        assert key not in config, key
    for key in ("num_points", "num_modalities", "test_fraction", "hidden"):
        assert key in config, key
    assert load_checkpoint(trained / CHECKPOINT)["config"] == config


def test_no_evaluate_says_what_it_wrote(tmp_path, capsys):
    assert train(tmp_path / "run") == 0
    out = capsys.readouterr().out
    assert "evaluation.json" not in out and "(and pictures)" not in out
    assert "not evaluated" in out and f"pyro-mmvae evaluate {tmp_path / 'run'}" in out
    assert not (tmp_path / "run" / "evaluation.json").exists()


def test_a_diverged_run_records_no_path(tmp_path, monkeypatch):
    from pyro_mmvae.infer import MaskedMultimodalELBO

    class NaNInEpoch2(MaskedMultimodalELBO):
        calls = 0

        def loss_and_grads(self, *args, **kwargs):
            value = super().loss_and_grads(*args, **kwargs)
            type(self).calls += 1
            return float("nan") if self.calls > 1 else value

    monkeypatch.setattr(cli, "build_loss", lambda args, data: NaNInEpoch2())
    run = tmp_path / "run"
    assert train(run, "--epochs", "2") == 1
    text = (run / "metrics.json").read_text()
    assert "kept at checkpoint.pt" in json.loads(text)["error"]
    assert str(tmp_path) not in text


# --- atomic, durable writes ---------------------------------------------------------------------

@pytest.mark.parametrize("exc", [ValueError, KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("mode", ["w", None])
def test_an_interrupted_write_leaves_the_old_file_and_no_temp_file(tmp_path, exc, mode):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def write(f):
        if mode is None:
            Path(f).write_text("half")
        else:
            f.write("half")
        raise exc()

    with pytest.raises(exc):
        io.atomic_write(target, write, mode=mode)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_writes_are_flushed_to_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")
                       if os.path.exists("/proc/self/fd") else fd))
        fsync(fd)

    def recording_replace(src, dst):
        events.append(("replace", os.path.realpath(src)))
        replace(src, dst)

    monkeypatch.setattr(io.os, "fsync", recording_fsync)
    monkeypatch.setattr(io.os, "replace", recording_replace)
    for mode, write in (("w", lambda f: f.write("text")), (None, lambda p: Path(p).write_text(
            "by path"))):
        events.clear()
        io.atomic_write(tmp_path / "x.json", write, mode=mode)
        kinds = [kind for kind, _ in events]
        assert "fsync" in kinds and "replace" in kinds, events
        first_replace = kinds.index("replace")
        assert kinds.index("fsync") < first_replace
        if os.path.exists("/proc/self/fd"):  # the temporary file itself was synced
            assert ("fsync", events[first_replace][1]) in events[:first_replace]


def test_stale_temp_files_are_recognised_and_removed(tmp_path):
    stale = [".checkpoint.pt.ab_3x9zq.pt", ".metrics.json.0a1b2c3d.json", ".notes.k2j4h5g6"]
    kept = [".checkpoint.pt.abc.pt", ".checkpoint.pt.abcdefgh.json", ".hidden", "checkpoint.pt",
            ".metrics.json.ABCDEFGH.json"]
    for name in stale + kept:
        (tmp_path / name).write_text("x")
    removed = io.remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_resume_removes_the_temp_files_of_a_killed_write(run, capsys):
    (run / ".checkpoint.pt.k1ll3d_x.pt").write_bytes(b"half a checkpoint")
    assert cli.main(["train", "--resume", str(run), "--epochs", "2", "--no-evaluate",
                     "--no-progress"]) == 0
    assert "removed 1 temporary file" in capsys.readouterr().err
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "kill") or sys.platform == "win32", reason="POSIX signals")
def test_sigterm_during_a_write_removes_the_temp_file(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")
    script = textwrap.dedent(f"""
        import time
        from pyro_mmvae.io import sigterm_as_exit
        from pyro_mmvae.io import atomic_write

        def write(f):
            f.write("half")
            print("writing", flush=True)
            time.sleep(60)

        with sigterm_as_exit():
            atomic_write({str(target)!r}, write, mode="w")
    """)
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stdout.readline().strip() == "writing"
        proc.terminate()
        assert proc.wait(timeout=30) == 128 + 15
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


# --- plots leave matplotlib's backend alone -------------------------------------------------------

def test_plots_do_not_change_the_matplotlib_backend(tmp_path, monkeypatch):
    import matplotlib

    from pyro_mmvae.diagnostics import plots

    backend = matplotlib.get_backend()
    pyplot = sys.modules.get("matplotlib.pyplot")
    open_figures = pyplot.get_fignums() if pyplot else []
    calls = []
    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: calls.append(a))
    fig = plots.generation_grid([("a", torch.rand(3, 5)), ("b", torch.rand(3, 1, 4, 4))])
    plots._save(fig, tmp_path / "grid.png")
    plots.plot_coherence(tmp_path / "c.png", {"self": {1: 0.5, 2: 0.7}})
    plots.plot_rate_distortion(tmp_path / "rd.png", {"all": (1.0, 2.0)})
    assert calls == []
    assert matplotlib.get_backend() == backend
    assert type(fig).__name__ == "Figure"
    if pyplot is not None:  # no figure was registered with pyplot
        assert pyplot.get_fignums() == open_figures
    for name in ("grid.png", "c.png", "rd.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
