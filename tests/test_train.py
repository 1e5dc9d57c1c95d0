"""The SVI training loop: loss decrease, checkpoints, resuming and divergence handling."""

import copy
import json
import math

import pyro
import pyro.distributions as dist
import pyro.nn
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_mmvae.guides import MultimodalGuide, SubsetEncoders
from pyro_mmvae.data import shared_latent_study
from pyro_mmvae.infer import JointMultimodalELBO, MaskedMultimodalELBO
from pyro_mmvae.train import (CHECKPOINT, CONFIG, LOSS_CURVE, METRICS, TrainingDiverged, fit,
                              fit_two_stage, iterate_minibatches, load_checkpoint,
                              resolve_device)
from tests.helpers import clamped_adam_loop, linear_model_and_guide, linear_problem, module_state

LATENT = 2


@pytest.fixture
def data():
    """Tiny linear-Gaussian problem: 2 modalities of dims 3..5, 128 points."""
    return shared_latent_study(num_points=128, num_modalities=2, latent_dim=LATENT,
                               dim_range=(3, 6), seed=1).data


def build(data, seed=0):
    return linear_model_and_guide(data, LATENT, hidden=(16,), seed=seed)


state = module_state


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class NaNAfter(MaskedMultimodalELBO):
    """The masked bound, but every step after the first ``after`` reports a NaN loss."""

    def __init__(self, after, **kwargs):
        super().__init__(**kwargs)
        self.after = after
        self.calls = 0

    def loss_and_grads(self, model, guide, data, mask=None):
        self.calls += 1
        value = super().loss_and_grads(model, guide, data, mask)
        return float("nan") if self.calls > self.after else value


def test_loss_decreases(data):
    model, guide = build(data)
    history = fit(model, guide, MaskedMultimodalELBO(), data, epochs=4, batch_size=32, lr=2e-2,
                  progress=False)
    assert history["status"] == "completed"
    assert history["epoch"] == [1, 2, 3, 4]
    assert history["steps_per_epoch"] == 4
    assert len(history["step_loss"]) == 16
    assert all(math.isfinite(v) for v in history["loss"])
    assert history["loss"][-1] < history["loss"][0] - 1.0


def test_partially_observed_data_with_progress_bar(data, capsys):
    mask = {"m0": torch.arange(128) % 3 != 0, "m1": torch.arange(128) % 3 != 1}
    data = {m: torch.where(mask[m][:, None], x, torch.zeros_like(x)) for m, x in data.items()}
    model, guide = build(data)
    history = fit(model, guide, MaskedMultimodalELBO(), data, mask=mask, epochs=1,
                  batch_size=64, progress=True)
    assert len(history["step_loss"]) == 2
    assert "2/2" in capsys.readouterr().err  # tqdm writes to stderr


def test_minibatches_shuffle_and_drop_last(data):
    gen = torch.Generator().manual_seed(0)
    mask = {m: torch.arange(128) % 2 == 0 for m in data}
    batches = list(iterate_minibatches(data, mask, batch_size=50, generator=gen))
    assert len(batches) == 2  # 128 = 2 * 50 + 28 dropped
    first = next(iter(data))
    seen = torch.cat([b[first] for b, _ in batches])
    assert seen.shape == (100, data[first].shape[1])
    assert not torch.equal(seen, data[first][:100])  # shuffled
    for batch, bmask in batches:  # data and mask rows stay aligned
        rows = (batch[first][:, None, :] == data[first][None]).all(-1).float().argmax(-1)
        assert torch.equal(bmask[first], rows % 2 == 0)


def test_checkpoint_written_and_restores(data, tmp_path):
    model, guide = build(data)
    history = fit(model, guide, MaskedMultimodalELBO(), data, epochs=2, batch_size=32,
                  lr=1e-2, run_dir=tmp_path, progress=False, config={"note": "test"})
    for name in (CHECKPOINT, CONFIG, METRICS, LOSS_CURVE):
        assert (tmp_path / name).stat().st_size > 0, name
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert (tmp_path / LOSS_CURVE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((tmp_path / CONFIG).read_text())
    assert config["epochs"] == 2 and config["note"] == "test"
    metrics = json.loads((tmp_path / METRICS).read_text())
    assert metrics["history"]["loss"] == pytest.approx(history["loss"])

    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)  # loadable without pickle
    assert ckpt["epoch"] == 2
    assert ckpt["history"]["loss"] == pytest.approx(history["loss"])
    assert ckpt["optimizer"]  # one Adam state per parameter
    assert {"torch", "numpy", "python", "shuffle"} <= set(ckpt["rng"])

    fresh_model, fresh_guide = build(data, seed=123)
    assert not torch.equal(fresh_model.state_dict()["decoders.m0.net.weight"],
                           model.state_dict()["decoders.m0.net.weight"])
    out = load_checkpoint(tmp_path / CHECKPOINT, fresh_model, fresh_guide)
    assert out["epoch"] == 2
    assert_same_state(state(fresh_model), state(model))
    assert_same_state(state(fresh_guide), state(guide))
    with torch.no_grad():
        assert torch.allclose(fresh_model.exact_log_likelihood(data),
                              model.exact_log_likelihood(data))


def test_resume_matches_uninterrupted_run(data, tmp_path):
    model, guide = build(data)
    full = fit(model, guide, MaskedMultimodalELBO(), data, epochs=3, batch_size=32, lr=1e-2,
               progress=False)
    expected = state(model)

    model, guide = build(data)
    fit(model, guide, MaskedMultimodalELBO(), data, epochs=1, batch_size=32, lr=1e-2,
        run_dir=tmp_path / "a", progress=False)
    model, guide = build(data, seed=7)  # parameters come from the checkpoint
    resumed = fit(model, guide, MaskedMultimodalELBO(), data, epochs=3, batch_size=32, lr=1e-2,
                  run_dir=tmp_path / "b", progress=False,
                  resume_from=tmp_path / "a" / CHECKPOINT)
    assert resumed["epoch"] == [1, 2, 3]
    assert resumed["loss"] == pytest.approx(full["loss"], rel=1e-5)
    for k, v in state(model).items():
        assert torch.allclose(v, expected[k], rtol=1e-4, atol=1e-5), k


def test_divergence_stops_and_keeps_last_good_checkpoint(data, tmp_path):
    model, guide = build(data)
    snapshots = {}

    def snapshot(epoch):  # runs right before the epoch's checkpoint is written
        snapshots[epoch] = (state(model), state(guide))
        return {}

    # 4 steps per epoch: steps 1-6 are finite, step 7 (epoch 2, step 3) is NaN.
    with pytest.raises(TrainingDiverged, match=r"non-finite loss .* epoch 2, step 3") as info:
        fit(model, guide, NaNAfter(6), data, epochs=5, batch_size=32, lr=1e-2,
            run_dir=tmp_path, progress=False, eval_fn=snapshot)
    err = info.value
    assert (err.epoch, err.step, err.global_step) == (2, 3, 7)
    assert math.isnan(err.loss)
    assert err.checkpoint == tmp_path / CHECKPOINT
    assert err.history["epoch"] == [1] and len(err.history["step_loss"]) == 6
    assert list(snapshots) == [1]

    # The checkpoint is still the one of epoch 1, untouched by the failing epoch.
    fresh_model, fresh_guide = build(data, seed=5)
    ckpt = load_checkpoint(err.checkpoint, fresh_model, fresh_guide)
    assert ckpt["epoch"] == 1
    assert_same_state(state(fresh_model), snapshots[1][0])
    assert_same_state(state(fresh_guide), snapshots[1][1])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # The failing step was not applied: the in-memory parameters are finite.
    assert all(torch.isfinite(v).all() for v in state(model).values())
    metrics = json.loads((tmp_path / METRICS).read_text())
    assert metrics["history"]["status"] == "diverged"
    assert metrics["history"]["diverged_at"]["epoch"] == 2


def test_divergence_in_first_epoch_without_run_dir(data):
    model, guide = build(data)
    with pytest.raises(TrainingDiverged, match="no checkpoint was written") as info:
        fit(model, guide, NaNAfter(0), data, epochs=2, batch_size=32, progress=False)
    assert (info.value.epoch, info.value.step) == (1, 1)
    assert info.value.checkpoint is None


def test_bad_arguments(data):
    model, guide = build(data)
    with pytest.raises(ValueError, match="larger than the training set"):
        fit(model, guide, MaskedMultimodalELBO(), data, epochs=1, batch_size=1000,
            progress=False)
    bad = dict(data)
    bad["m1"] = bad["m1"].clone()
    bad["m1"][3, 0] = float("nan")
    with pytest.raises(ValueError, match="modality 'm1'"):
        fit(model, guide, MaskedMultimodalELBO(), bad, epochs=1, batch_size=32, progress=False)
    with pytest.raises(ValueError, match="lr must be positive"):
        fit(model, guide, MaskedMultimodalELBO(), data, epochs=1, batch_size=32, lr=0.0,
            progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_unavailable_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_corrupted_checkpoint_is_a_clear_error(data, tmp_path):
    from pyro_mmvae.train import CheckpointError

    model, guide = build(data)
    fit(model, guide, MaskedMultimodalELBO(), data, epochs=1, batch_size=50, run_dir=tmp_path,
        progress=False)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="checkpoint.pt.*corrupted"):
        load_checkpoint(path, model, guide)
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(path, model, guide)


# --------------------------------------------------------------------------- overhead (issue 11.4)

class FlagRecorder(MaskedMultimodalELBO):
    """The masked bound, recording Pyro's validation flags and the optimiser's size per step."""

    def __init__(self, optims, **kwargs):
        super().__init__(**kwargs)
        self.optims = optims
        self.flags, self.warmup_flags, self.built = [], [], []

    @staticmethod
    def _flags():
        import pyro.distributions
        import pyro.infer.util
        import pyro.poutine
        flags = (pyro.infer.util.is_validation_enabled(), pyro.poutine.is_validation_enabled(),
                 pyro.distributions.is_validation_enabled())
        assert len(set(flags)) == 1, flags
        return flags[0]

    def loss(self, model, guide, data, mask=None):
        self.warmup_flags.append(self._flags())
        return super().loss(model, guide, data, mask)

    def loss_and_grads(self, model, guide, data, mask=None):
        import pyro
        self.flags.append(self._flags())
        self.built.append((len(pyro.get_param_store()), len(self.optims[-1].optim_objs)))
        return super().loss_and_grads(model, guide, data, mask)


@pytest.fixture
def recorder(monkeypatch):
    import pyro_mmvae.train.loop as train

    optims = []

    def make(*args, **kwargs):
        optims.append(real(*args, **kwargs))
        return optims[-1]

    real = train.make_optimizer
    monkeypatch.setattr(train, "make_optimizer", make)
    return lambda: FlagRecorder(optims)


@pytest.mark.parametrize("global_setting", [True, False])
@pytest.mark.parametrize("validate, expected", [
    ("first", [True] + [False] * 7), ("always", [True] * 8), ("never", [False] * 8)])
def test_validation_on_the_first_step_only(data, recorder, global_setting, validate, expected):
    import pyro

    model, guide = build(data)
    elbo = recorder()
    seen_by_eval = []
    pyro.enable_validation(global_setting)
    try:
        fit(model, guide, elbo, data, epochs=2, batch_size=32, progress=False, validate=validate,
            eval_fn=lambda epoch: seen_by_eval.append(elbo._flags()) or {})
        assert elbo.flags == expected
        assert elbo.warmup_flags == [validate != "never"]  # the registration pass
        assert seen_by_eval == [global_setting] * 2  # eval_fn sees the caller's setting
        assert elbo._flags() is global_setting  # restored after fit
    finally:
        pyro.enable_validation(True)


def test_validation_restored_after_divergence(data):
    import pyro

    model, guide = build(data)
    pyro.enable_validation(False)
    try:
        with pytest.raises(TrainingDiverged):
            fit(model, guide, NaNAfter(0), data, epochs=2, batch_size=32, progress=False)
        assert not pyro.infer.util.is_validation_enabled()
    finally:
        pyro.enable_validation(True)


def test_bad_validate_argument(data):
    model, guide = build(data)
    with pytest.raises(ValueError, match="validate must be one of"):
        fit(model, guide, MaskedMultimodalELBO(), data, epochs=1, batch_size=32,
            progress=False, validate="sometimes")


def test_optimiser_built_before_the_first_step(data, recorder):
    model, guide = build(data)
    elbo = recorder()
    fit(model, guide, elbo, data, epochs=1, batch_size=32, progress=False)
    params, optims = elbo.built[0]
    assert params > 0 and optims == params  # registered and built before step 1
    assert len(set(elbo.built)) == 1


def test_registration_pass_leaves_no_trace(data):
    """The untimed registration pass restores every RNG and makes no update: fit's first step
    has exactly the loss of a plain SVI step from the same seeds and batch."""
    import pyro
    from pyro.infer import SVI

    from pyro_mmvae.train import make_optimizer

    model, guide = build(data)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)  # what fit(seed=0) does, and its first batch
    idx = torch.randperm(128, generator=torch.Generator().manual_seed(0))[:32]
    svi = SVI(model, guide, make_optimizer(1e-2), loss=MaskedMultimodalELBO())
    first = svi.step({m: x[idx] for m, x in data.items()}, None) / 32
    second = svi.step({m: x[idx] for m, x in data.items()}, None) / 32

    model, guide = build(data)
    history = fit(model, guide, MaskedMultimodalELBO(), data, epochs=1, batch_size=32,
                  lr=1e-2, progress=False)
    assert history["step_loss"][0] == first
    assert second != first  # (a pre-step update would have shown)


def _hand_written(dims):
    """A model and a guide written by hand: plain ``nn.Module`` s whose ``forward`` registers
    its networks with ``pyro.module`` and a parameter with ``pyro.param``."""
    import pyro
    import pyro.distributions as dist
    from torch import nn

    from pyro_mmvae.protocol import DATA_PLATE, observe

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.decoders = nn.ModuleDict({m: nn.Linear(LATENT, d) for m, d in dims.items()})

        def forward(self, data, mask):
            pyro.module("decoders", self.decoders)
            scale = pyro.param("noise", torch.tensor(1.0), constraint=dist.constraints.positive)
            n = next(iter(data.values())).shape[0]
            with pyro.plate(DATA_PLATE, n):
                z = pyro.sample("z", dist.Normal(torch.zeros(LATENT), 1.0).to_event(1))
                for m in dims:
                    observe(m, dist.Normal(self.decoders[m](z), scale).to_event(1), data, mask)

    class Guide(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(sum(dims.values()), 2 * LATENT)

        def forward(self, data, mask):
            pyro.module("encoder", self.encoder)
            loc, raw = self.encoder(torch.cat([data[m] for m in dims], -1)).chunk(2, -1)
            with pyro.plate(DATA_PLATE, loc.shape[0]):
                pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw)).to_event(1))

    torch.manual_seed(3)
    return Model(), Guide()


@pytest.mark.parametrize("programs, clip_norm", [("library", None), ("hand-written", None),
                                                 ("autoguide", None), ("library", 0.5)])
@pytest.mark.parametrize("clear_store", [False, True])
def test_fit_steps_exactly_as_svi(data, programs, clip_norm, clear_store):
    """fit finds the parameters once instead of at every step, and skips the library modules'
    registration after that: its parameters after 2 epochs equal a plain SVI loop's bit for bit
    (with the shared Adam and with ClippedAdam), also when the store is cleared between epochs
    (eval_fn) and must be found again."""
    import pyro
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal

    from pyro_mmvae.train import make_optimizer

    def make():
        if programs == "library":
            return build(data) + (MaskedMultimodalELBO(),)
        model, guide = (build(data)[0], None) if programs == "autoguide" else \
            _hand_written({m: x.shape[1] for m, x in data.items()})
        if guide is None:
            guide = AutoNormal(pyro.poutine.block(model, hide=["obs_" + m for m in data]))
        return model, guide, Trace_ELBO()

    def values():
        return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    def clear(epoch):  # after the first of the two epochs
        if clear_store and epoch == 1:
            pyro.clear_param_store()
        return {}

    # the reference: SVI.step on fit's batches, seeds and registration pass
    model, guide, loss = make()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    generator = torch.Generator().manual_seed(0)
    svi = SVI(model, guide, make_optimizer(1e-2, clip_norm), loss=loss)
    state_rng = torch.get_rng_state()
    with pyro.poutine.trace(param_only=True):
        loss.loss(model, guide, {m: x[:32] for m, x in data.items()}, None)
    torch.set_rng_state(state_rng)
    reference = []
    for epoch in (1, 2):
        for batch, mask in iterate_minibatches(data, None, batch_size=32, generator=generator):
            reference.append(svi.step(batch, mask) / 32)
        clear(epoch)
    expected = values()

    model, guide, loss = make()
    history = fit(model, guide, loss, data, epochs=2, batch_size=32, lr=1e-2, progress=False,
                  eval_fn=clear, clip_norm=clip_norm)
    assert history["step_loss"] == reference
    got = values()
    assert got.keys() == expected.keys() and len(got) > 0
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


@pytest.mark.parametrize("validate", ["first", "never"])
def test_nan_data_is_refused_before_training_whatever_the_validation(data, validate):
    """Per step the data's finiteness is checked only under Pyro's validation (validate_batch);
    fit checks the whole training set first, also with validate="never"."""
    import pyro

    from pyro_mmvae.protocol import validate_batch

    bad = {m: x.clone() for m, x in data.items()}
    bad["m1"][100, 0] = float("nan")  # past the first batches
    model, guide = build(data)
    with pytest.raises(ValueError, match=r"modality 'm1': NaN or infinite values in observed "
                                         r"data points \[100\]"):
        fit(model, guide, MaskedMultimodalELBO(), bad, epochs=1, batch_size=32,
            progress=False, validate=validate)
    with pyro.validation_enabled(False):
        assert validate_batch(bad)["m1"].all()  # the step's check reads no values
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="NaN"):
        validate_batch(bad)


def test_a_batch_transform_is_applied_and_resumes_exactly(data, tmp_path):
    """fit(transform=) draws from the shuffling generator, which checkpoints save: a resumed run
    equals the uninterrupted one; every step (and the registration pass) sees the transform."""
    seen = []

    def jitter(batch, mask, generator):
        seen.append(1)
        noise = {m: 0.1 * torch.randn(x.shape, generator=generator) for m, x in batch.items()}
        return {m: x + noise[m] for m, x in batch.items()}, mask

    model, guide = build(data)
    full = fit(model, guide, MaskedMultimodalELBO(), data, epochs=2, batch_size=32, lr=1e-2,
               progress=False, transform=jitter)
    assert len(seen) == 1 + 2 * 4  # the registration pass and 8 steps
    expected = state(model)
    plain = fit(*build(data), MaskedMultimodalELBO(), data, epochs=2, batch_size=32, lr=1e-2,
                progress=False)
    assert plain["loss"] != full["loss"]
    model, guide = build(data)
    fit(model, guide, MaskedMultimodalELBO(), data, epochs=1, batch_size=32, lr=1e-2,
        run_dir=tmp_path / "a", progress=False, transform=jitter)
    model, guide = build(data, seed=7)
    resumed = fit(model, guide, MaskedMultimodalELBO(), data, epochs=2, batch_size=32, lr=1e-2,
                  progress=False, transform=jitter, resume_from=tmp_path / "a" / CHECKPOINT)
    assert resumed["loss"] == pytest.approx(full["loss"], rel=1e-6)
    for k, v in state(model).items():
        assert torch.allclose(v, expected[k], rtol=1e-5, atol=1e-6), k


# --- frozen parameters and two-stage training (tVAE) -------------------------------------------

class _OwnParameterModel(pyro.nn.PyroModule):
    """A PyroModule with an ``nn.Parameter`` of its own (``pyro.param`` stores it, turning
    ``requires_grad`` on) and a plain ``nn.Linear`` child (``pyro.module`` registers it)."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(3))
        self.dec = torch.nn.Linear(1, 3)

    def forward(self, data, mask=None):
        x = data["x"]
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
            pyro.sample("x_x", dist.Normal(self.dec(z) * self.gain, 1.0).to_event(1), obs=x)


class _LinearGuide(pyro.nn.PyroModule):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Linear(3, 2)

    def forward(self, data, mask=None):
        loc, raw = self.enc(data["x"]).chunk(2, -1)
        with pyro.plate("data", data["x"].shape[0]):
            pyro.sample("z", dist.Normal(loc, torch.nn.functional.softplus(raw) + 1e-3)
                        .to_event(1))


@pytest.mark.parametrize("frozen", ["own", "child", "both"])
def test_parameters_with_requires_grad_false_stay_frozen(frozen):
    """Under fit a frozen parameter is neither optimised nor turned back on — a PyroModule's
    own nn.Parameter (which pyro.param re-enables when it stores it) included — the others
    train, and pyro.module's warning about the frozen ones (an error under this suite's
    filterwarnings) is not raised."""
    torch.manual_seed(0)
    model, guide = _OwnParameterModel(), _LinearGuide()
    held = {"own": [model.gain], "child": list(model.dec.parameters()),
            "both": list(model.parameters())}[frozen]
    for p in held:
        p.requires_grad_(False)
    before = state(model), state(guide)
    x = {"x": torch.randn(32, 3) + 2.0}
    history = fit(model, guide, Trace_ELBO(), x, epochs=3, batch_size=8, lr=0.1, progress=False)
    assert history["status"] == "completed"
    after = state(model)
    for name, p in model.named_parameters():
        changed = not torch.equal(after[name], before[0][name])
        assert changed is (not any(p is q for q in held)), name
    assert all(not p.requires_grad for p in held)
    assert any(not torch.equal(v, before[1][k]) for k, v in state(guide).items())


def tvae_problem(n=64):
    model, data = linear_problem(n=n, dims={"a": 4, "b": 3})
    guide = MultimodalGuide({m: torch.nn.Identity() for m in ("a", "b")},
                            SubsetEncoders(4, 2, 2, branch_dim=8, hidden=(8,)))
    data["b"] = torch.cat([data["b"], torch.zeros(n, 1)], -1)  # equal widths for Identity
    model.decoders["b"].net = torch.nn.Linear(2, 4)
    return model, guide, data


def test_two_stage_training_freezes_the_model_and_moves_each_stage_s_encoders():
    """After stage 2 the model is bit for bit what stage 1 left (a plain fit of the joint
    stage from the same initial state), the singleton encoders moved in stage 2 only and the
    full-set encoder in stage 1 only; requires_grad is restored."""
    model, guide, data = tvae_problem()
    ref_model, ref_guide = copy.deepcopy(model), copy.deepcopy(guide)
    init = state(guide)
    kwargs = dict(batch_size=16, lr=1e-2, progress=False, seed=3)
    h1, h2 = fit_two_stage(model, guide, data, epochs=(3, 4), **kwargs)
    assert len(h1["loss"]) == 3 and len(h2["loss"]) == 4
    fit(ref_model, ref_guide, JointMultimodalELBO(alpha=0.0), data, epochs=3, **kwargs)
    assert_same_state(state(model), state(ref_model))  # frozen through stage 2
    stage1, final = state(ref_guide), state(guide)
    full = 2  # subset index of {a, b}; 0 and 1 are {a} and {b}
    for name in init:
        assert torch.equal(final[name][full], stage1[name][full]), name  # not in stage 2
        assert not torch.equal(stage1[name][full], init[name][full]), name  # but in stage 1
        for k in (0, 1):
            assert torch.equal(stage1[name][k], init[name][k]), name  # not in stage 1
            assert not torch.equal(final[name][k], stage1[name][k]), name  # but in stage 2
    assert all(p.requires_grad for p in model.parameters())


def test_stage_two_loss_is_the_sum_of_the_unimodal_elbos(monkeypatch):
    """One full-batch stage-2 step reports -sum_n sum_m [E_q(z|x_m) log p(x_m|z) -
    KL(q(z|x_m) || N(0, I))], computed here directly from the guide's unimodal posteriors and
    the decoders with the same (fixed) noise."""
    model, guide, data = tvae_problem(n=16)
    eps = torch.tensor([0.3, -1.1])
    monkeypatch.setattr(torch.distributions.normal, "_standard_normal",
                        lambda shape, dtype, device: eps.to(dtype).expand(shape).clone())
    n = 16
    direct = 0.0
    with torch.no_grad():
        for m in ("a", "b"):
            q = guide.distribution(data, {k: torch.full((n,), k == m) for k in ("a", "b")})
            z = q.base_dist.loc + q.base_dist.scale * eps
            prior = dist.Normal(torch.zeros(2), 1.0).to_event(1)
            direct += (model.decoders[m](z).log_prob(data[m])
                       - torch.distributions.kl_divergence(q, prior)).sum()
    h1, h2 = fit_two_stage(model, guide, data, epochs=(0, 1), batch_size=n, lr=1e-2,
                           progress=False)
    assert h1["step_loss"] == []
    assert h2["step_loss"][0] * n == pytest.approx(-float(direct), rel=1e-10)


def test_two_stage_arguments_and_run_dirs(tmp_path):
    model, guide, data = tvae_problem(n=32)
    with pytest.raises(ValueError, match="pair of integers"):
        fit_two_stage(model, guide, data, epochs=3, batch_size=8)
    with pytest.raises(ValueError, match="beta sets the default losses"):
        fit_two_stage(model, guide, data, epochs=(1, 1), batch_size=8, beta=2.0,
                      losses=(Trace_ELBO(), Trace_ELBO()))
    with pytest.raises(TypeError, match="resume_from"):
        fit_two_stage(model, guide, data, epochs=(1, 1), batch_size=8, resume_from="x")
    fit_two_stage(model, guide, data, epochs=(1, 1), batch_size=8, progress=False,
                  run_dir=tmp_path, frozen=[guide.encoders])
    assert (tmp_path / "stage1" / CHECKPOINT).is_file()
    assert (tmp_path / "stage2" / CHECKPOINT).is_file()


@pytest.mark.parametrize("elbo", ["Trace_ELBO", "TraceMeanField_ELBO"])
def test_library_programs_train_under_pyro_s_own_elbos_as_under_svi(data, elbo):
    """A library model and guide under Pyro's Trace_ELBO / TraceMeanField_ELBO: fit's steps are
    SVI's, bit for bit. (Those ELBOs call backward only when their traces hold a param site,
    so skipping the library modules' registration there left every step after the first
    without gradients.)"""
    from pyro.infer import SVI, TraceMeanField_ELBO

    from pyro_mmvae.train import make_optimizer

    make_loss = {"Trace_ELBO": Trace_ELBO, "TraceMeanField_ELBO": TraceMeanField_ELBO}[elbo]
    model, guide = build(data)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    generator = torch.Generator().manual_seed(0)
    svi = SVI(model, guide, make_optimizer(1e-2), loss=make_loss())
    rng = torch.get_rng_state()
    make_loss().loss(model, guide, {m: x[:32] for m, x in data.items()}, None)  # registration
    torch.set_rng_state(rng)
    reference = [svi.step(batch, mask) / 32 for epoch in (1, 2) for batch, mask in
                 iterate_minibatches(data, None, batch_size=32, generator=generator)]
    expected = state(model), state(guide)
    model, guide = build(data)
    history = fit(model, guide, make_loss(), data, epochs=2, batch_size=32, lr=1e-2,
                  progress=False)
    assert history["step_loss"] == reference
    assert_same_state(state(model), expected[0])
    assert_same_state(state(guide), expected[1])


def test_two_stage_frozen_holds_shared_feature_encoders_fixed_in_stage_two():
    """``frozen=`` modules (here the guide's shared MLP feature encoders, which the joint
    encoder also reads) move in stage 1, stay bit for bit in stage 2, and get their
    requires_grad back; without ``frozen`` they move in stage 2 too."""
    def problem():
        model, data = linear_problem(n=48, dims={"a": 4, "b": 3})
        torch.manual_seed(1)
        guide = MultimodalGuide({"a": torch.nn.Linear(4, 5), "b": torch.nn.Linear(3, 5)},
                                SubsetEncoders(5, 2, 2, branch_dim=8, hidden=(8,)))
        return model, guide, data

    kwargs = dict(batch_size=16, lr=1e-2, progress=False, seed=2)
    model, guide, data = problem()
    init = {k: v.clone() for k, v in guide.encoders.state_dict().items()}
    fit_two_stage(model, guide, data, epochs=(2, 0), **kwargs)
    after_joint = {k: v.clone() for k, v in guide.encoders.state_dict().items()}
    assert any(not torch.equal(init[k], after_joint[k]) for k in init)  # stage 1 moves them

    model, guide, data = problem()
    fit_two_stage(model, guide, data, epochs=(2, 2), frozen=[guide.encoders], **kwargs)
    assert_same_state(guide.encoders.state_dict(), after_joint)
    assert all(p.requires_grad for p in guide.encoders.parameters())

    model, guide, data = problem()
    fit_two_stage(model, guide, data, epochs=(2, 2), **kwargs)
    moved = guide.encoders.state_dict()
    assert any(not torch.equal(moved[k], after_joint[k]) for k in moved)


def test_gradient_transform_and_caller_seeded_rng_reproduce_a_hand_written_loop(data):
    """fit(seed=None, generator=g, gradient_transform=clamp_gradients(c)) takes the steps of a
    plain torch loop that shuffles with g, clamps every gradient element and runs Adam, drawing
    from the global RNG as it stands (the clip is small enough to bind)."""
    from pyro_mmvae.train import clamp_gradients

    runs = []
    for use_fit in (False, True):
        model, guide = build(data, seed=3)
        pyro.clear_param_store()
        torch.manual_seed(11)
        gen = torch.Generator().manual_seed(5)
        if use_fit:
            hist = fit(model, guide, MaskedMultimodalELBO(), data, epochs=3, batch_size=32,
                       lr=1e-2, seed=None, generator=gen, progress=False,
                       gradient_transform=clamp_gradients(0.05))
            losses = hist["loss"]
        else:
            losses = clamped_adam_loop(MaskedMultimodalELBO(), model, guide, data, epochs=3,
                                       batch_size=32, lr=1e-2, limit=0.05,
                                       generator=gen)["loss"]
        runs.append((losses, state(model), state(guide)))
    (la, ma, ga), (lb, mb, gb) = runs
    assert lb == pytest.approx(la, rel=1e-10)
    for a, b in ((ma, mb), (ga, gb)):
        for k in a:
            assert torch.allclose(a[k], b[k], rtol=1e-9, atol=1e-12), k
    # and the clip binds: without it the run differs
    model, guide = build(data, seed=3)
    torch.manual_seed(11)
    free = fit(model, guide, MaskedMultimodalELBO(), data, epochs=3, batch_size=32, lr=1e-2,
               seed=None, generator=torch.Generator().manual_seed(5), progress=False)
    assert free["loss"][-1] != pytest.approx(lb[-1], rel=1e-6)


def test_clamp_gradients_zeroes_nans_and_clips_in_place():
    from pyro_mmvae.train import clamp_gradients

    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([float("nan"), 3.0, -3.0, 0.5])
    view = p.grad
    clamp_gradients(1.0)([p])
    assert p.grad is view
    assert p.grad.tolist() == [0.0, 1.0, -1.0, 0.5]
    p.grad = torch.tensor([float("nan"), 3.0, -3.0, 0.5])
    clamp_gradients(1.0, nan_to_zero=False)([p])
    assert math.isnan(p.grad[0]) and p.grad[1:].tolist() == [1.0, -1.0, 0.5]
    with pytest.raises(ValueError, match="limit"):
        clamp_gradients(0.0)
    model, guide = build(shared_latent_study(num_points=16, num_modalities=2, latent_dim=LATENT,
                                             dim_range=(3, 4), seed=0).data)
    with pytest.raises(ValueError, match="generator"):
        fit(model, guide, MaskedMultimodalELBO(), {"m0": torch.zeros(4, 3)}, epochs=1,
            batch_size=2, seed=None, progress=False)


def test_fit_takes_a_multimodal_dataset_with_its_mask(data):
    from pyro_mmvae.data import MultimodalDataset

    mask = {m: torch.arange(128) % 3 != i for i, m in enumerate(data)}
    runs = []
    for as_dataset in (True, False):
        model, guide = build(data)
        args = ((MultimodalDataset(data, mask),), {}) if as_dataset else ((data,), {"mask": mask})
        hist = fit(model, guide, MaskedMultimodalELBO(), *args[0], epochs=2, batch_size=32,
                   progress=False, **args[1])
        runs.append((hist["loss"], state(model)))
    assert runs[0][0] == runs[1][0]
    assert_same_state(runs[0][1], runs[1][1])
    with pytest.raises(ValueError, match="has its own mask"):
        fit(model, guide, MaskedMultimodalELBO(), MultimodalDataset(data, mask), mask=mask,
            epochs=1, batch_size=32, progress=False)
