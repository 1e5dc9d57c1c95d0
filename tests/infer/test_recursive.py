"""The M2VAE's recursive objective and JMVAE-kl: the unrolled weights, the stated sums of
ELBOs, the closed-form KL pulls, missing modalities and training."""

import math

import pytest
import torch
from torch import nn

from pyro_mmvae import JointMultimodalELBO, RecursiveMultimodalELBO, SubsampledMultimodalELBO
from pyro_mmvae.guides import MoE, MultimodalGuide, SubsetEncoders
from pyro_mmvae.infer import beta_normalized, recursive_weights
from pyro_mmvae.protocol import full_mask
from tests.helpers import DIMS, linear_problem, make_guide


def test_weights_are_the_papers():
    """Bimodal (1/2, 1/2, 1/2); tri-modal 1/3 (full set), 1/6 (pairs), 1/3 (singletons)."""
    assert torch.allclose(recursive_weights(2), torch.tensor([0.5, 0.5, 0.5]))
    w3 = recursive_weights(3)
    sizes = [bin(s + 1).count("1") for s in range(7)]
    expected = {1: 1 / 3, 2: 1 / 6, 3: 1 / 3}
    assert torch.allclose(w3, torch.tensor([expected[k] for k in sizes]))
    # the recursion itself, evaluated symbolically: L(S) = (VI(S) + sum_m L(S \\ m)) / |S|

    def unroll(s, n):
        out = {}

        def visit(subset, coef):
            if len(subset) == 1:
                out[subset] = out.get(subset, 0.0) + coef
                return
            out[subset] = out.get(subset, 0.0) + coef / len(subset)
            for m in subset:
                visit(tuple(x for x in subset if x != m), coef / len(subset))
        visit(s, 1.0)
        return out
    for n in (2, 3, 4):
        got = unroll(tuple(range(n)), n)
        w = recursive_weights(n)
        for subset, coef in got.items():
            k = sum(1 << i for i in subset) - 1
            assert math.isclose(float(w[k]), coef, rel_tol=1e-12), (n, subset)
    assert beta_normalized(0.01, 784, 2) == pytest.approx(3.92)


def fixed_noise(monkeypatch, eps):
    monkeypatch.setattr(torch.distributions.normal, "_standard_normal",
                        lambda shape, dtype, device: eps.to(dtype).expand(shape).clone())


def test_alpha_zero_with_two_modalities_is_half_the_sum_of_the_stated_elbos(monkeypatch):
    """alpha = 0, M = 2: L = (ELBO_a(x_a) + ELBO_b(x_b) + ELBO_ab(x_a, x_b)) / 2, each term
    reconstructing its own subset (MVAE's full + unimodal terms, halved)."""
    dims = {"a": 3, "b": 2}
    model, data = linear_problem(n=5, dims=dims)
    guide = make_guide(dims=dims)
    fixed_noise(monkeypatch, torch.tensor([0.4, -0.7]))
    ours = RecursiveMultimodalELBO(alpha=0.0).terms(model, guide, data)["elbo"]
    mvae = SubsampledMultimodalELBO(num_subsets=0).terms(model, guide, data)["elbo"]
    assert torch.allclose(ours, mvae / 2, atol=1e-10)


def test_kl_pulls_are_the_closed_form(monkeypatch):
    model, data = linear_problem(n=4)
    guide = make_guide()
    names = list(DIMS)
    fixed_noise(monkeypatch, torch.tensor([0.4, -0.7]))
    with_pull = RecursiveMultimodalELBO(alpha=1.5).terms(model, guide, data)
    without = RecursiveMultimodalELBO(alpha=0.0).terms(model, guide, data)
    n = 4

    def q(subset):
        return guide.distribution(data, {m: torch.full((n,), m in subset, dtype=torch.bool)
                                         for m in names})

    for k in range(7):
        subset = [m for i, m in enumerate(names) if (k + 1) >> i & 1]
        pull = sum(torch.distributions.kl_divergence(q(subset), q([x for x in subset if x != m]))
                   for m in subset) if len(subset) > 1 else torch.zeros(n)
        diff = without["subset_terms"][k] - with_pull["subset_terms"][k]
        assert torch.allclose(diff, 1.5 * pull, atol=1e-9), subset


def test_missing_modalities_recurse_over_the_observed_set():
    """A point with only a and b observed (of three): weights 1/2 on a, b and ab, none else."""
    model, data = linear_problem(n=3)
    mask = full_mask(data)
    mask["c"] = torch.tensor([False, True, True])
    terms = RecursiveMultimodalELBO().terms(model, make_guide(), data, mask)
    w = terms["subset_weights"]
    assert torch.allclose(w[:, 0], torch.tensor([0.5, 0.5, 0.5, 0, 0, 0, 0]))
    assert torch.allclose(w[:, 1], recursive_weights(3))
    assert (terms["subset_terms"][3:, 0] == 0).all()


def test_jmvae_is_the_top_term(monkeypatch):
    model, data = linear_problem(n=4)
    guide = make_guide()
    fixed_noise(monkeypatch, torch.tensor([0.4, -0.7]))
    full = RecursiveMultimodalELBO(alpha=2.0).terms(model, guide, data)
    jmvae = JointMultimodalELBO(alpha=2.0).terms(model, guide, data)
    assert torch.allclose(jmvae["elbo"], full["subset_terms"][6], atol=1e-10)
    assert torch.allclose(jmvae["subset_weights"][6], torch.ones(4))
    assert (jmvae["subset_weights"][:6] == 0).all()


def test_subset_encoders_train_under_the_recursive_objective():
    from pyro_mmvae.train import fit

    torch.manual_seed(0)
    model, data = linear_problem(n=64, dims={"a": 4, "b": 4})
    guide = MultimodalGuide({m: nn.Identity() for m in ("a", "b")},
                            SubsetEncoders(4, 2, 2, branch_dim=8, hidden=(8,)))
    history = fit(model, guide, RecursiveMultimodalELBO(alpha=1.0), data, epochs=15,
                  batch_size=32, lr=1e-2, progress=False)
    assert history["loss"][-1] < history["loss"][0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        RecursiveMultimodalELBO(alpha=-1.0)
    with pytest.raises(ValueError, match="beta_norm and input_dims go together"):
        RecursiveMultimodalELBO(beta_norm=0.01)
    with pytest.raises(TypeError, match="takes no 'masking'"):
        RecursiveMultimodalELBO(masking="all")
    model, data = linear_problem(n=3)
    guide = MultimodalGuide({m: nn.Linear(d, 4) for m, d in DIMS.items()}, MoE())
    with pytest.raises(ValueError, match="needs diagonal-Gaussian q"):
        RecursiveMultimodalELBO().loss(model, guide, data)
    with pytest.raises(ValueError, match="input_dims has no size for modality 'c'"):
        RecursiveMultimodalELBO(beta_norm=0.1, input_dims={"a": 3, "b": 4}).loss(
            model, make_guide(), data)


def test_beta_norm_sets_a_beta_per_subset(monkeypatch):
    dims = {"a": 3, "b": 2}
    model, data = linear_problem(n=5, dims=dims)
    guide = make_guide(dims=dims)
    fixed_noise(monkeypatch, torch.tensor([0.4, -0.7]))
    a = RecursiveMultimodalELBO(alpha=0.0, beta_norm=0.5, input_dims=dims).terms(
        model, guide, data)["subset_terms"]
    # beta_S = 0.5 * D_S / D_z: a -> 0.75, b -> 0.5, ab -> 1.25
    for k, beta in enumerate((0.75, 0.5, 1.25)):
        b = RecursiveMultimodalELBO(alpha=0.0, beta=beta).terms(model, guide, data)
        assert torch.allclose(a[k], b["subset_terms"][k], atol=1e-10)


@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_subsets_option_scores_exactly_the_stated_terms(monkeypatch, alpha):
    """Two modalities: subsets="unimodal" is L_a + L_b and "top" is L^VI_ab (with alpha = 0
    the joint ELBO L_J(ab)), each term that of the full recursion's subset_terms; top_only is
    "top"; with c missing on a point the unimodal sum runs over its observed set."""
    dims = {"a": 3, "b": 2}
    model, data = linear_problem(n=5, dims=dims)
    guide = make_guide(dims=dims)
    fixed_noise(monkeypatch, torch.tensor([0.4, -0.7]))
    full = RecursiveMultimodalELBO(alpha=alpha).terms(model, guide, data)
    s = full["subset_terms"]  # rows: {a}, {b}, {a, b}
    uni = RecursiveMultimodalELBO(alpha=alpha, subsets="unimodal").terms(model, guide, data)
    top = RecursiveMultimodalELBO(alpha=alpha, subsets="top").terms(model, guide, data)
    assert torch.allclose(uni["elbo"], s[0] + s[1], atol=1e-10)
    assert torch.allclose(top["elbo"], s[2], atol=1e-10)
    assert torch.equal(uni["subset_weights"], torch.tensor([[1.0], [1.0], [0.0]]).expand(3, 5))
    assert torch.equal(top["subset_weights"], torch.tensor([[0.0], [0.0], [1.0]]).expand(3, 5))
    assert torch.allclose(full["elbo"], (s[0] + s[1] + s[2]) / 2, atol=1e-10)
    legacy = RecursiveMultimodalELBO(alpha=alpha, top_only=True)
    assert legacy.subsets == "top" and legacy.top_only
    assert torch.allclose(legacy.terms(model, guide, data)["elbo"], s[2], atol=1e-10)
    # the unimodal term is its own modality's beta-ELBO alone: no pull, whatever alpha
    if alpha:
        plain = RecursiveMultimodalELBO(alpha=0.0, subsets="unimodal").terms(model, guide, data)
        assert torch.allclose(plain["elbo"], uni["elbo"], atol=1e-10)
    # three modalities, c missing on the first point: L_a + L_b there, L_a + L_b + L_c else
    model3, data3 = linear_problem(n=3)
    guide3 = make_guide()
    mask = full_mask(data3)
    mask["c"] = torch.tensor([False, True, True])
    all3 = RecursiveMultimodalELBO(alpha=alpha).terms(model3, guide3, data3, mask)
    unimodal = RecursiveMultimodalELBO(alpha=alpha, subsets="unimodal")
    uni3 = unimodal.terms(model3, guide3, data3, mask)
    singles = all3["subset_terms"][[0, 1, 3]]  # {a}, {b}, {c}
    assert torch.allclose(uni3["elbo"], singles.sum(0), atol=1e-10)
    assert uni3["subset_weights"][3, 0] == 0 and uni3["subset_weights"][3, 1] == 1


def test_subsets_option_bad_values():
    with pytest.raises(ValueError, match="subsets must be one of"):
        RecursiveMultimodalELBO(subsets="pairs")
    with pytest.raises(ValueError, match="top_only=True means subsets='top'"):
        RecursiveMultimodalELBO(subsets="unimodal", top_only=True)
    with pytest.raises(TypeError, match="takes no 'subsets'"):
        JointMultimodalELBO(subsets="all")
    assert JointMultimodalELBO().subsets == "top"
    assert RecursiveMultimodalELBO().subsets == "all"


def test_alpha_defaults_to_the_paper_s_working_value_everywhere():
    """One default alpha (0.01) for both bounds and the CLI."""
    from pyro_mmvae.config import RunConfig
    from pyro_mmvae.infer.recursive_elbo import DEFAULT_ALPHA
    from pyro_mmvae.runs import bound_options

    assert DEFAULT_ALPHA == 0.01
    assert RecursiveMultimodalELBO().alpha == JointMultimodalELBO().alpha == DEFAULT_ALPHA
    for bound in ("recursive", "jmvae"):
        config = RunConfig(bound=bound).resolve()
        assert config.alpha == DEFAULT_ALPHA
        assert bound_options(config)["alpha"] == DEFAULT_ALPHA
