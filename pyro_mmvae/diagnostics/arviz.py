r"""Conversion of a multimodal model and guide to an :class:`arviz.InferenceData`.

:func:`to_inference_data` draws ``num_samples`` latents per data point from the guide
:math:`q(z\mid x_S)` (``S`` = the mask), replays the model at those draws and collects numpy
arrays on the CPU (whatever device the tensors live on). ``chain`` has size 1 and ``draw`` size
``num_samples``; ``datapoint`` indexes the batch (coordinates ``0..N-1`` unless given).

- ``posterior``: every guide latent, ``z`` with dims ``(chain, draw, datapoint, z_dim)`` and a
  private ``w_<m>`` with ``(chain, draw, datapoint, w_<m>_dim)``. In general a vector event dim
  is ``<site>_dim``, a larger event ``<site>_dim_0, <site>_dim_1, ...``, a scalar none.
- ``posterior_predictive``: ``x_<m>`` with ``(chain, draw, datapoint, <m>_dim_0, ...)``, one
  draw of :math:`p(x_m\mid z)` per latent draw: a reconstruction where ``m`` is observed, a
  cross-modal generation where it is masked out or absent from ``data`` (the value
  :func:`pyro_mmvae.observe` put in the trace there).
- ``log_likelihood``: ``x_<m>`` with ``(chain, draw, datapoint)``, the pointwise
  :math:`\log p(x_m\mid z)` at the data (unscaled), ``NaN`` where ``m`` is masked out.
- ``observed_data``: ``x_<m>`` with ``(datapoint, <m>_dim_0, ...)``, the data with ``NaN``
  where masked out (integer data is converted to float64 to hold the ``NaN``); modalities
  absent from ``data`` have none.
- ``constant_data``: ``mask_<m>`` with ``(datapoint,)``, the mask (bool).
- ``sample_stats``: ``lp`` (:math:`\log p(x_S, z)`, every model site in the data plate, masked
  as in the bounds), ``log_q`` (:math:`\log q(z\mid x_S)`) and ``log_weight`` (``lp - log_q``,
  the importance weight), each ``(chain, draw, datapoint)``.

Latents sampled outside the data plate (global latents) get no ``datapoint`` dim (and are left
out of ``sample_stats``); other plates within ``max_plate_nesting`` keep their plate's name as
the dim name.

**What ArviZ's diagnostics mean here.** The draws are independent samples of an amortised
variational posterior, one set per data point, with the network weights as point estimates:
one chain, no autocorrelation, so ``ess`` is about ``num_samples`` and ``r_hat`` is undefined
(ArviZ reports NaN and logs a shape warning for a single chain; ``az.summary(idata,
kind="stats")`` skips both). ``az.summary`` is then a per-datapoint, per-dimension table of the
guide's means, standard deviations and HDIs.

``az.loo`` / ``az.waic`` run on one modality's ``log_likelihood`` once the masked-out (NaN)
data points are dropped, e.g. ``az.loo(idata.isel(datapoint=np.flatnonzero(mask["a"])),
var_name="x_a")``, but read them with care: PSIS-LOO assumes draws from the *exact* posterior
of parameters *shared* by all data points, whereas here each data point has its own latent
drawn from an approximate ``q(z | x_i)``, and leaving ``x_i`` out leaves that latent with its
prior, so Pareto :math:`\hat k` values are often high and the estimates unreliable. For
held-out likelihoods prefer :func:`pyro_mmvae.eval.log_likelihood` (importance-sampled, with
``given=`` for conditionals). The importance weights are a direct check of the guide as a
proposal (Yao et al. 2018): ``_, khat = az.psislw(idata.sample_stats.log_weight.stack(
__sample__=("chain", "draw")))`` gives one :math:`\hat k` per data point, below 0.7 being
usable.
"""

from __future__ import annotations

import datetime
import math
from typing import Mapping, Optional, Sequence

import arviz as az
import numpy as np
import pyro
import torch
import xarray as xr
from pyro.distributions.util import broadcast_shape
from pyro.poutine.util import site_is_subsample

from pyro_mmvae.eval.memory import chunk_for_budget, trace_nbytes
from pyro_mmvae.infer.traces import (check_model_guide, latent_sites, site_log_prob, trace_guide,
                                     trace_model)
from pyro_mmvae.protocol import (DATA_PLATE, check_positive_int, num_points, site_modality,
                                 validate_batch)

DRAWS_PLATE = "_draws"
SAMPLE_DIMS = ("chain", "draw")
DATAPOINT_DIM = "datapoint"


def to_inference_data(model, guide, data: Mapping[str, torch.Tensor],
                      mask: Optional[Mapping[str, torch.Tensor]] = None, num_samples: int = 100,
                      coords: Optional[Mapping[str, Sequence]] = None,
                      dims: Optional[Mapping[str, Sequence[str]]] = None, *,
                      posterior_predictive: bool = True, log_likelihood: bool = True,
                      sample_stats: bool = True, chunk_size: Optional[int] = None,
                      max_plate_nesting: int = 1,
                      memory_budget: Optional[int] = None) -> az.InferenceData:
    r"""Draw from ``guide(data, mask)`` and replay ``model(data, mask)`` into ArviZ groups.

    The groups and their dims are listed in the module docstring (:mod:`pyro_mmvae.diagnostics
    .arviz`). Draws are vectorised with an outer ``pyro.plate`` of size ``num_samples`` (at dim
    ``-(max_plate_nesting + 1)``, as :func:`pyro_mmvae.eval.log_marginal` does), in chunks of
    ``chunk_size`` draws to bound the memory of the networks' activations (default: as many as
    fit in ``memory_budget``, 256 MiB). Nothing is differentiated (``torch.no_grad``); the modules'
    train/eval mode is left as it is (call ``model.eval(); guide.eval()`` first if they use
    dropout or batch norm). Set ``pyro.set_rng_seed`` beforehand for reproducible draws.

    :param model: a Pyro program ``model(data, mask)`` following the multimodal protocol.
    :param guide: a Pyro program ``guide(data, mask)`` sampling the model's latents.
    :param data: ``{modality: (N, ...)}`` tensors (missing entries: a finite placeholder).
    :param mask: ``{modality: (N,)}`` bool, True where observed; None observes everything. The
        guide is conditioned on it, so masked-out modalities are cross-generated in
        ``posterior_predictive``. It may name a modality absent from ``data`` (all False): the
        model generates it.
    :param num_samples: draws per data point (the ``draw`` dim; ``chain`` has size 1).
    :param coords: extra or replacing coordinates, ``{dim: values}``, e.g.
        ``{"datapoint": ids, "z_dim": ["size", "tilt"]}``. ``datapoint`` defaults to
        ``0..N-1``; every other dim to ``0..size-1``.
    :param dims: ``{variable: [dim, ...]}`` renaming the dims of a variable after
        ``chain, draw`` (ArviZ's convention), e.g. ``{"x_img": ["datapoint", "row", "col"]}``.
        For an ``x_<m>`` it applies to ``posterior_predictive`` and ``observed_data``, and its
        leading (plate) entries to ``log_likelihood``.
    :param posterior_predictive: include the ``posterior_predictive`` group.
    :param log_likelihood: include the ``log_likelihood`` group.
    :param sample_stats: include the ``sample_stats`` group (``lp``, ``log_q``, ``log_weight``).
    :param chunk_size: draws vectorised at once (None: as many as fit in ``memory_budget``).
    :param memory_budget: bytes a chunk of draws may hold (default 256 MiB;
        :mod:`pyro_mmvae.eval.memory`).
    :param max_plate_nesting: plates of the model and guide (1: just the data plate).
    :returns: an :class:`arviz.InferenceData` of numpy arrays.
    :raises ValueError: bad data or mask (see :func:`pyro_mmvae.validate_batch`), a guide latent
        the model lacks, a modality the model does not observe, bad ``coords`` or ``dims``.
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    chunk_size = check_positive_int(chunk_size, "chunk_size", allow_none=True)
    mask = validate_batch(data, mask)
    n = num_points(data, mask)
    draw_dim = -(max_plate_nesting + 1)

    def probe(size):
        plates = [(DRAWS_PLATE, size, draw_dim)]
        with torch.no_grad():
            guide_tr = trace_guide(guide, data, mask, plates)
            return trace_nbytes(guide_tr, trace_model(model, guide_tr, data, mask, plates))

    chunk = chunk_size or chunk_for_budget(probe, num_samples, memory_budget)

    chunks = []
    with torch.no_grad():
        done = 0
        while done < num_samples:
            size = min(chunk, num_samples - done)
            chunks.append(_draw(model, guide, data, mask, size, draw_dim, max_plate_nesting,
                                posterior_predictive, log_likelihood, sample_stats))
            done += size
    draws = {group: {name: _concat([c[group][name] for c in chunks])
                     for name in chunks[0][group]}
             for group in chunks[0] if group not in ("dims", "observed")}
    site_dims = chunks[0]["dims"]

    coords = {DATAPOINT_DIM: np.arange(n), **dict(coords or {})}
    dims = {k: list(v) for k, v in (dims or {}).items()}
    unknown = sorted(set(dims) - set(site_dims))
    if unknown:
        raise ValueError(f"dims names unknown variable '{unknown[0]}': the variables are "
                         f"{sorted(site_dims)}")
    attrs = _attrs(num_samples)
    groups = {}
    groups["posterior"] = _dataset(
        {name: (value[None], site_dims[name]) for name, value in draws["posterior"].items()},
        coords, dims, attrs, sample=True)
    if posterior_predictive:
        groups["posterior_predictive"] = _dataset(
            {name: (value[None], site_dims[name])
             for name, value in draws["posterior_predictive"].items()},
            coords, dims, attrs, sample=True)
    if log_likelihood:
        groups["log_likelihood"] = _dataset(
            {name: (value[None], site_dims[name][:value.ndim - 1])
             for name, value in draws["log_likelihood"].items()},
            coords, dims, attrs, sample=True, leading_only=True)
    if sample_stats:
        groups["sample_stats"] = _dataset(
            {name: (value[None], [DATAPOINT_DIM]) for name, value in draws["stats"].items()},
            coords, {}, attrs, sample=True)
    observed = {name: (value, site_dims[name]) for name, value in chunks[0]["observed"].items()}
    constant = {"mask_" + m: (_numpy(mk).astype(bool), [DATAPOINT_DIM]) for m, mk in mask.items()}
    groups["observed_data"] = _dataset(observed, coords, dims, attrs, sample=False)
    groups["constant_data"] = _dataset(constant, coords, {}, attrs, sample=False)
    return az.InferenceData(**groups)


# --- drawing --------------------------------------------------------------------------------

def _draw(model, guide, data, mask, size, draw_dim, max_plate_nesting, predictive, loglik,
          stats):
    """One vectorised chunk of ``size`` draws: numpy arrays with the draw dim first."""
    plates = [(DRAWS_PLATE, size, draw_dim)]
    guide_tr = trace_guide(guide, data, mask, plates)
    model_tr = trace_model(model, guide_tr, data, mask, plates)
    latents = latent_sites(guide_tr)
    check_model_guide(model_tr, guide_tr, data)
    out = {"posterior": {}, "posterior_predictive": {}, "log_likelihood": {}, "stats": {},
           "dims": {}, "observed": {}}
    for name in latents:
        site = guide_tr.nodes[name]
        value, out["dims"][name] = _plated(site, site["value"], max_plate_nesting, name, "_dim")
        out["posterior"][name] = _numpy(value)
    for name, site in model_tr.nodes.items():
        if site["type"] != "sample" or name in latents or site_is_subsample(site):
            continue
        m = site_modality(name)
        if m is None:
            continue
        # re-drawn from p(x_m | z) everywhere (observe generated the masked-out entries, but
        # the observed ones hold the data); a site sampled by the model is already a draw
        fn = site["fn"]
        if not site["is_observed"]:
            value = site["value"]
        elif predictive:
            value = fn.sample()
        else:  # only the shape matters
            value = site["value"].expand(fn.batch_shape + fn.event_shape)
        value, out["dims"][name] = _plated(site, value, max_plate_nesting, m, "_dim_0")
        if predictive:
            out["posterior_predictive"][name] = _numpy(value)
        if not site["is_observed"] or m not in mask or m not in data:
            continue
        on = _aligned_mask(site, mask[m]).to(value.device)
        obs = data[m].to(value.device)  # the site's value holds generations where masked out
        if not obs.is_floating_point():
            obs = obs.double()
        obs = obs.expand(fn.batch_shape[1:] + fn.event_shape)
        on_obs = on.reshape(on.shape + (1,) * len(fn.event_shape))
        obs = torch.where(on_obs, obs, torch.full_like(obs, math.nan))
        out["observed"][name] = _numpy(_plated(site, obs[None], max_plate_nesting, m,
                                               "_dim_0")[0][0])
        if loglik:
            # unscaled and unmasked, at the site's value: the data where observed, a draw in
            # the support elsewhere (NaN'd below), so a placeholder never reaches log_prob
            lp = fn.log_prob(site["value"])
            lp = torch.where(on, lp, torch.full_like(lp, math.nan))
            lp, _ = _plated(site, lp, max_plate_nesting, m, "_dim_0", event_dim=0)
            out["log_likelihood"][name] = _numpy(lp)
    if stats:
        n = num_points(data, mask)

        def total(trace, names):
            parts = [_per_datapoint(trace.nodes[k], size, max_plate_nesting) for k in names]
            parts = [_numpy(p) for p in parts if p is not None]
            return sum(parts[1:], parts[0]) if parts else np.zeros((size, n))

        model_sites = [k for k, v in model_tr.nodes.items()
                       if v["type"] == "sample" and not site_is_subsample(v)]
        lp, log_q = total(model_tr, model_sites), total(guide_tr, latents)
        out["stats"] = {"lp": lp, "log_q": log_q, "log_weight": lp - log_q}
    return out


def _aligned_mask(site, mask):
    """A data point mask ``(N,)`` placed at the dim of the site's data plate."""
    for frame in site["cond_indep_stack"]:
        if frame.name == DATA_PLATE:
            return mask.reshape(mask.shape + (1,) * (-frame.dim - 1))
    return mask


def _batch_shape(site, value, event_dim, max_plate_nesting):
    batch = value.shape[:value.dim() - event_dim]
    if len(batch) != max_plate_nesting + 1:
        raise ValueError(f"site '{site['name']}': batch shape {tuple(batch)} does not have the "
                         f"draw dim and {max_plate_nesting} plate dim(s); set max_plate_nesting "
                         "to the number of plates the model and guide declare")
    return batch


def _plated(site, value, max_plate_nesting, name, vector_suffix, event_dim=None):
    """``value`` of a site with the draw dim first, its plate dims named (``datapoint`` for the
    data plate) and expanded, and size-1 dims of no plate dropped; returns ``(tensor, dims)``
    with the dims after the draw dim. Event dims are ``<name><vector_suffix>`` for a vector
    event, ``<name>_dim_<i>`` otherwise."""
    if event_dim is None:
        event_dim = len(site["fn"].event_shape)
    batch = _batch_shape(site, value, event_dim, max_plate_nesting)
    frames = {f.dim: f for f in site["cond_indep_stack"]
              if f.name != DRAWS_PLATE and f.dim is not None}
    names, keep, shape = [], [0], list(value.shape)
    for i, dim in enumerate(range(-max_plate_nesting, 0), start=1):
        frame = frames.get(dim)
        if frame is None:
            if batch[i] != 1:
                raise ValueError(f"site '{site['name']}': batch dim {dim} has size {batch[i]} "
                                 "but no plate")
            continue
        names.append(DATAPOINT_DIM if frame.name == DATA_PLATE else frame.name)
        shape[i] = frame.size
        keep.append(i)
    keep += list(range(len(batch), value.dim()))
    drop = [i for i in range(value.dim()) if i not in keep]
    value = value.expand(shape).permute(*keep, *drop).reshape([shape[i] for i in keep])
    if event_dim == 1:
        names.append(name + vector_suffix)
    else:
        names += [f"{name}_dim_{i}" for i in range(event_dim)]
    return value, names


def _per_datapoint(site, size, max_plate_nesting):
    """A site's scaled and masked log-density as ``(draws, N)``, summed over plates other than
    the data plate; None for a site outside the data plate (it belongs to no single point)."""
    frames = {f.name: f for f in site["cond_indep_stack"]}
    if DATA_PLATE not in frames:
        return None
    n = frames[DATA_PLATE].size
    lp = site_log_prob(site)
    lp = lp.expand(torch.Size(broadcast_shape(lp.shape, (size,) + (1,) * max_plate_nesting)))
    others = [d for d in range(-max_plate_nesting, 0) if d != frames[DATA_PLATE].dim]
    if others:
        lp = lp.sum(others, keepdim=True)
    shape = [size] + [1] * max_plate_nesting
    shape[frames[DATA_PLATE].dim] = n
    return lp.expand(shape).reshape(size, n)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _concat(arrays):
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)


# --- datasets -------------------------------------------------------------------------------

def _attrs(num_samples):
    from pyro_mmvae import __version__

    return {"created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "arviz_version": az.__version__, "inference_library": "pyro_mmvae",
            "inference_library_version": __version__, "pyro_version": pyro.__version__,
            "num_samples": num_samples}


def _dataset(arrays, coords, user_dims, attrs, sample: bool, leading_only: bool = False):
    """``{name: (array, default dims without chain/draw)}`` -> ``xarray.Dataset``."""
    variables = {}
    lead = list(SAMPLE_DIMS) if sample else []
    for name, (array, default) in arrays.items():
        names = list(default)
        if name in user_dims:
            given = user_dims[name]
            if leading_only:
                given = given[:len(names)]
            if len(given) != len(names):
                raise ValueError(f"dims['{name}'] names {len(given)} dims but '{name}' has "
                                 f"{len(names)} besides chain and draw: {names}")
            names = list(given)
        all_dims = lead + names
        var_coords = {}
        for axis, dim in enumerate(all_dims):
            size = array.shape[axis]
            if dim in coords:
                values = np.asarray(coords[dim])
                if values.shape != (size,):
                    raise ValueError(f"coords['{dim}'] has {values.size} values but dim '{dim}' "
                                     f"of '{name}' has size {size}")
            else:
                values = np.arange(size)
            var_coords[dim] = values
        variables[name] = xr.DataArray(array, dims=all_dims, coords=var_coords)
    return xr.Dataset(variables, attrs=dict(attrs))
