"""``MultimodalELBO``: what the three multimodal bounds share.

Subclasses implement :meth:`MultimodalELBO._terms`, returning per-datapoint terms; this class
validates the batch, runs the terms, and exposes Pyro's ELBO interface (``loss``,
``loss_and_grads``, ``differentiable_loss``) so a bound works in ``pyro.infer.SVI`` and in a
plain torch loop alike.

Particles are vectorised: model and guide run once inside ``pyro.plate("particles", S)`` at
dim ``-(max_plate_nesting + 1)``; further plates a bound adds (stacked subsets, mixture
components) sit left of it, so the particle dim of every term is ``-(max_plate_nesting + 1)``.
"""

from __future__ import annotations

import numbers
from typing import Callable, Literal, Mapping, Optional, Union

import torch
from pyro.infer import ELBO
from pyro.infer.util import torch_item

from pyro_mmvae.params import registered_once
from pyro_mmvae.sharding import current_shard
from pyro_mmvae.protocol import (is_vectorized, scoring, stack_mask, unstack_mask,
                                 validate_batch)

from .masking import Masking, get_masking
from .schedules import check_schedule, schedule_value
from .traces import (check_scorable, dreg_surrogate, global_latents, global_log_ratio,
                     log_mean_exp, trace_guide, trace_model)

Estimator = Literal["standard", "stl", "dreg"]


def term_sums(terms: Mapping[str, torch.Tensor]) -> dict:
    """The batch sums of a bound's per-datapoint terms: the floating-point ``(B,)`` entries of
    :meth:`MultimodalELBO.terms` (others, such as ``subset_size`` or ``(K, B)`` tables, are
    left out), detached."""
    size = terms["elbo"].shape[-1:]
    return {k: v.detach().sum() for k, v in terms.items()
            if torch.is_tensor(v) and v.is_floating_point() and v.shape == size}


#: the keys every bound's :meth:`MultimodalELBO.terms` returns (with ``reconstruction/<m>`` for
#: every modality ``m``)
COMMON_TERMS = ("elbo", "reconstruction", "rate")


class MultimodalELBO(ELBO):
    r"""Base class of the multimodal bounds.

    :param num_particles: samples per data point (vectorised).
    :param beta: weight :math:`\beta` of every rate (KL) term: a finite number ``> 0``, or a
        schedule, a callable ``step -> beta`` returning finite numbers ``>= 0`` (e.g.
        :func:`~pyro_mmvae.infer.schedules.linear_warmup`). The bound is told the step with
        :meth:`set_step` (``pyro_mmvae.train.fit`` calls it before every optimisation step);
        ``self.beta`` is the value at the current step (``beta(0)`` until ``set_step`` is
        called). See :mod:`pyro_mmvae.infer.schedules`.
    :param likelihood_weights: ``{modality: w_m}``; each ``log p(x_m|z)`` is multiplied by
        ``w_m`` (training only; evaluation never weights).
    :param masking: the masking distribution :math:`\rho` over subsets
        (see :mod:`pyro_mmvae.infer.masking`).
    :param iwae: replace each expectation by its importance-weighted bound,
        :math:`\log\frac1S\sum_s w_s` (Burda et al. 2016); with ``num_particles=1`` this is the
        ELBO.
    :param estimator: gradient estimator for the guide densities. ``"stl"`` (sticking the
        landing, Roeder et al. 2017; default for the ELBO) evaluates the guide's own density with
        detached parameters and live samples (for a hierarchical guide, :math:`q(w\mid z)` at
        the live :math:`z`: :func:`~pyro_mmvae.infer.traces.stl_distribution`); ``"dreg"``
        (Tucker et al. 2019; default with ``iwae=True``) is its unbiased IWAE counterpart
        (:func:`~pyro_mmvae.infer.traces.dreg_surrogate`); ``"standard"`` keeps the score
        term.
    :param analytic_kl: use a registered closed-form KL where one exists (ELBO only; IWAE
        needs sampled densities). STL has no effect on closed-form KL terms.
    :param max_plate_nesting: plates in the model: 1, the protocol's data plate (other
        per-datapoint dims belong to the event, ``.to_event()``); anything else is refused.
    :param vectorize: how model and guide are called. ``None`` (default): a program that
        declares :func:`~pyro_mmvae.protocol.vectorized` (the library's own do) runs once with
        subsets and particles stacked on plates; any other once per (subset, particle) with
        plain ``(N,)`` masks, to the same value and gradients. ``False`` calls both once per
        cell, ``True`` treats both as vectorised.

    **Global latents** (sites outside the ``"data"`` plate, e.g. a learned noise scale or
    Bayesian decoder weights, with or without an autoguide for them) are drawn once per step
    and particle and shared by every subset term of the bound; their
    :math:`\log p(\theta) - \log q(\theta)` is counted once (weight 1, not :math:`\beta`;
    no STL/DReG for them), averaged over particles and spread evenly over the data points of
    ``terms()["elbo"]`` so that the per-datapoint terms still sum to the bound
    (``terms()["global"]`` holds it alone). With ``iwae=True`` global latents are refused:
    the importance-weighted bound no longer factorises over data points. Auxiliary guide sites
    (``infer={"is_auxiliary": True}``, as in Pyro's autoguides) add their :math:`-\log q`.
    """

    def __init__(self, num_particles: int = 1, *,
                 beta: Union[float, Callable[[int], float]] = 1.0,
                 likelihood_weights: Optional[Mapping[str, float]] = None,
                 masking: Masking = "iid_half", iwae: bool = False,
                 estimator: Optional[Estimator] = None, analytic_kl: bool = True,
                 max_plate_nesting: int = 1, vectorize: Optional[bool] = None):
        # bad arguments are a TypeError / ValueError naming them, before any step
        from pyro_mmvae.protocol import check_positive_float, check_positive_int, check_weights
        num_particles = check_positive_int(num_particles, "num_particles")
        if callable(beta):  # a schedule step -> beta, checked at step 0 here, before training
            self.beta_schedule = beta
            beta = schedule_value(beta, 0, "beta")
        else:
            self.beta_schedule = None
            beta = check_positive_float(beta, "beta")
        self._step = 0
        likelihood_weights = check_weights(likelihood_weights, "likelihood_weights")
        if max_plate_nesting != 1:
            raise ValueError(f"max_plate_nesting must be 1 (the protocol's one data plate), got "
                             f"{max_plate_nesting}; give other per-datapoint dims to the event "
                             "with .to_event()")
        # Particles are vectorised by this class itself (see particle_plate), so Pyro's own
        # vectorize_particles stays off and max_plate_nesting counts the data plates only.
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        if estimator is None:
            estimator = "dreg" if iwae else "stl"
        if estimator not in ("standard", "stl", "dreg"):
            raise ValueError(f"estimator must be 'standard', 'stl' or 'dreg', got {estimator!r}")
        if estimator == "dreg" and not iwae:
            raise ValueError("estimator='dreg' is the IWAE gradient; with iwae=False use 'stl' "
                             "(DReG reduces to it)")
        if estimator == "stl" and iwae:
            raise ValueError("estimator='stl' is biased for the IWAE bound; use 'dreg'")
        self._beta = beta
        self.likelihood_weights = likelihood_weights
        self.masking_name = masking if isinstance(masking, str) else getattr(
            masking, "__name__", "custom")
        self.masking = get_masking(masking)
        self.iwae = iwae
        self.estimator = estimator
        self.analytic_kl = analytic_kl and not iwae
        self.vectorize = vectorize

    # --- beta and its schedule ----------------------------------------------------------
    @property
    def beta(self) -> float:
        """The weight of the rate terms at the current step (a float)."""
        return self._beta

    @property
    def step(self) -> int:
        """The step last given to :meth:`set_step` (0 initially)."""
        return self._step

    def set_step(self, step: int) -> None:
        """Set the optimisation step (an ``int >= 0``: steps already taken) that a ``beta``
        schedule is evaluated at; ``ValueError`` naming ``beta`` if the schedule's value there
        is not finite and ``>= 0``. With a constant ``beta`` only the step is recorded."""
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) and not (
                torch.is_tensor(step) and step.numel() == 1 and not step.is_floating_point()):
            raise TypeError(f"step must be an int >= 0, got {type(step).__name__}")
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.beta_schedule is not None:
            self._beta = schedule_value(self.beta_schedule, step, "beta")
        self._step = step

    def check_beta(self, steps) -> None:
        """Evaluate a ``beta`` schedule at every step of ``steps`` (an iterable of ints) and
        raise ``ValueError`` naming ``beta`` at the first value that is not finite and ``>= 0``
        (``fit`` calls it before training). Nothing to check for a constant ``beta``."""
        if self.beta_schedule is not None:
            check_schedule(self.beta_schedule, steps, "beta")

    # --- Pyro's ELBO interface -----------------------------------------------------------
    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError(f"{type(self).__name__} builds its own traces; call "
                                  "differentiable_loss, loss or loss_and_grads")

    def differentiable_loss(self, model, guide, data, mask=None):
        """Negative bound summed over the batch, differentiable (for torch optimisers).

        Keeps the batch sums of the per-datapoint terms in ``self.last_terms``
        (:func:`term_sums`, detached), which :func:`pyro_mmvae.train.fit` logs per epoch."""
        terms = self.terms(model, guide, data, mask)
        self.last_terms = term_sums(terms)
        return -terms["elbo"].sum()

    def loss(self, model, guide, data, mask=None):
        """Negative bound summed over the batch, as a float."""
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, data, mask))

    def loss_and_grads(self, model, guide, data, mask=None):
        """Negative bound as a float; gradients accumulated into the parameters."""
        loss = self.differentiable_loss(model, guide, data, mask)
        loss.backward()
        return torch_item(loss)

    # --- the bound ------------------------------------------------------------------------
    def terms(self, model, guide, data, mask=None) -> dict:
        r"""Per-datapoint terms ``{name: (B,)}``.

        Every bound returns these keys (:data:`COMMON_TERMS`), and its own besides:

        - ``"elbo"``: the bound itself (differentiable);
        - ``"reconstruction"``: its expected log-likelihood terms,
          :math:`\mathbb E_q\sum_m w_m\log p(x_m\mid z)` summed over the bound's parts
          with the bound's weights (subsets, mixture components, sources), particle means;
        - ``"rate"``: its KL (rate) terms, weighted alike but not by :math:`\beta`;
        - ``"reconstruction/<m>"`` for every modality ``m`` of the batch: modality ``m``'s
          share of ``"reconstruction"`` (0 where the bound never scores it).

        For the plain (not importance-weighted) bounds with a constant :math:`\beta` and no
        further terms, ``elbo = reconstruction - beta * rate`` (the recursive bound subtracts
        ``alpha * pull`` too; with ``beta_norm`` its :math:`\beta_S` differ per subset).
        The last three are detached: they are for logging
        (:func:`pyro_mmvae.train.fit` records their epoch means in ``history["terms"]``).

        Raises ``ValueError`` (naming the modality) for bad input before any computation.
        """
        mask = validate_batch(data, mask, require_observed=True)
        unknown = sorted(set(self.likelihood_weights) - set(data))
        if unknown:
            raise ValueError(f"likelihood_weights name unknown modality '{unknown[0]}': data has "
                             f"{sorted(data)}")
        modalities = list(data)
        # scoring: masked-out real-valued modalities are not generated (nothing reads them);
        # registered_once: the library modules' parameters are registered once per evaluation,
        # not at every one of the traces below
        with scoring(), registered_once(model, guide):
            return self._terms(model, guide, data, stack_mask(mask, modalities), modalities)

    def _terms(self, model, guide, data, observed, modalities) -> dict:
        raise NotImplementedError

    # --- helpers for subclasses -------------------------------------------------------------
    def draw_subsets(self, observed: torch.Tensor, modalities) -> torch.Tensor:
        """``self.masking(observed)`` for ``observed (..., B, M)``; inside a data shard that
        knows its whole batch's mask (:func:`pyro_mmvae.sharding.data_shard`), drawn for the
        whole batch and narrowed to the shard's rows, so that each data point's subsets do not
        depend on how the batch is split across processes."""
        shard = current_shard()
        if shard is None or shard.mask is None:
            return self.masking(observed)
        whole = stack_mask(shard.mask, modalities).to(observed.device)
        whole = whole.expand(observed.shape[:-2] + whole.shape)
        return self.masking(whole).narrow(-2, shard.offset, shard.size)

    def common_terms(self, reduce: Callable, recs: Mapping[str, torch.Tensor], kl,
                     modalities) -> dict:
        """``reconstruction``, ``rate`` and ``reconstruction/<m>`` (see :meth:`terms`) from the
        per-modality log-likelihoods ``recs`` (:func:`~.traces.reconstructions`) and the KL
        terms ``kl``, all shaped as the bound's per-(part, particle, data point) values and
        reduced to ``(B,)`` by ``reduce``, as the bound reduces them; detached."""
        with torch.no_grad():
            rec = 0.0
            for value in recs.values():
                rec = rec + value
            kl = torch.as_tensor(kl)
            shape = torch.broadcast_shapes(torch.as_tensor(rec).shape, kl.shape)
            out = {"reconstruction": reduce(torch.broadcast_to(torch.as_tensor(rec), shape)),
                   "rate": reduce(torch.broadcast_to(kl, shape))}
            zero = torch.zeros_like(out["reconstruction"])
            for m in modalities:
                out[f"reconstruction/{m}"] = (reduce(torch.broadcast_to(recs[m], shape))
                                              if m in recs else zero)
        return out

    def vectorized(self, program) -> bool:
        """Whether ``program`` runs once inside the bound's plates (see ``vectorize``)."""
        return is_vectorized(program) if self.vectorize is None else self.vectorize

    def with_globals(self, terms: dict, guide_tr, model_tr) -> dict:
        """Add the global latents' log-ratio (class docstring) to ``terms["elbo"]`` ``(B,)``."""
        names = global_latents(guide_tr)
        if names and self.iwae:
            raise ValueError(f"iwae=True with global latents {names}: the importance-weighted "
                             "bound does not factorise over data points; use iwae=False")
        ratio = global_log_ratio(guide_tr, model_tr, self.particle_dim)
        if not torch.is_tensor(ratio):  # no global latent and no global factor
            return terms
        ratio = ratio.mean()
        elbo = terms["elbo"]
        return {**terms, "elbo": elbo + ratio / elbo.shape[-1], "global": ratio.detach()}

    @property
    def particle_dim(self) -> int:
        return -(self.max_plate_nesting + 1)

    def particle_plate(self):
        return ("particles", self.num_particles, self.particle_dim)

    def outer_dim(self) -> int:
        """Dim of a plate stacked left of the particle plate (subsets, components)."""
        return -(self.max_plate_nesting + 2)

    @property
    def stop_gradient(self) -> bool:
        return self.estimator != "standard"

    @staticmethod
    def masks(tensor, modalities):
        return unstack_mask(tensor, modalities)

    def trace_stacked(self, model, guide, data, masks, size: int, *, model_data=None,
                      model_masks=None):
        """``(guide_trace, model_trace)`` with ``size`` mask sets stacked on a ``"subsets"``
        plate left of the particle plate (masks ``{m: (size, 1, B)}``): the guide traced once
        (with views of its samples for DReG) and checked, the model replayed on it once, with
        ``model_data`` / ``model_masks`` if they differ from the guide's."""
        plates = [("subsets", size, self.outer_dim()), self.particle_plate()]
        guide_tr = trace_guide(guide, data, masks, plates, views=self.estimator == "dreg",
                               vectorize=self.vectorized(guide))
        check_scorable(guide_tr)
        model_tr = trace_model(model, guide_tr, data if model_data is None else model_data,
                               masks if model_masks is None else model_masks, plates,
                               vectorize=self.vectorized(model))
        return guide_tr, model_tr

    def reduce_particles(self, value, samples=()):
        """Combine per-particle estimates: mean (ELBO) or log-mean-exp (IWAE, DReG grads)."""
        dim = self.particle_dim
        if not self.iwae:
            return value.mean(dim)
        bound = log_mean_exp(value, dim)
        if self.estimator == "dreg":
            surrogate = dreg_surrogate(value, samples, dim, self.beta)
            return bound.detach() + (surrogate - surrogate.detach())
        return bound
