"""MSNVI: the prior-dividing PoE, the four multi-source objectives and the conflict measure,
checked against a linear-Gaussian model whose single-source posteriors are diagonal (so a
Gaussian belief per source can be exact)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_mmvae.eval import CONFLICT_THRESHOLD, conflict_matrix, poe_agreement
from pyro_mmvae.guides import MoE, MultimodalGuide, PoE, expert_encoder
from pyro_mmvae.infer import MultiSourceELBO
from pyro_mmvae.models import LinearGaussianModel
from pyro_mmvae.protocol import full_mask

LATENT = 2
DIMS = {"a": 3, "b": 2, "c": 4}
NOISE = {"a": 0.5, "b": 0.8, "c": 0.6}


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    pyro.clear_param_store()
    yield
    torch.set_default_dtype(old)


def diagonal_model(seed=0):
    """x_m = z W_m^T + b_m + noise with W_m^T W_m diagonal: p(z | x_S) is diagonal for every S."""
    torch.manual_seed(seed)
    model = LinearGaussianModel(DIMS, LATENT, noise_scale=NOISE)
    with torch.no_grad():
        for m, d in DIMS.items():
            w = torch.zeros(d, LATENT)
            w[0, 0] = 1.0 + torch.rand(()).item()  # coordinate 0 from row 0
            w[1, 1] = 0.5 + torch.rand(()).item()  # coordinate 1 from row 1
            model.decoders[m].net.weight.copy_(w)
            model.decoders[m].net.bias.copy_(0.3 * torch.randn(d))
    return model


def exact_belief_encoder(model, m, positivity):
    """An nn.Linear whose features [mu, log-variance] give the exact p(z | x_m) as the belief
    of PoE(prior_expert="divide", scale="logvar", min_scale=0, positivity=...)."""
    w, b, s = model.linear_parameters(m)
    w, b, s = w.detach(), b.detach(), float(s)
    gram = (w.T @ w / s ** 2).diagonal()  # W^T W / sigma^2, diagonal
    prec = 1.0 + gram  # exact single-source posterior precision
    head = gram if positivity == "floor" else prec  # what the expert head must encode
    lin = nn.Linear(w.shape[0], 2 * LATENT)
    with torch.no_grad():
        # mean = prec^-1 W^T (x - b) / sigma^2
        lin.weight[:LATENT] = (w / s ** 2 / prec).T
        lin.bias[:LATENT] = -(b @ w / s ** 2) / prec
        lin.weight[LATENT:] = 0.0
        lin.bias[LATENT:] = -head.log()  # log-variance of the head
    return lin


def learned_guide(seed=4, hidden=(8,)):
    """A dividing-PoE guide of MLP experts (not exact)."""
    torch.manual_seed(seed)
    return MultimodalGuide({m: expert_encoder(d, LATENT, hidden=hidden)
                            for m, d in DIMS.items()}, PoE("divide"))


def exact_guide(model, positivity="floor"):
    return MultimodalGuide({m: exact_belief_encoder(model, m, positivity) for m in DIMS},
                           PoE("divide", min_scale=0.0, scale="logvar", positivity=positivity))


def sample_data(model, n=6, seed=1):
    pyro.set_rng_seed(seed)
    tr = pyro.poutine.trace(model).get_trace({}, {m: torch.zeros(n, dtype=torch.bool)
                                                  for m in DIMS})
    return {m: tr.nodes[f"x_{m}"]["value"].detach() for m in DIMS}


def subset_mask(n, subset):
    return {m: torch.full((n,), m in subset, dtype=torch.bool) for m in DIMS}


SUBSETS = [("a",), ("b",), ("a", "b"), ("a", "c"), ("a", "b", "c")]


@pytest.mark.parametrize("positivity", ["floor", "clamp"])
@pytest.mark.parametrize("subset", SUBSETS)
def test_dividing_poe_of_exact_beliefs_is_the_exact_posterior(subset, positivity):
    """MSNVI eq. 3: p(z | x_S) = p(z)^(1-|S|) prod_m p(z | x_m) / const."""
    model = diagonal_model()
    data = sample_data(model)
    mask = subset_mask(6, subset)
    q = exact_guide(model, positivity).distribution(data, mask)
    exact = model.exact_posterior(data, mask)
    assert torch.allclose(q.base_dist.loc, exact.mean, atol=1e-10)
    assert torch.allclose(q.base_dist.scale.pow(2), exact.variance, atol=1e-10)


@pytest.mark.parametrize("subset", SUBSETS)
def test_log_normalizer_is_the_agreement_of_the_sources(subset):
    """log Z_S = log p(x_S) - sum_{m in S} log p(x_m) for exact beliefs (eq. 3's constant)."""
    model = diagonal_model()
    data = sample_data(model)
    mask = subset_mask(6, subset)
    guide = exact_guide(model)
    expected = model.exact_log_likelihood(data, mask) - sum(
        model.exact_log_likelihood(data, subset_mask(6, (m,))) for m in subset)
    assert torch.allclose(poe_agreement(guide, data, mask), expected, atol=1e-9)
    # one source agrees with itself: Z = 1
    if len(subset) == 1:
        assert torch.allclose(expected, torch.zeros(6), atol=1e-9)


def test_log_normalizer_closed_form_for_all_prior_roles():
    """log of the integral of the unnormalised product, by quadrature in one dimension."""
    torch.manual_seed(0)
    feats = torch.randn(1, 3, 2)  # one point, 3 experts, D = 1
    mask = torch.tensor([[True, True, False]])
    grid = torch.linspace(-12, 12, 200001)
    for role in (True, False, "divide"):
        poe = PoE(role, scale="logvar", min_scale=0.0, positivity="clamp")
        _, _, eta_m, lam_m, _ = poe.natural_parameters(feats, mask)
        log_q = dist.Normal(eta_m / lam_m, lam_m.rsqrt()).log_prob(grid[:, None, None, None])
        a = {True: 1.0, False: 0.0, "divide": -1.0}[role]
        integrand = (log_q[:, 0, :2, 0].sum(-1) + a * dist.Normal(0., 1.).log_prob(grid)).exp()
        value = torch.trapezoid(integrand, grid).log()
        assert torch.allclose(poe.log_normalizer(feats, mask), value.reshape(1), atol=1e-6), role


def test_dividing_poe_policies_keep_a_density():
    """Broad beliefs: 'floor' is a density by construction, 'clamp' clamps the precision."""
    feats = torch.cat([torch.zeros(1, 3, 2), torch.full((1, 3, 2), 2.0)], -1)  # var e^2 > 1
    mask = torch.ones(1, 3, dtype=torch.bool)
    floor = PoE("divide", scale="logvar", min_scale=0.0)(feats, mask)
    assert (floor.base_dist.scale < 1).all()
    clamp = PoE("divide", scale="logvar", min_scale=0.0, positivity="clamp",
                min_precision=0.25)(feats, mask)
    assert torch.allclose(clamp.base_dist.scale, torch.full((1, 2), 2.0))  # 1 / sqrt(0.25)
    empty = PoE("divide")(feats, torch.zeros(1, 3, dtype=torch.bool))
    assert torch.allclose(empty.base_dist.scale, torch.ones(1, 2))
    assert torch.allclose(empty.base_dist.loc, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="prior_expert must be True, False or 'divide'"):
        PoE("halve")
    with pytest.raises(ValueError, match="positivity must be 'floor' or 'clamp'"):
        PoE("divide", positivity="abs")


@pytest.mark.parametrize("estimator", ["dreg", "standard"])
def test_poe_objective_of_exact_beliefs_is_log_p_for_every_draw(estimator):
    """L(PoE) with the exact posterior as proposal: every importance weight is p(x)."""
    model = diagonal_model()
    data = sample_data(model)
    guide = exact_guide(model)
    for seed in range(3):
        pyro.set_rng_seed(seed)
        elbo = MultiSourceELBO(4, objective="poe", estimator=estimator)
        terms = elbo.terms(model, guide, data)
        assert torch.allclose(terms["elbo"], model.exact_log_likelihood(data), atol=1e-8)
    # with missing modalities: the PoE of the observed sources, the observed observations
    mask = {"a": torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool),
            "b": torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool),
            "c": torch.tensor([0, 1, 1, 1, 1, 1], dtype=torch.bool)}
    value = MultiSourceELBO(3, objective="poe").terms(model, guide, data, mask)["elbo"]
    assert torch.allclose(value, model.exact_log_likelihood(data, mask), atol=1e-8)


def test_dreg_gradient_vanishes_at_the_exact_posterior():
    """DReG's encoder gradient is exactly zero when the proposal is the posterior."""
    model = diagonal_model()
    data = sample_data(model)
    guide = exact_guide(model)
    pyro.set_rng_seed(0)
    loss = MultiSourceELBO(5, objective="poe").differentiable_loss(model, guide, data)
    grads = torch.autograd.grad(loss, list(guide.parameters()), allow_unused=True)
    assert all(g is None or g.abs().max() < 1e-8 for g in grads)
    pyro.set_rng_seed(0)
    loss = MultiSourceELBO(5, objective="poe", estimator="standard").differentiable_loss(
        model, guide, data)
    grads = torch.autograd.grad(loss, list(guide.parameters()), allow_unused=True)
    assert max(g.abs().max() for g in grads if g is not None) > 1e-3  # the score term


def fixed_noise(monkeypatch, eps):
    monkeypatch.setattr(torch.distributions.normal, "_standard_normal",
                        lambda shape, dtype, device: eps.to(dtype).expand(shape).clone())


def by_hand(model, guide, data, objective, pi=None):
    """The objectives with one fixed noise vector (every particle equal): per data point."""
    n = 6
    mix = {m: guide.distribution(data, subset_mask(n, (m,))) for m in DIMS}
    pi = pi or {m: 1 / 3 for m in DIMS}
    eps = torch.tensor([0.3, -1.1])
    prior = dist.Normal(torch.zeros(LATENT), 1.0).to_event(1)

    def log_joint(z):
        return model.exact_log_likelihood(data) * 0 + sum(
            dist.Normal(model.decoders[m].net(z), model.decoders[m].scale).to_event(1)
            .log_prob(data[m]) for m in DIMS) + prior.log_prob(z)

    def iwae_one(q):
        z = q.base_dist.loc + q.base_dist.scale * eps
        return log_joint(z) - q.log_prob(z), z

    if objective == "ind":
        return sum(pi[m] * iwae_one(mix[m])[0] for m in DIMS)
    if objective == "poe":
        return iwae_one(guide.distribution(data, full_mask(data)))[0]
    if objective == "moe":
        total = 0.0
        for m in DIMS:
            z = mix[m].base_dist.loc + mix[m].base_dist.scale * eps
            log_mix = torch.stack([math.log(pi[k]) + mix[k].log_prob(z) for k in DIMS]
                                  ).logsumexp(0)
            total = total + pi[m] * (log_joint(z) - log_mix)
        return total
    raise ValueError(objective)


@pytest.mark.parametrize("estimator", ["dreg", "standard"])
@pytest.mark.parametrize("objective", ["ind", "moe", "poe", "hybrid"])
def test_objectives_equal_their_equations(objective, estimator, monkeypatch):
    model = diagonal_model()
    data = sample_data(model)
    guide = learned_guide()
    fixed_noise(monkeypatch, torch.tensor([0.3, -1.1]))
    elbo = MultiSourceELBO(3, objective=objective, estimator=estimator)
    value = elbo.terms(model, guide, data)["elbo"]
    if objective == "hybrid":
        expected = (0.5 * by_hand(model, guide, data, "ind")
                    + 0.5 * by_hand(model, guide, data, "poe"))
    else:
        expected = by_hand(model, guide, data, objective)
    assert torch.allclose(value, expected, atol=1e-8)
    # weights: pi and lambda are the stated combinations
    if objective in ("ind", "moe"):
        pi = {"a": 0.5, "b": 0.3, "c": 0.2}
        value = MultiSourceELBO(2, objective=objective, source_weights=pi,
                                estimator=estimator).terms(model, guide, data)["elbo"]
        assert torch.allclose(value, by_hand(model, guide, data, objective, pi), atol=1e-8)
    if objective == "hybrid":
        terms = MultiSourceELBO(2, objective="hybrid", hybrid_weights=(0.2, 1.5),
                                estimator=estimator).terms(model, guide, data)
        assert torch.allclose(terms["elbo"], 0.2 * terms["ind"] + 1.5 * terms["poe"])


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["ind", "moe", "poe", "hybrid"])
def test_objectives_are_lower_bounds_on_log_p(objective):
    """In expectation over the draws, any guide's objective is below the exact log p(x); more
    particles bring it closer."""
    model = diagonal_model()
    data = sample_data(model, n=4)
    guide = learned_guide()
    exact = model.exact_log_likelihood(data)
    means = []
    for k in (1, 16):
        pyro.set_rng_seed(0)
        with torch.no_grad():
            draws = torch.stack([MultiSourceELBO(k, objective=objective).terms(
                model, guide, data)["elbo"] for _ in range(200)])
        mean, se = draws.mean(0), draws.std(0) / math.sqrt(200)
        assert (mean < exact + 4 * se).all()
        means.append(mean)
    assert (means[1] > means[0]).all()


def test_ind_weights_are_renormalised_over_the_observed_sources(monkeypatch):
    """Source a missing at point 0: L(ind) there is the mean of b's and c's terms; elsewhere
    the mean of all three. (One fixed noise vector: every call draws alike.)"""
    model = diagonal_model()
    data = sample_data(model)
    guide = exact_guide(model)
    fixed_noise(monkeypatch, torch.tensor([0.7, 0.2]))
    mask = full_mask(data)
    mask["a"] = torch.tensor([False, True, True, True, True, True])
    full = MultiSourceELBO(2, objective="ind").terms(model, guide, data, mask)["elbo"]
    row = {m: MultiSourceELBO(2, objective="ind", sources=[m]).terms(
        model, guide, data, mask if m != "a" else full_mask(data))["elbo"] for m in DIMS}
    assert torch.allclose(full[0], (row["b"][0] + row["c"][0]) / 2, atol=1e-9)
    assert torch.allclose(full[1:], sum(row.values())[1:] / 3, atol=1e-9)


def test_sources_and_observations_may_differ(monkeypatch):
    """MNIST-NO's layout: two noisy copies are the sources, the clean signal the only
    observation; the guide sees the sources, the model the observation."""
    torch.manual_seed(0)
    model = LinearGaussianModel({"clean": 3}, LATENT, noise_scale=0.5)
    guide = MultimodalGuide({m: expert_encoder(3, LATENT, hidden=(8,)) for m in ("n1", "n2")},
                            PoE("divide"))
    clean = torch.randn(5, 3)
    data = {"clean": clean, "n1": clean + 0.1 * torch.randn(5, 3),
            "n2": clean + 0.1 * torch.randn(5, 3)}
    eps = torch.tensor([-0.4, 0.9])
    fixed_noise(monkeypatch, eps)
    on = torch.ones(5, dtype=torch.bool)

    def log_w(sources):  # log p(clean | z) + log p(z) - log q(z | x_sources) at the fixed draw
        q = guide.distribution({m: data[m] for m in ("n1", "n2")},
                               {m: on if m in sources else ~on for m in ("n1", "n2")})
        z = q.base_dist.loc + q.base_dist.scale * eps
        dec = model.decoders["clean"]
        return (dist.Normal(dec.net(z), dec.scale).to_event(1).log_prob(clean)
                + dist.Normal(0., 1.).expand([LATENT]).to_event(1).log_prob(z) - q.log_prob(z))

    terms = MultiSourceELBO(4, objective="hybrid").terms(model, guide, data)
    assert torch.allclose(terms["poe"], log_w(("n1", "n2")), atol=1e-6)
    assert torch.allclose(terms["ind"], (log_w(("n1",)) + log_w(("n2",))) / 2, atol=1e-6)
    # an observation missing at a point is not scored there; a source missing is not encoded
    mask = full_mask(data)
    mask["clean"] = torch.tensor([True, False, True, True, True])
    mask["n2"] = torch.tensor([False, True, True, True, True])
    value = MultiSourceELBO(2, objective="hybrid").terms(model, guide, data, mask)["ind"]
    assert torch.allclose(value[0], log_w(("n1",))[0], atol=1e-6)
    with pytest.raises(ValueError, match=r"data points \[0\] have no observed source"):
        mask["n1"] = torch.tensor([False, True, True, True, True])
        MultiSourceELBO(2).terms(model, guide, data, mask)
    with pytest.raises(ValueError, match="source 'n3' is not in data"):
        MultiSourceELBO(2, sources=["n1", "n3"]).terms(model, guide, data)


def test_trains_with_svi_and_fit():
    from pyro_mmvae.train import fit

    model = diagonal_model()
    data = sample_data(model, n=64, seed=3)
    guide = learned_guide(seed=0, hidden=(16,))
    history = fit(model, guide, MultiSourceELBO(4, objective="hybrid"), data, epochs=12,
                  batch_size=32, lr=2e-2, progress=False)
    assert history["loss"][-1] < history["loss"][0]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="objective must be one of"):
        MultiSourceELBO(objective="sum")
    with pytest.raises(ValueError, match="hybrid_weights must be two non-negative numbers"):
        MultiSourceELBO(hybrid_weights=(0.5, -1))
    with pytest.raises(TypeError, match="MultiSourceELBO takes no 'iwae'"):
        MultiSourceELBO(iwae=False)
    with pytest.raises(ValueError, match="estimator='stl' is biased"):
        MultiSourceELBO(estimator="stl")
    model = diagonal_model()
    data = sample_data(model)
    with pytest.raises(ValueError, match="source_weights name 'd', which is not a source"):
        MultiSourceELBO(2, source_weights={"d": 1.0}).terms(model, exact_guide(model), data)


# --------------------------------------------------------------------------- conflict measure

def kl_diag(a, b):
    return torch.distributions.kl_divergence(a, b)


def test_conflict_matrix_is_the_kl_ratio():
    model = diagonal_model()
    data = sample_data(model)
    guide = exact_guide(model)
    c = conflict_matrix(guide, data)
    assert c.shape == (6, 3, 3)
    beliefs = {m: guide.distribution(data, subset_mask(6, (m,))) for m in DIMS}
    prior = dist.Normal(torch.zeros(6, LATENT), 1.0).to_event(1)
    names = list(DIMS)
    for i, mi in enumerate(names):
        for j, mj in enumerate(names):
            expected = kl_diag(beliefs[mj], beliefs[mi]) / kl_diag(beliefs[mj], prior)
            if i == j:
                expected = torch.zeros(6)
            assert torch.allclose(c[:, i, j], expected, atol=1e-9), (mi, mj)


def test_a_much_more_certain_belief_conflicts():
    """c(m || m') > 1 when belief m is far more certain than m' (and misplaced for it)."""
    feats = {"sharp": torch.tensor([[2.0, 2.0, -8.0, -8.0]]),  # N(2, e^-8): very certain
             "broad": torch.tensor([[0.0, 0.0, -0.5, -0.5]])}

    class Fixed(nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = nn.Parameter(value)

        def forward(self, x):
            return self.value.expand(x.shape[0], -1)

    guide = MultimodalGuide({m: Fixed(v) for m, v in feats.items()},
                            PoE("divide", scale="logvar", min_scale=0.0, positivity="clamp"))
    data = {m: torch.zeros(1, 1) for m in feats}
    c = conflict_matrix(guide, data)
    assert c[0, 0, 1] > CONFLICT_THRESHOLD  # sharp as the prior of broad
    assert c[0, 1, 0] < c[0, 0, 1]
    assert (c.diagonal(dim1=-2, dim2=-1) == 0).all()
    mask = {"sharp": torch.tensor([False]), "broad": torch.tensor([True])}
    assert torch.isnan(conflict_matrix(guide, data, mask)[0, 0, 1])


def test_conflict_matrix_refuses_non_gaussian_beliefs():
    model = diagonal_model()
    data = sample_data(model)
    guide = MultimodalGuide({m: expert_encoder(d, LATENT, hidden=(8,)) for m, d in DIMS.items()},
                            MoE())
    with pytest.raises(ValueError, match="conflict_matrix needs diagonal-Gaussian beliefs"):
        conflict_matrix(guide, data)


def test_one_particle_is_the_elbo(monkeypatch):
    """K = 1: L(PoE) is the ELBO of the PoE guide, Pyro's Trace_ELBO value (same draw)."""
    from pyro.infer import Trace_ELBO

    model = diagonal_model()
    data = sample_data(model)
    guide = learned_guide()
    fixed_noise(monkeypatch, torch.tensor([0.3, -1.1]))
    ours = MultiSourceELBO(1, objective="poe").loss(model, guide, data)
    assert ours == pytest.approx(Trace_ELBO().loss(model, guide, data, full_mask(data)),
                                 rel=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["ind", "moe", "poe"])
def test_dreg_and_standard_gradients_agree_in_expectation(objective):
    """Both estimators are unbiased for the encoder gradient: their means over many draws
    agree within a few standard errors (DReG's variance is the smaller)."""
    model = diagonal_model()
    data = sample_data(model, n=3)
    guide = learned_guide(hidden=(4,))
    params = list(guide.parameters())

    def draws(estimator, n=400):
        elbo = MultiSourceELBO(4, objective=objective, estimator=estimator)
        out = []
        for _ in range(n):
            loss = elbo.differentiable_loss(model, guide, data)
            out.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
        return torch.stack(out)

    pyro.set_rng_seed(0)
    dreg, standard = draws("dreg"), draws("standard")
    diff = dreg.mean(0) - standard.mean(0)
    se = (dreg.var(0) / len(dreg) + standard.var(0) / len(standard)).sqrt()
    assert (diff.abs() < 5 * se + 1e-6).all()
    assert dreg.var(0).sum() < standard.var(0).sum()


# --------------------------------------------------------------------------- evaluation, SIR

def test_evaluation_table_scores_one_model_under_every_objective():
    from pyro_mmvae.eval import multisource_evaluation

    model = diagonal_model()
    data = sample_data(model, n=10)
    table = multisource_evaluation(model, exact_guide(model), data, num_particles=4,
                                   batch_size=4)
    assert set(table) == {"ind", "moe", "poe"}
    # the PoE of exact beliefs is the exact posterior: its negative bound is -log p(x) exactly
    assert table["poe"] == pytest.approx(-model.exact_log_likelihood(data).mean().item(),
                                         rel=1e-9)
    assert table["ind"] > table["poe"] and table["moe"] > table["poe"]
    with pytest.raises(ValueError, match="objectives must be among"):
        multisource_evaluation(model, exact_guide(model), data, objectives=["sum"])


def test_resampling_the_exact_posterior_keeps_every_draw():
    """With the exact joint posterior as the belief all weights are equal: ESS = K."""
    from pyro_mmvae.eval import importance_resample

    model = diagonal_model()
    data = sample_data(model)
    out = importance_resample(model, exact_guide(model), data, num_samples=50,
                              num_resampled=7)
    assert out["z"].shape == (7, 6, LATENT) and out["samples"].shape == (50, 6, LATENT)
    assert torch.allclose(out["ess"], torch.full((6,), 50.0), rtol=1e-9)


def test_resampling_one_belief_targets_the_posterior_of_everything_observed():
    """SIR of source a's belief with every observation's likelihood: the resampled mean and
    variance approach those of the exact p(z | x_a, x_b, x_c)."""
    from pyro_mmvae.eval import importance_resample

    model = diagonal_model()
    data = sample_data(model, n=3)
    pyro.set_rng_seed(0)
    out = importance_resample(model, exact_guide(model), data, given="a", num_samples=20000,
                              num_resampled=4000, generator=torch.Generator().manual_seed(0))
    exact = model.exact_posterior(data)
    assert torch.allclose(out["z"].mean(0), exact.mean, atol=0.05)
    assert torch.allclose(out["z"].var(0), exact.variance, rtol=0.15)
    assert (out["ess"] < 20000).all()
    with pytest.raises(ValueError, match="given names 'd'"):
        importance_resample(model, exact_guide(model), data, given="d")


def expected_log_lik(model, data, given, target):
    """E_{z ~ p(z | x_given)} log p(x_target | z), in closed form."""
    post = model.exact_posterior(data, subset_mask(data[target].shape[0], given))
    w, b, s = model.linear_parameters(target)
    mean = post.mean @ w.T + b
    trace = torch.einsum("ij,njk,ik->n", w, post.covariance_matrix, w)
    return (dist.Normal(mean, s).log_prob(data[target]).sum(-1) - 0.5 * trace / s ** 2).detach()


def test_one_shot_imputation_decodes_the_missing_part_from_the_fused_belief():
    from pyro_mmvae.eval import one_shot_imputation

    model = diagonal_model()
    data = sample_data(model, n=4)
    pyro.set_rng_seed(0)
    out = one_shot_imputation(model, exact_guide(model), data, "c", num_samples=20000)
    assert torch.allclose(out["log_likelihood"], expected_log_lik(model, data, ("a", "b"), "c"),
                          atol=0.05)
    assert out["samples"]["c"].shape == (20000, 4, DIMS["c"])
    with pytest.raises(ValueError, match="targets names 'd'"):
        one_shot_imputation(model, exact_guide(model), data, "d")


@pytest.mark.slow
def test_markov_chain_imputation_reaches_the_same_expectation():
    """With the exact full-data posterior as the guide the chain is a Gibbs sampler of
    p(z, x_c | x_a, x_b): after burn-in its log-likelihood trace averages to the one-shot
    expectation E_{p(z | x_a, x_b)} log p(x_c | z)."""
    from pyro_mmvae.eval import markov_chain_imputation

    model = diagonal_model()
    data = sample_data(model, n=3)
    pyro.set_rng_seed(0)
    out = markov_chain_imputation(model, exact_guide(model), data, "c", steps=600,
                                  generator=torch.Generator().manual_seed(0))
    assert out["log_likelihood"].shape == (600, 3) and out["imputed"]["c"].shape == (3, 4)
    chain = out["log_likelihood"][50:].mean(0)
    assert torch.allclose(chain, expected_log_lik(model, data, ("a", "b"), "c"), atol=0.4)
    assert not torch.equal(out["imputed"]["c"], data["c"])  # a draw, not the truth


@pytest.mark.parametrize("objective", ["ind", "moe", "hybrid"])
def test_a_float32_model_keeps_a_float32_loss(objective):
    """pi follows the data's dtype, not torch's default (float64 in this suite)."""
    model = diagonal_model().float()
    data = {m: x.float() for m, x in sample_data(model.double()).items()}
    model.float()
    guide = learned_guide().float()
    loss = MultiSourceELBO(2, objective=objective).differentiable_loss(model, guide, data)
    assert loss.dtype == torch.float32
