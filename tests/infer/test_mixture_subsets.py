"""``MixtureMultimodalELBO(form="average", num_subsets=k)`` and the chunked stratified form.

- the drawn-components estimator is unbiased for the all-components average: exactly, by
  enumerating the drawn component with the Gaussian noise held fixed (values and gradients, also
  for learned mixture weights, a sampled KL, IWAE and guides traced cell by cell), and
  statistically, with fresh draws;
- its KL term is exact over all components where it is analytic;
- the model decodes ``k`` draws, not ``K``; zero-weight components are neither drawn nor
  decoded, to the same values and gradients;
- the stratified form's mixture density, evaluated in chunks of draws, gives the values and
  gradients of one block, and its largest intermediate tensor shrinks with the chunk.
"""

import pyro
import pytest
import torch
from pyro.poutine.messenger import Messenger
from torch.utils._python_dispatch import TorchDispatchMode

import pyro_mmvae.decoding as decoding
import pyro_mmvae.infer.mixture_elbo as mixture_elbo
from pyro_mmvae import MixtureMultimodalELBO
from pyro_mmvae.guides import MoE, MoPoE, SumPoolingMixture
from pyro_mmvae.infer.mixtures import chunked, mixture_logits
from pyro_mmvae.models import multimodal
from tests.helpers import counted, linear_problem, make_guide, random_mask, rows_decoded

AGGREGATORS = {
    "MoPoE": MoPoE, "MoE": MoE,
    "SumPoolingMixture": lambda: SumPoolingMixture(4, 2, hidden_dim=16, pooling_dim=8,
                                                   num_components=3),
}


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def params_of(model, guide):
    return [p for p in list(guide.parameters()) + list(model.parameters()) if p.requires_grad]


def grads(value, params):
    gs = torch.autograd.grad(value, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


def fixed_noise(monkeypatch, shape_tail):
    """Every Normal rsample reads the same noise, broadcast over its leading dims: a draw from
    component j sees the same epsilon whether it is one of all K components or the drawn one."""
    eps = torch.randn(shape_tail, generator=torch.Generator().manual_seed(5),
                      dtype=torch.float64)
    monkeypatch.setattr(torch.distributions.normal, "_standard_normal",
                        lambda shape, dtype, device: eps.to(dtype).expand(shape).clone())


def weights_of(guide, data, mask):
    """The mixture weights pi ``(K, B)`` of the guide at this mask."""
    tr = pyro.poutine.trace(guide).get_trace(data, mask)
    return mixture_logits(tr.nodes["z"]["fn"]).exp().movedim(-1, 0).detach()


CASES = {
    "elbo": dict(num_particles=2),
    "sampled-kl": dict(num_particles=2, analytic_kl=False),
    "standard": dict(num_particles=2, estimator="standard", analytic_kl=False),
    "iwae": dict(num_particles=3, iwae=True),
    "per-cell": dict(num_particles=2, vectorize=False),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("aggregator", sorted(AGGREGATORS))
def test_enumerating_the_drawn_component_gives_the_all_components_average(aggregator, case,
                                                                          monkeypatch):
    """E_j[estimate] = sum_j pi_j estimate(j) with the noise fixed: the all-components value,
    and (weights held as constants in the expectation) its gradient."""
    kw = CASES[case]
    model, data = linear_problem(n=6)
    guide = make_guide(AGGREGATORS[aggregator]())
    mask = random_mask(data, p=0.6, seed=2)
    fixed_noise(monkeypatch, (kw["num_particles"], 6, 2))
    params = params_of(model, guide)
    full = MixtureMultimodalELBO(form="average", **kw).terms(model, guide, data, mask)
    ref_grads = grads(full["elbo"].sum(), params)
    pi = weights_of(guide, data, mask)  # (K, B)
    num = pi.shape[0]
    assert (pi == 0).any() or aggregator != "MoPoE"  # some components are switched off
    total = torch.zeros_like(full["elbo"])
    total_rec = torch.zeros_like(full["elbo"])
    total_grads = [torch.zeros_like(p) for p in params]
    for j in range(num):
        def fixed(self, logits, j=j):
            return torch.full((self.num_subsets,) + logits.shape[:-1], j, dtype=torch.long)
        monkeypatch.setattr(MixtureMultimodalELBO, "_draw_components", fixed)
        drawn = MixtureMultimodalELBO(form="average", num_subsets=2, **kw)
        t = drawn.terms(model, guide, data, mask)
        on = pi[j] > 0
        total = total + torch.where(on, pi[j] * t["elbo"].detach(), torch.zeros_like(total))
        total_rec = total_rec + torch.where(on, pi[j] * t["reconstruction"],
                                            torch.zeros_like(total))
        weighted = torch.where(on, pi[j] * t["elbo"], torch.zeros_like(total)).sum()
        total_grads = [a + b for a, b in zip(total_grads, grads(weighted, params))]
        if kw.get("analytic_kl", True) and not kw.get("iwae"):
            # the analytic KL part is exact over all components, whichever is drawn
            assert torch.allclose(t["rate"], full["rate"], rtol=1e-12, atol=1e-14)
    assert torch.allclose(total, full["elbo"].detach(), rtol=1e-10, atol=1e-10)
    assert torch.allclose(total_rec, full["reconstruction"], rtol=1e-10, atol=1e-10)
    for g, r in zip(total_grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("aggregator", ["MoPoE", "MoE"])
def test_drawn_components_are_unbiased_with_fresh_draws(aggregator):
    model, data = linear_problem(n=6, noise=0.5)
    guide = make_guide(AGGREGATORS[aggregator]())
    mask = random_mask(data, p=0.6, seed=2)
    pyro.set_rng_seed(0)
    with torch.no_grad():
        drawn = torch.stack([MixtureMultimodalELBO(200, form="average", num_subsets=1)
                             .terms(model, guide, data, mask)["elbo"] for _ in range(40)])
        full = torch.stack([MixtureMultimodalELBO(200, form="average")
                            .terms(model, guide, data, mask)["elbo"] for _ in range(40)])
    se = (drawn.var(0) / 40 + full.var(0) / 40).sqrt()
    z = (drawn.mean(0) - full.mean(0)) / se
    assert z.abs().max() < 4.5, z


class ShapeRecorder(torch.nn.Module):
    """The library model, recording the shape of every ``z`` it is called with."""

    vectorized = True

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.shapes = []

    def forward(self, data, mask):
        with _Record(self.shapes):
            return self.model(data, mask)


class _Record(Messenger):
    def __init__(self, shapes):
        super().__init__()
        self.shapes = shapes

    def _postprocess_message(self, msg):
        if msg["name"] == "z":
            self.shapes.append(tuple(msg["value"].shape))


@pytest.mark.parametrize("k", [1, 3])
def test_the_model_decodes_k_draws_not_every_component(k):
    model, data = linear_problem(n=6)
    guide = make_guide(MoPoE())  # 7 non-empty subsets of 3 modalities
    rec = ShapeRecorder(model)
    MixtureMultimodalELBO(2, form="average", num_subsets=k).loss(rec, guide, data)
    assert rec.shapes == [(k, 2, 6, 2)]
    rec.shapes.clear()
    MixtureMultimodalELBO(2, form="average").loss(rec, guide, data)
    pi = weights_of(guide, data, {m: torch.ones(6, dtype=torch.bool) for m in data})
    assert pi.shape[0] == 8 and (pi[7] == 0).all()  # 7 subset PoEs and the prior slot
    assert rec.shapes == [(7, 2, 6, 2)]  # the zero-weight prior slot is not drawn


ZERO_WEIGHT_CASES = {
    "stratified": dict(num_particles=2),
    "stratified-iwae-dreg": dict(num_particles=3, iwae=True, estimator="dreg"),
    "stratified-iwae-dreg-mmvae": dict(num_particles=3, iwae=True, estimator="dreg",
                                       mixture_dreg="mmvae"),
    "average": dict(num_particles=2, form="average"),
    "average-sampled-kl": dict(num_particles=2, form="average", analytic_kl=False),
    "per-cell": dict(num_particles=2, vectorize=False),
}


@pytest.mark.parametrize("case", sorted(ZERO_WEIGHT_CASES))
@pytest.mark.parametrize("aggregator", ["MoE", "MoPoE"])
def test_zero_weight_components_are_neither_drawn_nor_decoded(aggregator, case, monkeypatch):
    """Modality "c" missing everywhere and "a" for some points: MoE draws only the components
    of "a" and "b" (not "c", not the prior slot) and decodes "a"'s component only where "a"
    is observed; values and gradients equal drawing and decoding every component."""
    kw = ZERO_WEIGHT_CASES[case]
    model, data = linear_problem(n=6)
    counted(model)
    guide = make_guide(AGGREGATORS[aggregator]())
    observed_a = torch.tensor([True, False, True, True, False, True])
    mask = {"a": observed_a, "b": torch.ones(6, dtype=torch.bool),
            "c": torch.zeros(6, dtype=torch.bool)}
    fixed_noise(monkeypatch, (kw["num_particles"], 6, 2))
    params = params_of(model, guide)
    rec = ShapeRecorder(model)
    fast = MixtureMultimodalELBO(**kw).terms(rec, guide, data, mask)
    fast_grads = grads(fast["elbo"].sum(), params)

    def drawn(shapes):  # components the model was called with: stacked, or one call per cell
        return shapes[0][0] if kw.get("vectorize", True) else len(shapes) // kw["num_particles"]

    assert drawn(rec.shapes) == (2 if aggregator == "MoE" else 3)  # {a}, {b} (, {a, b})
    if aggregator == "MoE" and kw.get("vectorize", True):
        # per particle: "b" decoded under component "b" (6 points) and under component "a"
        # where "a" is observed (4), "a" under both components where it is observed; "c"
        # scored nowhere (one row, for a valid site distribution)
        n_a, s = int(observed_a.sum()), kw["num_particles"]
        assert rows_decoded(model) == {"a": 2 * n_a * s, "b": (n_a + 6) * s, "c": 1}
    monkeypatch.setattr(mixture_elbo, "live_components", lambda weights: None)
    for module in (decoding, multimodal):
        monkeypatch.setattr(module, "scored_rows", lambda *args: None)
    rec.shapes.clear()
    slow = MixtureMultimodalELBO(**kw).terms(rec, guide, data, mask)
    assert drawn(rec.shapes) == (4 if aggregator == "MoE" else 8)
    for key in ("elbo", "reconstruction", "rate"):
        assert torch.allclose(fast[key], slow[key], rtol=1e-10, atol=1e-10), key
    for g, r in zip(fast_grads, grads(slow["elbo"].sum(), params)):
        assert torch.allclose(g, r, rtol=1e-8, atol=1e-10)


def test_num_subsets_none_is_the_all_components_average():
    model, data = linear_problem(n=6)
    guide = make_guide(MoPoE())
    mask = random_mask(data)
    values = []
    for kw in ({}, {"num_subsets": None}):
        pyro.set_rng_seed(1)
        elbo = MixtureMultimodalELBO(2, form="average", **kw)
        values.append(elbo.terms(model, guide, data, mask))
    for name in values[0]:
        assert torch.equal(values[0][name], values[1][name])


def test_num_subsets_has_no_effect_without_a_mixture_guide():
    model, data = linear_problem(n=6)
    guide = make_guide()  # PoE: one component
    values = []
    for kw in ({}, {"num_subsets": 3}):
        pyro.set_rng_seed(1)
        values.append(MixtureMultimodalELBO(2, form="average", **kw).loss(model, guide, data))
    assert values[0] == values[1]


def test_num_subsets_is_checked():
    with pytest.raises(ValueError, match="num_subsets"):
        MixtureMultimodalELBO(form="average", num_subsets=0)
    for bad in (1.5, 2.0, True, "2"):
        with pytest.raises(TypeError, match="num_subsets"):
            MixtureMultimodalELBO(form="average", num_subsets=bad)
    for form in ("stratified", "sampled"):
        with pytest.raises(ValueError, match="num_subsets"):
            MixtureMultimodalELBO(form=form, num_subsets=1)
    with pytest.raises(ValueError, match="chunk_size"):
        MixtureMultimodalELBO(chunk_size=0)
    assert MixtureMultimodalELBO(form="average", num_subsets=torch.tensor(2)).num_subsets == 2


STRATIFIED = {
    "elbo": dict(num_particles=2),
    "standard": dict(num_particles=2, estimator="standard", analytic_kl=False),
    "iwae-unbiased-dreg": dict(num_particles=3, iwae=True),
    "iwae-mmvae-dreg": dict(num_particles=3, iwae=True, mixture_dreg="mmvae"),
    "per-cell": dict(num_particles=2, vectorize=False),
}


@pytest.mark.parametrize("case", sorted(STRATIFIED))
@pytest.mark.parametrize("aggregator", sorted(AGGREGATORS))
def test_chunked_stratified_form_equals_one_block(aggregator, case):
    model, data = linear_problem(n=6)
    guide = make_guide(AGGREGATORS[aggregator]())
    mask = random_mask(data)
    params = params_of(model, guide)
    results = []
    for chunk in (10 ** 6, 1, 2):
        pyro.set_rng_seed(4)
        elbo = MixtureMultimodalELBO(chunk_size=chunk, **STRATIFIED[case])
        t = elbo.terms(model, guide, data, mask)
        results.append((t["elbo"], grads(t["elbo"].sum(), params)))
    ref = results[0]
    for got in results[1:]:
        assert torch.allclose(got[0], ref[0], rtol=1e-10, atol=1e-10)
        for g, r in zip(got[1], ref[1]):
            assert torch.allclose(g, r, rtol=1e-10, atol=1e-12)


def test_chunked_rows():
    x = torch.randn(7, 3, requires_grad=True)
    y = torch.randn(7, 3)
    got = chunked(lambda a, b: (a * b).exp().cumsum(-1), x, y, chunk=3)
    ref = (x * y).exp().cumsum(-1)
    assert torch.equal(got, ref)
    assert torch.allclose(torch.autograd.grad(got.sum(), x)[0],
                          torch.autograd.grad(ref.sum(), x)[0], rtol=0, atol=1e-14)
    both = chunked(lambda a: (a, 2 * a), x, chunk=2)
    assert torch.equal(both[1], 2 * x)


class LargestTensor(TorchDispatchMode):
    """Records the most elements any operator's output holds (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("iwae", [False, True])
def test_stratified_memory_grows_with_the_chunk_not_with_k_squared(iwae):
    dims = {m: 2 for m in "abcde"}  # MoPoE over 5 modalities: K = 31 subsets
    model, data = linear_problem(n=16, dims=dims, latent_dim=4)
    guide = make_guide(MoPoE(), dims=dims, latent_dim=4)
    kw = dict(num_particles=2, iwae=iwae)
    k, s, b, d = 31, 2, 16, 4
    pairwise = k * k * s * b * d
    largest = {}
    for chunk in (None, 1):
        elbo = MixtureMultimodalELBO(chunk_size=chunk, **kw)
        probe = LargestTensor()
        with probe:
            elbo.differentiable_loss(model, guide, data).backward()
        largest[chunk] = probe.largest
    assert largest[None] >= pairwise  # one block: the (draw x component x latent) tensor
    assert largest[1] <= 2 * k * s * b * d, largest  # one draw against every component


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("aggregator", sorted(AGGREGATORS))
def test_per_component_forms_make_no_draw_from_the_guide_mixture(aggregator, vectorize,
                                                                 monkeypatch):
    """The stratified and average forms draw from the components themselves: the guide's own
    draw from its mixture (for learned weights the sequential implicit-reparameterisation
    transform) is not made; the sampled form still draws it."""
    from pyro_mmvae.guides import DiagNormalMixture

    model, data = linear_problem(n=6)
    guide = make_guide(AGGREGATORS[aggregator]())
    mask = random_mask(data, p=0.7)
    draws = []
    real = DiagNormalMixture.rsample
    monkeypatch.setattr(DiagNormalMixture, "rsample",
                        lambda self, *a, **k: draws.append(1) or real(self, *a, **k))
    for kw in (dict(form="stratified"), dict(form="average"),
               dict(form="average", num_subsets=1), dict(form="stratified", iwae=True,
                                                         num_particles=2)):
        value = MixtureMultimodalELBO(vectorize=vectorize, **kw).differentiable_loss(
            model, guide, data, mask)
        assert torch.isfinite(value) and not draws, kw
    MixtureMultimodalELBO(form="sampled", vectorize=vectorize).differentiable_loss(
        model, guide, data, mask)
    assert draws
