"""beta schedules (pyro_mmvae.infer.schedules) and log-variance Gaussian experts."""

import math
import pickle

import pyro
import pytest
import torch
from pyro.distributions import Normal

from pyro_mmvae.data import shared_latent_study
from pyro_mmvae.guides import (GatedMoE, MoE, MoPoE, MultimodalGuide, PoE, SelfAttentionMixture,
                               SumPooling, expert_encoder)
from pyro_mmvae.infer import (MaskedMultimodalELBO, MixtureMultimodalELBO,
                              SubsampledMultimodalELBO, linear_warmup)
from pyro_mmvae.infer.schedules import check_schedule, schedule_value
from pyro_mmvae.models import LinearGaussianModel
from pyro_mmvae.train import CHECKPOINT, fit, load_checkpoint

LATENT = 2


@pytest.fixture
def data():
    """Tiny linear-Gaussian problem: 2 modalities of dims 3..5, 128 points."""
    return shared_latent_study(num_points=128, num_modalities=2, latent_dim=LATENT,
                               dim_range=(3, 6), seed=1).data


def build(data, seed=0, aggregator=None):
    torch.manual_seed(seed)
    dims = {m: x.shape[1] for m, x in data.items()}
    model = LinearGaussianModel(dims, LATENT)
    guide = MultimodalGuide({m: expert_encoder(d, LATENT, hidden=(16,)) for m, d in dims.items()},
                            aggregator if aggregator is not None else PoE())
    return model, guide


# --------------------------------------------------------------------------- linear_warmup

def test_linear_warmup_values():
    w = linear_warmup(4)
    assert [w(k) for k in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    w = linear_warmup(2, start=0.5, end=2.0)
    assert [w(k) for k in range(4)] == [0.5, 1.25, 2.0, 2.0]
    assert repr(w) == "linear_warmup(steps=2, start=0.5, end=2.0)"
    assert pickle.loads(pickle.dumps(w))(1) == 1.25  # picklable (no closure)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"steps": 2.5}, "steps must be an integer >= 1"),
    ({"steps": 3, "start": -0.1}, "start must be a finite number >= 0"),
    ({"steps": 3, "end": float("nan")}, "end must be a finite number >= 0"),
    ({"steps": 3, "end": 0.0}, "end must be > 0"),
])
def test_linear_warmup_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        linear_warmup(**kwargs)


def test_schedule_values_are_checked():
    assert schedule_value(lambda k: torch.tensor(0.5), 3) == 0.5
    with pytest.raises(ValueError, match=r"beta schedule returned nan at step 2"):
        check_schedule(lambda k: float("nan") if k == 2 else 1.0, range(5))
    with pytest.raises(ValueError, match=r"beta schedule returned -1.0 at step 0; beta must be"):
        schedule_value(lambda k: -1.0, 0)
    with pytest.raises(TypeError, match=r"beta schedule returned str"):
        schedule_value(lambda k: "1", 0)


# --------------------------------------------------------------------------- the bounds

def test_bound_takes_a_schedule_and_set_step():
    elbo = MaskedMultimodalELBO(beta=linear_warmup(4, start=0.0, end=2.0))
    assert elbo.beta == 0.0 and elbo.step == 0  # beta(0): a schedule may start at 0
    elbo.set_step(3)
    assert elbo.beta == 1.5 and elbo.step == 3
    elbo.set_step(100)
    assert elbo.beta == 2.0
    const = MaskedMultimodalELBO(beta=0.5)
    const.set_step(7)
    assert const.beta == 0.5 and const.step == 7
    with pytest.raises(ValueError, match="step must be >= 0"):
        elbo.set_step(-1)
    with pytest.raises(AttributeError):
        elbo.beta = 1.0  # through the documented API only


def test_bad_schedule_is_a_value_error_naming_beta():
    with pytest.raises(ValueError, match=r"beta schedule returned inf at step 0"):
        MaskedMultimodalELBO(beta=lambda k: float("inf"))
    elbo = MaskedMultimodalELBO(beta=lambda k: 1.0 - 0.25 * k)
    elbo.set_step(4)
    assert elbo.beta == 0.0
    with pytest.raises(ValueError, match=r"beta schedule returned -0.25 at step 5"):
        elbo.set_step(5)
    assert elbo.step == 4 and elbo.beta == 0.0  # a refused step changes nothing
    with pytest.raises(ValueError, match=r"beta schedule returned -0.25 at step 5"):
        elbo.check_beta(range(10))


BOUNDS = [
    (MaskedMultimodalELBO, {}, PoE),
    (MaskedMultimodalELBO, {"iwae": True, "num_particles": 3}, PoE),
    (SubsampledMultimodalELBO, {}, PoE),
    (MixtureMultimodalELBO, {}, MoE),
    (MixtureMultimodalELBO, {"iwae": True, "num_particles": 3}, MoPoE),
]


@pytest.mark.parametrize("cls, kwargs, aggregator", BOUNDS,
                         ids=lambda x: getattr(x, "__name__", str(x)))
def test_bound_under_a_schedule_equals_the_constant_bound(data, cls, kwargs, aggregator):
    """At step k the scheduled bound is the bound with beta = schedule(k): values and grads."""
    schedule = linear_warmup(4, start=0.1, end=2.0)
    model, guide = build(data, aggregator=aggregator())
    batch = {m: x[:16] for m, x in data.items()}
    scheduled = cls(beta=schedule, **kwargs)

    def run(elbo):
        pyro.set_rng_seed(3)
        loss = elbo.differentiable_loss(model, guide, batch)
        params = [p for p in list(model.parameters()) + list(guide.parameters())]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.detach(), grads

    for k in (1, 3, 6):
        scheduled.set_step(k)
        assert scheduled.beta == schedule(k)
        got, got_grads = run(scheduled)
        want, want_grads = run(cls(beta=schedule(k), **kwargs))
        assert torch.equal(got, want), k
        for g, w in zip(got_grads, want_grads):
            assert (g is None and w is None) or torch.equal(g, w), k
    # and the schedule matters: steps 1 and 3 give different values
    scheduled.set_step(1)
    one = run(scheduled)[0]
    scheduled.set_step(3)
    assert not torch.equal(one, run(scheduled)[0])


# --------------------------------------------------------------------------- fit drives the step

class Recording(MaskedMultimodalELBO):
    """The masked bound, recording beta at every training step."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.betas = []

    def loss_and_grads(self, model, guide, data, mask=None):
        self.betas.append(self.beta)
        return super().loss_and_grads(model, guide, data, mask)


def test_fit_advances_the_schedule(data):
    model, guide = build(data)
    elbo = Recording(beta=linear_warmup(6))
    fit(model, guide, elbo, data, epochs=2, batch_size=32, lr=1e-2, progress=False)
    assert elbo.betas == [k / 6 for k in range(6)] + [1.0, 1.0]  # 4 steps per epoch
    assert elbo.step == 8  # the step it would take next


def test_fit_refuses_a_bad_schedule_before_any_step(data):
    model, guide = build(data)
    elbo = Recording(beta=lambda k: 1.0 if k < 6 else float("nan"))
    with pytest.raises(ValueError, match=r"beta schedule returned nan at step 6"):
        fit(model, guide, elbo, data, epochs=2, batch_size=32, progress=False)
    assert elbo.betas == []  # nothing trained
    # the same schedule is fine for the steps a shorter run takes (0..4, and 4 after it)
    fit(model, guide, elbo, data, epochs=1, batch_size=32, progress=False)
    assert len(elbo.betas) == 4


def test_resume_restores_the_step(data, tmp_path):
    schedule = linear_warmup(10, start=0.05)
    model, guide = build(data)
    full_elbo = Recording(beta=schedule)
    full = fit(model, guide, full_elbo, data, epochs=3, batch_size=32, lr=1e-2, progress=False)
    expected = {k: v.detach().clone() for k, v in model.state_dict().items()}

    model, guide = build(data)
    part = Recording(beta=schedule)
    fit(model, guide, part, data, epochs=1, batch_size=32, lr=1e-2, run_dir=tmp_path / "a",
        progress=False)
    assert load_checkpoint(tmp_path / "a" / CHECKPOINT)["step"] == 4
    model, guide = build(data, seed=7)
    resumed_elbo = Recording(beta=schedule)
    resumed = fit(model, guide, resumed_elbo, data, epochs=3, batch_size=32, lr=1e-2,
                  run_dir=tmp_path / "b", progress=False,
                  resume_from=tmp_path / "a" / CHECKPOINT)
    assert resumed_elbo.betas == [schedule(k) for k in range(4, 12)]
    assert part.betas + resumed_elbo.betas == full_elbo.betas
    assert resumed_elbo.step == 12
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT)["step"] == 12
    assert resumed["loss"] == full["loss"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_resume_from_a_checkpoint_without_a_step(data, tmp_path):
    """Checkpoints written before the step was stored: epoch x steps per epoch."""
    schedule = linear_warmup(10)
    model, guide = build(data)
    fit(model, guide, Recording(beta=schedule), data, epochs=1, batch_size=32,
        run_dir=tmp_path, progress=False)
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    del ckpt["step"]
    torch.save(ckpt, tmp_path / CHECKPOINT)
    elbo = Recording(beta=schedule)
    fit(model, guide, elbo, data, epochs=2, batch_size=32, progress=False,
        resume_from=tmp_path / CHECKPOINT)
    assert elbo.betas == [schedule(k) for k in range(4, 8)]


# --------------------------------------------------------------------------- logvar experts

def test_logvar_expert_gives_the_expected_normal():
    torch.manual_seed(0)
    loc, logvar = torch.randn(5, 3), torch.randn(5, 3)
    other = torch.randn(5, 6)
    features = torch.stack([torch.cat([loc, logvar], -1), other], dim=-2)  # (B, M=2, 2D)
    mask = torch.tensor([True, False]).expand(5, 2)
    for min_scale in (0.0, 1e-3):
        q = PoE(prior_expert=False, min_scale=min_scale, scale="logvar")(features, mask)
        want = Normal(loc, torch.exp(0.5 * logvar) + min_scale)
        assert torch.allclose(q.base_dist.loc, want.loc)
        assert torch.allclose(q.base_dist.scale, want.scale)
        z = torch.randn(5, 3)
        assert torch.allclose(q.log_prob(z), want.log_prob(z).sum(-1))
    # the softplus default is unchanged, and a different distribution
    q = PoE(prior_expert=False)(features, mask)
    assert torch.allclose(q.base_dist.scale, torch.nn.functional.softplus(logvar) + 1e-3)
    # with the prior expert: precisions add, 1 + 1/sigma^2
    q = PoE(scale="logvar", min_scale=0.0)(features, mask)
    prec = 1 + torch.exp(-logvar)
    assert torch.allclose(q.base_dist.scale, prec.rsqrt())
    assert torch.allclose(q.base_dist.loc, torch.exp(-logvar) * loc / prec)


@pytest.mark.parametrize("cls", [MoE, MoPoE])
def test_logvar_mixtures(cls):
    torch.manual_seed(1)
    features = torch.randn(4, 2, 6)
    mask = torch.tensor([[True, False]]).expand(4, 2)
    kwargs = {"prior_expert": False} if cls is MoPoE else {}
    q = cls(scale="logvar", min_scale=0.0, **kwargs)(features, mask)
    loc, logvar = features[:, 0].chunk(2, -1)
    z = torch.randn(4, 3)
    # only the first modality's expert is available: the mixture is that Normal
    want = Normal(loc, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    assert torch.allclose(q.log_prob(z), want)
    assert not torch.allclose(cls(**kwargs)(features, mask).log_prob(z), want)


def test_bad_scale():
    for cls in (PoE, MoE, MoPoE):
        with pytest.raises(ValueError, match=r"scale must be one of \('softplus', 'logvar'\)"):
            cls(scale="log_scale")


def test_logvar_guide_trains(data):
    model, guide = build(data, aggregator=PoE(scale="logvar"))
    history = fit(model, guide, MaskedMultimodalELBO(beta=linear_warmup(8)), data, epochs=3,
                  batch_size=32, lr=2e-2, progress=False)
    assert all(math.isfinite(v) for v in history["loss"])
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("name", ["SumPooling", "SelfAttentionMixture", "GatedMoE"])
def test_logvar_heads_train_under_a_warmup(data, name):
    """The other log-variance heads (tests/guides/test_expert_scale.py) train under a warm-up."""
    small = dict(hidden_dim=8, pooling_dim=8, scale="logvar")
    aggregator, bound = {
        "SumPooling": lambda: (SumPooling(2 * LATENT, LATENT, **small), MaskedMultimodalELBO),
        "SelfAttentionMixture": lambda: (SelfAttentionMixture(
            2 * LATENT, LATENT, num_components=2, attention_dim=8, mlp_dim=8, **small),
            MixtureMultimodalELBO),
        "GatedMoE": lambda: (GatedMoE(scale="logvar"), MixtureMultimodalELBO),
    }[name]()
    model, guide = build(data, aggregator=aggregator)
    elbo = bound(beta=linear_warmup(4))
    history = fit(model, guide, elbo, data, epochs=2, batch_size=32, lr=1e-2, progress=False)
    assert all(math.isfinite(v) for v in history["loss"])
    assert elbo.step == 8 and elbo.beta == 1.0
