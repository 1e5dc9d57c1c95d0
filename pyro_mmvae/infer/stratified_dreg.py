r"""Unbiased doubly-reparameterised gradients for the stratified mixture IWAE bound.

The bound (MMVAE, Shi et al. 2019, with the modality average outside the log — the
``--looser`` objective of their code) stratifies over the components of a mixture guide
:math:`q(z)=\sum_k\pi_k q_k(z)`: :math:`S` particles :math:`z_{ks}=g_k(\epsilon_{ks};\phi)` from
every component, the *mixture* density in the weights,

.. math::
    \mathcal L = \sum_k \pi_k\,\mathbb E\Big[\log\frac1S\sum_s w(z_{ks})\Big],\qquad
    \log w(z) = \log p(x\mid z) + \beta\big(\log p(z) - \log q(z)\big).

**Its exact gradient.** With :math:`\tilde w_{ks}` the weights normalised within stratum
:math:`k` and fixed :math:`\pi`,

.. math::
    \nabla_\phi\mathcal L = \sum_k\pi_k\,\mathbb E\Big[\sum_s\tilde w_{ks}\,
        \partial_z\log w(z_{ks})\,\partial_\phi z_{ks}\Big]
      - \beta\sum_k\pi_k\,\mathbb E\Big[\sum_s\tilde w_{ks}\,\partial_\phi\log q(z_{ks})\Big].

Per-stratum DReG (Tucker et al. 2019), which is what MMVAE's ``m_dreg_looser`` does, rewrites
the second term as if the score were that of the component that drew the sample,
:math:`\partial_\phi\log q_k`, whose reparameterised form is :math:`\sum_s\tilde w_{ks}(1-\tilde
w_{ks})\partial_z\log w\,\partial_\phi z`. The score in the weight is that of the *mixture*; the
two expectations agree for :math:`S=1` (both are zero) but not for :math:`S>1`, so that estimator
is biased (``tests/infer/test_mmvae.py`` measures the bias).

**The unbiased form.** Write :math:`\partial_\phi\log q = \sum_l r_l\,\partial_\phi\log q_l`
with responsibilities :math:`r_l = \pi_l q_l/q`. For each :math:`(k, l, s)`, condition on the
other particles of stratum :math:`k`, move the expectation from :math:`q_k` to :math:`q_l` with
:math:`\pi_k q_k r_l = \pi_l q_l r_k`, and reparameterise in stratum :math:`l`:

.. math::
    \pi_k\,\mathbb E_{q_k}\big[\tilde w_{ks}\,r_l\,\partial_\phi\log q_l\big]
    = \pi_l\,\mathbb E_{z\sim q_l}\big[\partial_z\big(r_k(z)\,\hat w^{(k)}_s(z)\big)\,
      \partial_\phi z\big],\qquad
    \hat w^{(k)}_s(z) = \frac{w(z)}{w(z)+\sum_{i\neq s}w(z_{ki})},

where the other particles :math:`z_{ki}, i\neq s` of stratum :math:`k` stand in (unbiasedly, being
independent of :math:`z_{ls}`) for fresh draws. Summing over :math:`k`,

.. math::
    \widehat{\nabla_\phi\mathcal L} = \sum_l\pi_l\sum_s\Big[\tilde w_{ls}\,\partial_z\log w
        - \beta\,\partial_z h_{ls}\Big](z_{ls})\;\partial_\phi z_{ls},\qquad
    h_{ls}(z) = \sum_k r_k(z)\,\hat w^{(k)}_s(z),

with every density evaluated at detached parameters. With one component :math:`h_s=\tilde
w_s` and this is DReG (:math:`\tilde w_s^2` for :math:`\beta=1`); with one particle
:math:`h\equiv1` and it is STL; at the exact posterior :math:`h` is constant and the encoder
gradient vanishes. It costs no extra model evaluation — the other strata's weights are already
computed — only one extra backward pass from :math:`\log w` to the samples. Learned mixture
weights add their exact terms :math:`\sum_l\mathcal L_l\,\nabla\pi_l` (the outer weights, left
to the caller) and :math:`-\beta\sum_l\pi_l\sum_s\tilde w_{ls}\,\partial_\pi\log q(z_{ls})`.

The model parameters receive the IWAE gradient :math:`\sum_l\pi_l\sum_s\tilde w_{ls}\nabla_\theta
\log w(z_{ls})`, as under DReG. Because those weights differ from the encoder's
coefficients, the model is evaluated at a detached copy ``z_in`` of the samples and the
encoder's path gradient is formed explicitly with ``torch.autograd.grad`` (no gradient hook
whose ratio could overflow).

The responsibilities :math:`r_k(z_{ls})` form a (draw x component) pairwise tensor, evaluated
in chunks of draws (checkpointed; :func:`~pyro_mmvae.infer.mixtures.chunked`) so that memory
grows as one chunk's, not as :math:`K^2`.

References: George Tucker, Dieterich Lawson, Shixiang Gu and Chris J. Maddison, *Doubly
Reparameterized Gradient Estimators for Monte Carlo Objectives*, ICLR 2019, arXiv:1810.04152;
Shi et al., NeurIPS 2019, arXiv:1911.03393 (MMVAE).
"""

from __future__ import annotations

import torch
from pyro.distributions.util import detach

from typing import Optional

from .mixtures import chunked, components_first, draw_chunk, mixture_logits, select_components
from .traces import log_mean_exp


def leave_one_out_logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    r"""``out[..., s, ...] = log sum_{i != s} exp(x[..., i, ...])`` along ``dim`` (exact, no
    cancellation; ``-inf`` when ``dim`` has size 1)."""
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    rows = x.unsqueeze(-2).expand(x.shape[:-1] + (n, n)).masked_fill(eye, -float("inf"))
    return rows.logsumexp(-1).movedim(-1, dim)


def stratified_dreg(log_w: torch.Tensor, z: torch.Tensor, z_in: torch.Tensor, mixture,
                    beta: float, dim: int, chunk: Optional[int] = None,
                    keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Per-stratum IWAE values with the unbiased stratified DReG gradient (module docstring).

    :param log_w: ``(K, ..., S, B)`` log weights computed at ``z_in`` with the guide's
        parameters detached and the model's live (strata first, particles at ``dim``).
    :param z: ``(K, ..., S, B, D)`` the reparameterised samples (live in the guide parameters).
    :param z_in: a detached leaf with the value of ``z`` (requiring grad) at which ``log_w``
        was computed.
    :param mixture: the guide distribution ``q`` with batch ``(..., S, B)`` exposing
        ``mixture_distribution`` (``K`` logits) and ``component_distribution`` (batch ``(...,
        K)``).
    :param beta: the weight of :math:`\log p(z)-\log q(z)` in ``log_w``.
    :param dim: the particle dim (negative).
    :param chunk: draws ``L`` per chunk of the pairwise (draw x component) terms (``None``:
        :func:`~pyro_mmvae.infer.mixtures.draw_chunk`'s budget); values do not depend on it.
    :param keep: the indices ``(K,)`` of the mixture's components that the strata are, when
        zero-weight components were dropped (they have responsibility 0 everywhere, so they
        add nothing); None: the strata are all the mixture's components.
    :returns: ``(K, ..., B)``: :math:`\log\frac1S\sum_s w_{ks}` per stratum, whose gradient
        is the estimator above (weight the strata by :math:`\pi_k` outside).
    """
    value = log_mean_exp(log_w, dim)
    lw = log_w.detach()
    w = lw.softmax(dim)
    surrogate = (w * log_w).sum(dim)  # model gradients: sum_s w_s grad_theta log w_s
    logits = mixture_logits(mixture)  # (..., S, B, K), normalised
    if keep is not None:
        logits = logits.index_select(-1, keep)
    needs_path = torch.is_grad_enabled() and z.requires_grad
    if needs_path or logits.requires_grad:
        comps = detach(components_first(mixture))  # batch (K, ..., S, B)
        if keep is not None:
            comps = select_components(comps, keep)
        size = draw_chunk(z_in, comps.batch_shape[0], chunk)

        def joint(z_rows):  # log pi_k q_k(z_ls) at detached parameters: (l, ..., S, B, K)
            return logits.detach() + comps.log_prob(z_rows.unsqueeze(1)).movedim(1, -1)
    if needs_path:
        others = leave_one_out_logsumexp(lw, dim)  # (K, ..., S, B): sum over i != s

        def h_rows(z_rows, log_w_rows):
            joint_lp = joint(z_rows)
            log_r = joint_lp - joint_lp.logsumexp(-1, keepdim=True)  # responsibilities
            log_r = log_r.movedim(-1, 1)  # (l, K, ..., S, B)
            own = log_w_rows.unsqueeze(1)  # (l, 1, ..., S, B), live in z_in
            log_hat = own - torch.logaddexp(own, others.unsqueeze(0))
            return (log_r + log_hat).exp().sum(1)  # (l, ..., S, B)
        h = chunked(h_rows, z_in, log_w, chunk=size)  # (L, ..., S, B)
        coef = (w * log_w - beta * h).sum()
        grad = torch.autograd.grad(coef, z_in, retain_graph=True, allow_unused=True)[0]
        if grad is not None:
            surrogate = surrogate + (grad.detach() * z).sum(-1).sum(dim)
    if logits.requires_grad:
        # exact direct term of learned weights: -beta sum_s w_s d/dpi log q(z_s)
        def log_q_rows(z_rows):  # (l, ..., S, B), live in the logits only
            return (logits + joint(z_rows).detach() - logits.detach()).logsumexp(-1)
        log_q = chunked(log_q_rows, z_in, chunk=size)
        surrogate = surrogate - beta * (w * log_q).sum(dim)
    return value.detach() + (surrogate - surrogate.detach())
