"""fit's callbacks: validation, early stopping, per-term logging, the caller's own hooks."""

import pyro
import pytest
import torch

from pyro_mmvae.data import shared_latent_study
from pyro_mmvae.infer import MaskedMultimodalELBO, MixtureMultimodalELBO
from pyro_mmvae.train import (BEST_CHECKPOINT, CHECKPOINT, Callback, EarlyStopping,
                              TrainingDiverged, fit, load_checkpoint, split_validation)
from tests.helpers import linear_model_and_guide, module_state

LATENT = 2


@pytest.fixture
def data():
    return shared_latent_study(num_points=96, num_modalities=2, latent_dim=LATENT,
                               dim_range=(3, 5), seed=2).data


def build(data, seed=0):
    return linear_model_and_guide(data, LATENT, hidden=(8,), seed=seed)


state = module_state


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Scripted(Callback):
    """Writes a scripted 'val_loss' (one value per epoch, by epoch number) and records the
    parameters after every epoch."""

    def __init__(self, values):
        self.values, self.states = values, {}

    def on_epoch_end(self, run):
        run.history.setdefault("val_loss", []).append(self.values[run.epoch - 1])
        self.states[run.epoch] = (state(run.model), state(run.guide))


def test_split_validation_is_a_seeded_partition(data):
    mask = {m: torch.rand(96) < 0.8 for m in data}
    train, train_mask, val, val_mask = split_validation(data, mask, fraction=0.25, seed=3)
    assert len(val["m0"]) == 24 and len(train["m0"]) == 72
    rows = torch.cat([train["m0"], val["m0"]])
    assert torch.equal(rows[rows[:, 0].argsort()], data["m0"][data["m0"][:, 0].argsort()])
    again = split_validation(data, mask, fraction=0.25, seed=3)
    assert torch.equal(again[2]["m1"], val["m1"]) and torch.equal(again[3]["m1"], val_mask["m1"])
    assert not torch.equal(split_validation(data, fraction=0.25, seed=4)[2]["m0"], val["m0"])
    for bad in (0.0, 1.0, 0.001):
        with pytest.raises(ValueError, match="val_fraction"):
            split_validation(data, fraction=bad)


def test_validation_loss_is_the_bound_on_the_held_out_points_with_fixed_draws(data):
    """val_loss is -mean ELBO of the held-out points, computed with the RNG seeded by `seed`
    (the same draws every epoch), and validation changes nothing in the training run."""
    loss = MaskedMultimodalELBO()
    model, guide = build(data)
    hist = fit(model, guide, loss, data, epochs=2, batch_size=16, lr=1e-2, progress=False,
               val_fraction=0.25, seed=5)
    _, _, val, _ = split_validation(data, fraction=0.25, seed=5)
    pyro.set_rng_seed(5)
    model.eval()
    guide.eval()
    with torch.no_grad():
        direct = -sum(loss.terms(model, guide, {m: x[i:i + 16] for m, x in val.items()})
                      ["elbo"].sum() for i in range(0, 24, 16)) / 24
    assert hist["val_loss"][-1] == pytest.approx(float(direct), rel=1e-12)
    assert len(hist["val_loss"]) == 2
    assert hist["val_terms"]["elbo"][-1] == pytest.approx(-hist["val_loss"][-1], rel=1e-12)
    # training is untouched: the same run with val_data given explicitly and without it
    train, _, val, _ = split_validation(data, fraction=0.25, seed=5)
    runs = []
    for extra in ({"val_data": val}, {}):
        model, guide = build(data)
        fit(model, guide, MaskedMultimodalELBO(), train, epochs=2, batch_size=16, lr=1e-2,
            progress=False, seed=5, **extra)
        runs.append((state(model), state(guide)))
    assert same(runs[0][0], runs[1][0]) and same(runs[0][1], runs[1][1])
    with pytest.raises(ValueError, match="not both"):
        fit(model, guide, loss, data, epochs=1, batch_size=16, val_data=val, val_fraction=0.1,
            progress=False)


def test_terms_are_logged_per_epoch_and_the_elbo_is_minus_the_loss(data):
    model, guide = build(data)
    hist = fit(model, guide, MixtureMultimodalELBO(), data, epochs=3, batch_size=32,
               progress=False)
    terms = hist["terms"]
    assert {"elbo", "reconstruction", "rate"} <= set(terms)
    assert all(len(v) == 3 for v in terms.values())
    assert terms["elbo"] == pytest.approx([-v for v in hist["loss"]], rel=1e-12)
    assert "subset_size" not in terms  # not a term of the bound


@pytest.mark.parametrize("restore_best", [True, False])
def test_early_stopping_stops_after_patience_and_restores_the_best_epoch(data, tmp_path,
                                                                         restore_best):
    script = Scripted([5.0, 4.0, 4.5, 4.2, 4.1, 3.0, 2.0, 1.0])
    model, guide = build(data)
    hist = fit(model, guide, MaskedMultimodalELBO(), data, epochs=8, batch_size=32,
               progress=False, callbacks=[script], run_dir=tmp_path,
               early_stopping=EarlyStopping(3, restore_best=restore_best))
    assert hist["epoch"] == [1, 2, 3, 4, 5]  # epochs 3, 4, 5 do not beat epoch 2
    assert hist["status"] == "stopped_early" and hist["best_epoch"] == 2
    assert "epoch 2" in hist["stop_reason"]
    best, last = script.states[2], script.states[5]
    now = (state(model), state(guide))
    target = best if restore_best else last
    assert same(now[0], target[0]) and same(now[1], target[1])
    model2, guide2 = build(data, seed=9)
    ckpt = load_checkpoint(tmp_path / BEST_CHECKPOINT, model2, guide2)
    assert ckpt["epoch"] == 2 and same(state(model2), best[0])
    assert load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == 5  # resumable from the last


def test_min_delta_and_monitoring_the_training_loss(data):
    script = Scripted([5.0, 4.95, 4.9, 4.85, 1.0])
    model, guide = build(data)
    hist = fit(model, guide, MaskedMultimodalELBO(), data, epochs=5, batch_size=32,
               progress=False, callbacks=[script],
               early_stopping=EarlyStopping(2, min_delta=0.1))
    assert hist["epoch"] == [1, 2, 3] and hist["best_epoch"] == 1
    model, guide = build(data)
    hist = fit(model, guide, MaskedMultimodalELBO(), data, epochs=4, batch_size=32, lr=1e-2,
               progress=False, early_stopping=EarlyStopping(1, monitor="loss"))
    assert hist["best_epoch"] == hist["epoch"][0] + hist["loss"].index(min(hist["loss"]))


@pytest.mark.slow
def test_early_stopping_resumes_where_the_uninterrupted_run_stops(data, tmp_path):
    values = [5.0, 4.0, 4.5, 4.2, 4.1, 3.0]
    model, guide = build(data)
    full = fit(model, guide, MaskedMultimodalELBO(), data, epochs=6, batch_size=32,
               progress=False, callbacks=[Scripted(values)], early_stopping=3,
               run_dir=tmp_path / "full")
    whole = (state(model), state(guide))
    model, guide = build(data)
    fit(model, guide, MaskedMultimodalELBO(), data, epochs=3, batch_size=32, progress=False,
        callbacks=[Scripted(values)], early_stopping=3, run_dir=tmp_path / "part")
    model, guide = build(data, seed=4)
    resumed = fit(model, guide, MaskedMultimodalELBO(), data, epochs=6, batch_size=32,
                  progress=False, callbacks=[Scripted(values)], early_stopping=3,
                  run_dir=tmp_path / "part", resume_from=tmp_path / "part" / CHECKPOINT)
    assert resumed["epoch"] == full["epoch"] == [1, 2, 3, 4, 5]
    assert same(state(model), whole[0]) and same(state(guide), whole[1])  # best.pt restored
    # resuming a run that had stopped early trains nothing more
    model, guide = build(data, seed=4)
    again = fit(model, guide, MaskedMultimodalELBO(), data, epochs=6, batch_size=32,
                progress=False, callbacks=[Scripted(values)], early_stopping=3,
                run_dir=tmp_path / "full", resume_from=tmp_path / "full" / CHECKPOINT)
    assert again["epoch"] == [1, 2, 3, 4, 5] and again["status"] == "stopped_early"


def test_early_stopping_needs_what_it_monitors_and_valid_arguments(data):
    model, guide = build(data)
    with pytest.raises(ValueError, match="val_fraction"):
        fit(model, guide, MaskedMultimodalELBO(), data, epochs=2, batch_size=32,
            progress=False, early_stopping=2)
    for kwargs in ({"patience": 0}, {"patience": 2, "min_delta": -1.0},
                   {"patience": 2, "monitor": "elbo"}):
        with pytest.raises(ValueError):
            EarlyStopping(**kwargs)


class Recorder(Callback):
    def __init__(self, log, name, stop_at=None):
        self.log, self.name, self.stop_at = log, name, stop_at

    def on_fit_start(self, run):
        self.log.append((self.name, "start", run.epoch))

    def on_epoch_end(self, run):
        self.log.append((self.name, "epoch", run.epoch))
        if run.epoch == self.stop_at:
            run.stop, run.stop_reason = True, "asked to"

    def on_fit_end(self, run):
        self.log.append((self.name, "end", run.history["status"]))


def test_callbacks_run_in_order_after_evaluation_and_can_stop_training(data):
    log = []
    model, guide = build(data)
    hist = fit(model, guide, MaskedMultimodalELBO(), data, epochs=5, batch_size=32,
               progress=False, eval_fn=lambda e: log.append(("eval", "epoch", e)) or {},
               callbacks=[Recorder(log, "a", stop_at=2), Recorder(log, "b")])
    assert log == [("a", "start", 0), ("b", "start", 0),
                   ("eval", "epoch", 1), ("a", "epoch", 1), ("b", "epoch", 1),
                   ("eval", "epoch", 2), ("a", "epoch", 2), ("b", "epoch", 2),
                   ("a", "end", "stopped_early"), ("b", "end", "stopped_early")]
    assert hist["epoch"] == [1, 2] and hist["stop_reason"] == "asked to"


class NaNAt(MaskedMultimodalELBO):
    def __init__(self, step):
        super().__init__()
        self.at, self.calls = step, 0

    def loss_and_grads(self, model, guide, data, mask=None):
        self.calls += 1
        value = super().loss_and_grads(model, guide, data, mask)
        return float("nan") if self.calls > self.at else value


def test_a_diverged_run_ends_its_callbacks_and_keeps_its_last_parameters(data):
    log = []
    script = Scripted([3.0, 4.0, 5.0, 6.0])
    model, guide = build(data)
    with pytest.raises(TrainingDiverged):
        fit(model, guide, NaNAt(7), data, epochs=4, batch_size=32, progress=False,
            callbacks=[script, Recorder(log, "a")], early_stopping=3)
    assert log[-1] == ("a", "end", "diverged")
    # the parameters are those of the last finite step, not epoch 1's (the best)
    assert not same(state(model), script.states[1][0])
