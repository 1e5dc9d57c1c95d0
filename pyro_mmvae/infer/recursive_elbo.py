r"""The M2VAE's recursive objective and JMVAE-kl (its baseline).

M2VAE (*Deep Generative Models for learning Coherent Latent Representations from Multi-Modal
Data*, ICLR 2019 submission, eqs. 4-11; later Korthals et al.) writes
:math:`\log p(x_M) = \frac1{|M|}\sum_{m\in M}\log p(x_{M\setminus m})\,p(x_m\mid x_{M\setminus m})`
and recurses down to single modalities (eq. 11):

.. math::
    \mathcal L^{M2}_S = \frac1{|S|}\Big[\mathcal L^{VI}_S
        + \sum_{m\in S}\mathcal L^{M2}_{S\setminus m}\Big],\qquad
    \mathcal L^{M2}_{\{m\}} = \mathcal L_m,

with the unimodal :math:`\beta`-ELBO :math:`\mathcal L_m = \mathbb E_{q(z\mid x_m)}\log
p(x_m\mid z) - \beta_m\,\mathrm{KL}(q(z\mid x_m)\,\|\,p(z))` (its own modality only) and, for
:math:`|S|\ge2`, the variation-of-information term

.. math::
    \mathcal L^{VI}_S = \mathbb E_{q(z\mid x_S)}\sum_{m\in S}\log p(x_m\mid z)
        - \beta_S\,\mathrm{KL}(q(z\mid x_S)\,\|\,p(z))
        - \alpha\sum_{m\in S}\mathrm{KL}\big(q(z\mid x_S)\,\|\,q(z\mid x_{S\setminus m})\big).

Unrolled, every non-empty :math:`S\subseteq M` (:math:`n=|M|`) appears once, with weight

.. math:: w_S = \frac{1}{|S|\,\binom{n}{|S|}}

(each of the :math:`(n-|S|)!` orders of removing :math:`M\setminus S` contributes
:math:`\prod_{j=|S|}^{n} 1/j`): :math:`(\tfrac12,\tfrac12,\tfrac12)` for two modalities
(:math:`\mathcal L^{M2}_{ab} = \tfrac12(\mathcal L_a + \mathcal L_b + \mathcal L^{VI}_{ab})`,
eq. 6 halved) and :math:`\tfrac13, \tfrac16, \tfrac13` for the full set, pairs and singletons
of three. With missing modalities the recursion runs over each data point's observed set.

JMVAE-kl (Suzuki, Nakayama and Matsuo 2017, arXiv:1611.01891; M2VAE eq. 3) is the top term
alone, :math:`\mathcal L^{VI}_O`: the joint ELBO of the observed set with the encoders of
one modality fewer pulled towards it.

Which subsets are scored is the ``subsets`` option (per data point, :math:`O` its observed
set; each term as above):

- ``"all"`` (default): the recursion, :math:`\sum_{\emptyset\ne S\subseteq O} w_S(|O|)\,
  \mathcal L_S` with :math:`\mathcal L_S = \mathcal L^{VI}_S` for :math:`|S|\ge2` and
  :math:`\mathcal L_{\{m\}}=\mathcal L_m`;
- ``"top"``: :math:`\mathcal L^{VI}_O` alone, weight 1 (JMVAE-kl; with ``alpha=0`` the joint
  ELBO :math:`\mathcal L_J(O)` of M2VAE eq. 2, the first stage of the tVAE);
- ``"unimodal"``: :math:`\sum_{m\in O}\mathcal L_m`, weight 1 each, every unimodal
  :math:`\beta`-ELBO reconstructing its own modality only — the second stage of the tVAE
  (Vedantam, Fischer, Huang and Murphy, *Generative Models of Visually Grounded Imagination*,
  ICLR 2018, arXiv:1705.10762, as the M2VAE paper's §5 uses it: the unimodal encoders
  trained by their own ELBOs against frozen decoders, :func:`pyro_mmvae.train.fit_two_stage`).
  ``alpha`` plays no part (singletons have no pull).

Both need a guide that gives :math:`q(z\mid x_S)` for every subset — subset-specific encoders
(:class:`~pyro_mmvae.guides.SubsetEncoders`, the paper's), or a PoE — as a diagonal Gaussian
(the KL divergences are closed-form). All subsets run in one guide and one model call, stacked
on a ``"subsets"`` plate; each subset's model call scores its own modalities.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
from pyro.distributions import Normal
from torch.distributions import kl_divergence

from pyro_mmvae.protocol import check_weights, subset_members, unstack_mask

from .base import MultimodalELBO
from .traces import latent_sites, latent_values, local_latents, rate, reconstructions, total


# the M2VAE's working value (its (beta, alpha) study: alpha <= 1e-2 works, alpha = 1
# over-constrains, the multimodal classes collapsing onto the unimodal means)
DEFAULT_ALPHA = 0.01


def beta_normalized(beta_norm: float, input_dim: int, latent_dim: int) -> float:
    r""":math:`\beta_* = \beta_{\rm norm}\,D_*/D_z` (Higgins et al. 2017's normalisation, as
    the M2VAE applies it per encoder, :math:`D_*` the input size that encoder sees):
    ``beta_normalized(0.01, 784, 2)`` is 3.92, the paper's "β ≈ 4"."""
    if not beta_norm >= 0 or input_dim < 1 or latent_dim < 1:
        raise ValueError(f"beta_norm must be >= 0 and the dimensions >= 1, got {beta_norm}, "
                         f"{input_dim}, {latent_dim}")
    return float(beta_norm) * input_dim / latent_dim


def weight_table(num_modalities: int) -> torch.Tensor:
    r"""``(2^M - 1, M + 1)``: :math:`w_S(n) = 1/(|S|\binom{n}{|S|})` for every non-empty
    subset (rows in the index order of :func:`~pyro_mmvae.protocol.subset_members`) and
    every size ``n`` of the observed set (0 where :math:`|S| > n`)."""
    sizes = subset_members(num_modalities).sum(-1).tolist()
    return torch.tensor([[1.0 / (k * math.comb(n, k)) if k <= n else 0.0
                          for n in range(num_modalities + 1)] for k in sizes],
                        dtype=torch.float64)


def recursive_weights(num_modalities: int) -> torch.Tensor:
    r"""``(2^n - 1,)``: :math:`w_S = 1/(|S|\binom{n}{|S|})` for every non-empty subset of all
    ``n`` modalities, in index order (:func:`weight_table` at ``n``)."""
    return weight_table(num_modalities)[:, num_modalities]


class RecursiveMultimodalELBO(MultimodalELBO):
    r"""The M2VAE objective :math:`\mathcal L^{M2}` (module docstring), summed over the batch.

    :param alpha: weight of the KL terms pulling :math:`q(z\mid x_{S\setminus m})` towards
        :math:`q(z\mid x_S)` (default :data:`DEFAULT_ALPHA` = 0.01, the paper's working
        value).
    :param beta: the rates' weight :math:`\beta_S` for every subset (a number or schedule, as
        every bound), unless ``beta_norm`` is given.
    :param beta_norm: with ``input_dims`` ``{modality: D_m}``, per subset
        :math:`\beta_S=\beta_{\rm norm}\sum_{m\in S}D_m/D_z` (:func:`beta_normalized`).
    :param subsets: which subset terms the bound sums (module docstring): ``"all"`` (the
        recursion, default), ``"top"`` (:math:`\mathcal L^{VI}_O` alone,
        :class:`JointMultimodalELBO`) or ``"unimodal"`` (:math:`\sum_{m\in O}\mathcal L_m`,
        the tVAE's second stage).
    :param top_only: the same as ``subsets="top"`` (kept for existing code).

    ``terms()`` gives per-datapoint ``elbo``, the common ``reconstruction``, ``rate`` and
    ``reconstruction/<m>`` (weighted by the subsets' weights, :meth:`MultimodalELBO.terms`),
    ``pull`` (the weighted :math:`\sum_{m\in S}\mathrm{KL}(q_S\,\|\,q_{S\setminus m})`, so that
    ``elbo = reconstruction - beta * rate - alpha * pull`` for a constant :math:`\beta`) and,
    ``(2^M - 1, B)`` in subset-index order, ``subset_terms`` (each
    :math:`\mathcal L^{VI}_S` or :math:`\mathcal L_m`, zero for subsets not scored) and
    ``subset_weights``; ``elbo`` is ``(subset_weights * subset_terms).sum(0)``.
    """

    SUBSETS = ("all", "top", "unimodal")

    def __init__(self, num_particles: int = 1, *, alpha: float = DEFAULT_ALPHA,
                 beta_norm: Optional[float] = None,
                 input_dims: Optional[Mapping[str, int]] = None, subsets: Optional[str] = None,
                 top_only: bool = False, **kwargs):
        for key in ("masking",):
            if key in kwargs:
                raise TypeError(f"{type(self).__name__} takes no {key!r}: it scores fixed "
                                "subsets")
        super().__init__(num_particles, masking="all", **kwargs)
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        if subsets is None:
            subsets = "top" if top_only else "all"
        elif subsets not in self.SUBSETS:
            raise ValueError(f"subsets must be one of {self.SUBSETS}, got {subsets!r}")
        elif top_only and subsets != "top":
            raise ValueError(f"top_only=True means subsets='top', but subsets={subsets!r}")
        if (beta_norm is None) != (input_dims is None):
            raise ValueError("beta_norm and input_dims go together")
        if beta_norm is not None and self.iwae:
            raise ValueError("beta_norm (a beta per subset) is not supported with iwae=True")
        self.alpha = float(alpha)
        self.beta_norm = beta_norm
        self._cache = {}
        self.input_dims = None if input_dims is None else check_weights(input_dims, "input_dims")
        self.subsets = subsets

    @property
    def top_only(self) -> bool:
        """Whether only the top term is scored (``subsets == "top"``)."""
        return self.subsets == "top"

    def _terms(self, model, guide, data, observed, modalities):
        b, m = observed.shape
        members, table = self._subsets(m, observed.device)  # (K, M), (K, M + 1)
        k = members.shape[0]
        sizes = members.sum(-1)  # (K,)
        present = ~(members.unsqueeze(1) & ~observed.unsqueeze(0)).any(-1)  # (K, B): S <= O
        n_obs = observed.sum(-1)  # (B,)
        if self.subsets == "top":
            weights = present & (sizes.unsqueeze(1) == n_obs)
        elif self.subsets == "unimodal":
            weights = present & (sizes.unsqueeze(1) == 1)
        else:
            weights = present * table[:, n_obs]  # (K, B): w_S(|O|) per data point
        weights = weights.to(torch.get_default_dtype())
        rows = members.unsqueeze(1) & observed.unsqueeze(0)  # (K, B, M): S's own, observed
        masks = unstack_mask(rows.unsqueeze(1), modalities)  # {m: (K, 1, B)}
        guide_tr, model_tr = self.trace_stacked(model, guide, data, masks, k)
        latents = local_latents(guide_tr)
        recs = reconstructions(model_tr, latent_sites(guide_tr), self.likelihood_weights)
        rec = total(recs.values())  # (K, S, B)
        values = latent_values(guide_tr, latent_sites(guide_tr))
        kl = rate(guide_tr, model_tr, latents, self.analytic_kl, self.stop_gradient, values)
        elbo_s = self.reduce_particles(rec - self._betas(members, data, values, latents)
                                       * kl, [values[n] for n in latents])  # (K, B)
        pull = self._pulls(guide_tr, latents, members)  # (K, B): sum_m KL(q_S || q_{S\m})
        term = elbo_s - self.alpha * pull
        term = torch.where(weights > 0, term, torch.zeros_like(term))
        elbo = (weights * term).sum(0)
        dim = self.particle_dim

        def reduce(t):  # the subsets' weights, as the bound
            return torch.where(weights > 0, weights * t, torch.zeros_like(weights)).sum(0)

        def particle_mean(t):
            return reduce(t.mean(dim))
        return {"elbo": elbo, **self.common_terms(particle_mean, recs, kl, modalities),
                "pull": reduce(pull).detach(),
                "subset_terms": term.detach(), "subset_weights": weights}

    def _subsets(self, m: int, device):
        """The subsets' members ``(K, M)`` and :func:`weight_table`, built once per size."""
        key = (m, device)
        if key not in self._cache:
            self._cache[key] = (subset_members(m, device), weight_table(m).to(device))
        return self._cache[key]

    def _betas(self, members, data, values, latents):
        r""":math:`\beta_S` for every subset, ``(K, 1, 1)`` (or the common ``beta``)."""
        if self.beta_norm is None:
            return self.beta
        missing = [m for m in data if m not in self.input_dims]
        if missing:
            raise ValueError(f"input_dims has no size for modality '{missing[0]}' (beta_norm "
                             "needs every modality's input size)")
        d_z = sum(values[n].shape[-1] for n in latents)
        dims = torch.tensor([float(self.input_dims[m]) for m in data],
                            dtype=torch.get_default_dtype(), device=members.device)
        betas = self.beta_norm * (members.to(dims.dtype) @ dims) / d_z  # beta_normalized
        return betas.reshape(-1, 1, 1)

    def _pulls(self, guide_tr, latents, members):
        r"""``(K, B)``: :math:`\sum_{m\in S}\mathrm{KL}(q_S\,\|\,q_{S\setminus m})` for every
        subset ``S`` with :math:`|S|\ge2` (0 for singletons), closed-form."""
        k, m = members.shape
        # the row of S \ m for every (S, m in S) with |S| > 1, else -1 (cheap tensor ops)
        rows = torch.arange(1, k + 1, device=members.device).unsqueeze(1) \
            - (1 << torch.arange(m, device=members.device)) - 1  # (K, M)
        keep = members & (members.sum(-1, keepdim=True) > 1)
        minus = torch.where(keep, rows, torch.full_like(rows, -1))
        total = 0.0
        for name in latents:
            fn = guide_tr.nodes[name]["fn"]
            base = getattr(fn, "base_dist", None)
            if not isinstance(base, torch.distributions.Normal):
                raise ValueError(f"{type(self).__name__} needs diagonal-Gaussian q(z | x_S) "
                                 f"(Normal(...).to_event(1)) at site '{name}', got "
                                 f"{type(fn).__name__}: its KL terms are closed-form")
            shape = fn.batch_shape + fn.event_shape  # (K, S, B, D)
            loc, scale = base.loc.expand(shape), base.scale.expand(shape)
            idx = minus.clamp_min(0)  # (K, M)
            # q_S broadcast against q_{S \ m}: (K, M, S, B, D)
            q_s = Normal(loc.unsqueeze(1), scale.unsqueeze(1)).to_event(1)
            q_r = Normal(loc[idx], scale[idx]).to_event(1)
            kl = kl_divergence(q_s, q_r)  # (K, M, S, B)
            kl = torch.where((minus >= 0)[..., None, None], kl, torch.zeros_like(kl))
            total = total + kl.sum(1).mean(self.particle_dim)  # (K, B)
        return total


class JointMultimodalELBO(RecursiveMultimodalELBO):
    r"""JMVAE-kl (Suzuki et al. 2017, eq. 3 of the M2VAE paper): per data point

    .. math:: \mathbb E_{q(z\mid x_O)}\log p(x_O\mid z) - \beta\,\mathrm{KL}(q(z\mid x_O)\,\|\,
        p(z)) - \alpha\sum_{m\in O}\mathrm{KL}\big(q(z\mid x_O)\,\|\,q(z\mid x_{O\setminus m})
        \big),

    the top term of :class:`RecursiveMultimodalELBO` alone; for two modalities the unimodal
    encoders are fitted to the joint one, with no reconstruction or prior term of their own.
    """

    def __init__(self, num_particles: int = 1, *, alpha: float = DEFAULT_ALPHA, **kwargs):
        for key in ("subsets", "top_only"):
            if key in kwargs:
                raise TypeError(f"JointMultimodalELBO takes no {key!r}: it is subsets='top'")
        super().__init__(num_particles, alpha=alpha, subsets="top", **kwargs)
