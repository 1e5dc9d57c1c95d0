"""The multimodal protocol: batches, masks and site names.

A batch is ``data: dict[str, Tensor]`` (one tensor per modality, leading dim ``N``) and
``mask: dict[str, BoolTensor]`` of shape ``(N,)``, True where that modality is observed for that
data point. The mask names every modality, observed or not, so it always gives ``N``
(:func:`num_points`). Missing values hold a finite placeholder (any value: zeros, or what
:func:`from_nan` fills in), never NaN; a modality may also be absent from ``data`` altogether
(nothing of it observed).

A model is a Pyro program ``model(data, mask)`` that, inside ``pyro.plate("data", N)`` with
``N = num_points(data, mask)``, samples the latent ``"z"`` and observes each modality ``m`` at
site ``"x_<m>"`` under ``poutine.mask(mask=mask[m])`` (use :func:`observe`), *generating* it
where it is not observed: the site's value is the data where ``mask[m]`` is True and a draw
from the likelihood elsewhere. So ``pyro.infer.Predictive(model, guide=guide,
num_samples=k)(data, mask)`` returns cross-generations of the unobserved modalities from the
observed subset, and with nothing observed (``data={}``, all-False masks) unconditional
samples. A guide is a Pyro program ``guide(data, mask)`` that samples the same latents
conditioned only on the modalities whose mask is True.

The library's bounds call model and guide several times with different masks. A program
written for plain ``(N,)`` masks is called once per (subset, particle) with such masks; one
that declares :func:`vectorized` (it broadcasts masks with leading dims ``(T, 1, N)`` and
latents with leading particle / subset dims, as the library's
:class:`pyro_mmvae.models.MultimodalModel` and :class:`pyro_mmvae.guides.MultimodalGuide` do)
is called once with everything stacked on plates (:mod:`pyro_mmvae.infer.cells`), to the same
result. Sites outside the data plate are global latents, shared by every subset term.
"""

from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager
from typing import Mapping, Optional

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import broadcast_shape
from pyro.infer.util import is_validation_enabled
from pyro.poutine.runtime import get_plates
from torch.distributions import constraints

from pyro_mmvae.checks import (check_positive_float, check_positive_int,  # noqa: F401
                               check_weights)

LATENT_SITE = "z"
OBS_PREFIX = "x_"
PRIVATE_PREFIX = "w_"
DATA_PLATE = "data"
# Key of a guide site's ``infer`` dict: a callable ``values -> distribution`` that rebuilds the
# site's distribution with the guide's parameters detached and the upstream samples live
# (sticking-the-landing density of a hierarchical guide; see
# :func:`pyro_mmvae.infer.traces.stl_distribution`).
STL_FN = "stl_fn"

Data = Mapping[str, torch.Tensor]
Mask = Mapping[str, torch.Tensor]


def obs_site(modality: str) -> str:
    """The observation site name of a modality: ``"x_<modality>"``."""
    return OBS_PREFIX + modality


def private_site(modality: str) -> str:
    """The private-latent site name of a modality: ``"w_<modality>"``."""
    return PRIVATE_PREFIX + modality


def site_modality(name: str) -> Optional[str]:
    """The modality of an observation site name, or None if it does not follow the protocol."""
    return name[len(OBS_PREFIX):] if name.startswith(OBS_PREFIX) else None


def num_points(data: Data, mask: Optional[Mask] = None) -> int:
    """The number of data points ``N`` of a batch: the last dim of the mask.

    The mask names every modality, observed or not, so it gives ``N`` even when ``data`` is
    empty (unconditional generation: ``model({}, {m: torch.zeros(n, dtype=torch.bool)})``) or
    lacks a modality. Masks may carry leading dims (stacked subsets, ``(T, 1, N)``); ``N`` is
    always their last dim. Without a mask (``None`` or empty), the leading dim of ``data``.
    Use it for the model's ``pyro.plate("data", N)``.
    """
    if mask:
        mk = next(iter(mask.values()))
        if torch.is_tensor(mk) and mk.dim() > 0:
            return mk.shape[-1]
    if data:
        return next(iter(data.values())).shape[0]
    raise ValueError("cannot tell the number of data points: pass a mask naming the modalities "
                     "({modality: (N,) bool}), e.g. all False to generate every modality")


def full_mask(data: Data) -> dict:
    """A mask observing every modality of every data point."""
    n = num_points(data)
    return {m: torch.ones(n, dtype=torch.bool, device=x.device) for m, x in data.items()}


def enclosing_plate_shape() -> torch.Size:
    """The batch shape the enclosing vectorised plates give a sample site (their sizes at their
    dims, 1 elsewhere; ``()`` outside any plate)."""
    dims = [f for f in get_plates() if f.dim is not None and f.size != -1]
    if not dims:
        return torch.Size()
    shape = [1] * max(-f.dim for f in dims)
    for f in dims:
        shape[f.dim] = f.size
    return torch.Size(shape)


def _plate_batch_shape(fn) -> torch.Size:
    """``fn``'s batch shape broadcast against the enclosing vectorised plates, as Pyro's
    ``BroadcastMessenger`` would expand it at a sample site."""
    return torch.Size(broadcast_shape(fn.batch_shape, enclosing_plate_shape()))


class _GenerationStream:
    """The random numbers of :func:`generate`'s draws, kept apart from torch's global stream.

    Drawing the generations from torch's global generator would shift every later random
    number of a training step (latents, subset masks) by an amount that depends on how the
    model is called (one vectorised call or one call per subset; masks all True or not), so
    the same seed would no longer give the same training run. Instead each draw runs inside
    ``torch.random.fork_rng`` on a generator seeded from a hash of torch's current state and
    64 bits of Python's ``random`` module: torch's generators are left exactly as they were,
    consecutive draws differ, and ``pyro.set_rng_seed`` (which seeds both) makes them
    reproducible.
    """

    @staticmethod
    def _device(fn) -> torch.device:
        seen, todo = set(), [fn]
        while todo:
            obj = todo.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            for v in vars(obj).values():
                if torch.is_tensor(v):
                    return v.device
                if isinstance(v, torch.distributions.Distribution):
                    todo.append(v)
        return torch.device("cpu")

    def sample(self, fn) -> torch.Tensor:
        device = self._device(fn)
        cuda = device.type == "cuda"
        index = (device.index if device.index is not None else torch.cuda.current_device()) \
            if cuda else None
        generator = torch.cuda.default_generators[index] if cuda else torch.default_generator
        key = generator.get_state().numpy().tobytes() + random.getrandbits(64).to_bytes(8, "little")
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % 2 ** 63
        with torch.random.fork_rng(devices=[index] if cuda else []):
            generator.manual_seed(seed)
            return fn.sample()


_STREAM = _GenerationStream()


_SCORING = [0]


@contextmanager
def scoring():
    """Inside this context :func:`observe` only scores: masked-out entries of a real-valued
    likelihood (Normal, Laplace, ...) keep their placeholder instead of a generated draw.

    The library's bounds and likelihood estimators read nothing but the log-densities, in
    which masked-out entries count zero, so the draw would be wasted work (about a tenth of a
    training step for five image modalities); a placeholder is always in a real support, so
    validation is unaffected. Likelihoods with a constrained support (one-hot, categorical,
    Bernoulli) still get their draw, so any finite placeholder stays valid there.
    """
    _SCORING[0] += 1
    try:
        yield
    finally:
        _SCORING[0] -= 1


def is_scoring() -> bool:
    """Whether the caller runs inside :func:`scoring` (only log-densities will be read)."""
    return _SCORING[0] > 0


def _real_valued(fn) -> bool:
    support = fn.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def generate(fn) -> Optional[torch.Tensor]:
    """One draw of ``fn`` without gradient, expanded to the enclosing plates (what
    :func:`observe` puts at entries that are not observed); None if ``fn`` cannot be sampled.

    The draw comes from a random stream of its own (:class:`_GenerationStream`): it consumes
    nothing of torch's global generators, so generating changes no other random number of a
    run, and ``pyro.set_rng_seed`` makes it reproducible."""
    shape = _plate_batch_shape(fn)
    with torch.no_grad():
        if shape != fn.batch_shape:
            try:
                fn = fn.expand(shape)
            except NotImplementedError:
                pass  # the draw is broadcast against the data instead
        try:
            return _STREAM.sample(fn)
        except NotImplementedError:
            return None


def _is_all(mask, value: bool) -> bool:
    if isinstance(mask, bool):
        return mask is value
    return bool(mask.all()) if value else not bool(mask.any())


def observe(modality: str, fn, data: Data, mask: Optional[Mask] = None):
    r"""Observe ``data[modality]`` at site ``"x_<modality>"`` where ``mask[modality]`` is
    True, and generate it everywhere else.

    Must be called inside the model's ``pyro.plate("data", N)``. The site is always an
    observation site under ``poutine.mask(mask[modality])``, so log-densities are those of the
    observed entries only (a masked-out entry contributes exactly zero). Its value is the data
    where observed and a draw :math:`\tilde x\sim` ``fn`` (no gradient) elsewhere:
    ``where(mask, data, x̃)``. So any finite placeholder at masked-out entries is fine (zeros
    for one-hot, categorical or Bernoulli modalities too: only the draw, which is in the
    support, reaches ``fn.log_prob``), and the trace holds cross-generations of what is not
    observed — :class:`pyro.infer.Predictive` returns them, and with nothing observed
    (``data={}`` or all-False masks) unconditional samples.

    - ``mask`` None, or without an entry for ``modality``: ``data[modality]`` is observed
      everywhere (nothing is drawn).
    - A modality absent from ``data`` is generated everywhere (its mask, if given, must be all
      False): ``obs = x̃`` under ``poutine.mask(False)``.
    - The mask may carry leading batch dimensions (stacked subsets, ``(T, 1, N)``) and the
      latents a leading particle dimension: the mask is broadcast against the draw's batch
      shape (right-aligned, as ``poutine.mask`` does), so the value then has the broadcast
      batch shape.
    - Where the mask is all True the data are observed as they are and nothing is drawn; a
      distribution without ``sample`` keeps the placeholder at masked-out entries.
    """
    name = obs_site(modality)
    value = data.get(modality)
    on = None if mask is None else mask.get(modality)
    if value is None:
        if on is not None and not _is_all(on, False):
            raise ValueError(f"modality '{modality}' is marked observed in the mask but has no "
                             "data; pass a placeholder and the mask, or mask it out")
        drawn = generate(fn)
        if drawn is None:
            raise ValueError(f"modality '{modality}' has no data and its distribution "
                             f"{type(fn).__name__} cannot be sampled to generate it")
        with poutine.mask(mask=False):
            return pyro.sample(name, fn, obs=drawn)
    if on is None:
        return pyro.sample(name, fn, obs=value)
    if not isinstance(on, bool):
        on = on.to(value.device)
    if not (_SCORING[0] and _real_valued(fn)) and not _is_all(on, True):
        drawn = generate(fn)
        if drawn is not None:
            event = len(fn.event_shape)
            where = torch.as_tensor(on, device=value.device)
            value = torch.where(where.reshape(where.shape + (1,) * event), value,
                                drawn.to(device=value.device, dtype=value.dtype))
    with poutine.mask(mask=on):
        return pyro.sample(name, fn, obs=value)


def from_nan(arrays, placeholder="observed", how: str = "any", dtype=None, device=None):
    r"""``(data, mask)`` from NaN-marked arrays, the usual numpy / pandas form of missing data.

    :param arrays: ``{modality: array}`` with one row per data point (leading dim ``N``,
        shared): numpy arrays, torch tensors, pandas ``DataFrame``\ s / ``Series`` (one per
        modality), or anything ``numpy.asarray`` takes. NaN marks missing entries.
    :param placeholder: what missing data points hold (never NaN). ``"observed"`` (default):
        a copy of the modality's first observed data point, which is in the support of
        whatever likelihood the data come from (one-hot, categorical, binary, positive, ...),
        so any Pyro program that scores the placeholder under a mask passes validation; zeros
        where a modality has no observed point. A number: that value everywhere (``0.0``, the
        README's convention; :func:`observe` replaces masked-out entries by a draw before
        scoring, so the library's models accept any finite placeholder). A dict
        ``{modality: number or "observed"}`` chooses per modality.
    :param how: ``"any"`` (default): a data point's modality is missing if *any* of its
        entries is NaN (a partly-NaN vector cannot be scored, so this is the safe rule);
        ``"all"``: missing only if all its entries are NaN, and a partly-NaN data point is a
        ``ValueError``.
    :param dtype: dtype of the returned data (default: torch's default dtype, the dtype the
        library's modules are created in, e.g. float32 unless changed).
    :param device: device of the returned tensors (default: that of a tensor input, else CPU).
    :returns: ``(data, mask)``: ``{modality: (N, ...)}`` tensors with finite placeholders and
        ``{modality: (N,)}`` bool masks, True where observed.
    """
    import numpy as np

    if how not in ("any", "all"):
        raise ValueError(f"how must be 'any' or 'all', got {how!r}")
    if not isinstance(arrays, Mapping) or not arrays:
        raise ValueError("arrays must be a non-empty dict {modality: array}")
    dtype = dtype or torch.get_default_dtype()
    data, mask, sizes = {}, {}, {}
    for m, a in arrays.items():
        if hasattr(a, "to_numpy") and not torch.is_tensor(a):  # pandas DataFrame / Series
            a = a.to_numpy(dtype=float, na_value=np.nan)
        x = a if torch.is_tensor(a) else torch.tensor(np.array(a, dtype=float))
        if device is not None:
            x = x.to(device)
        if x.dim() == 0:
            raise ValueError(f"modality '{m}': expected a leading data-point dimension, got a "
                             "scalar")
        n = sizes[m] = x.shape[0]
        x = x.to(torch.float64) if not x.is_floating_point() else x
        nan = torch.isnan(x.reshape(n, -1))
        missing = nan.any(-1) if how == "any" else nan.all(-1)
        partly = nan.any(-1) & ~missing
        if partly.any():
            idx = partly.nonzero().flatten()[:5].tolist()
            raise ValueError(f"modality '{m}': data points {idx} are partly NaN; with "
                             "how='all' only all-NaN points are missing (use how='any')")
        if (~torch.isfinite(x.reshape(n, -1)) & ~nan).any(-1).logical_and(~missing).any():
            raise ValueError(f"modality '{m}': infinite values in observed data points")
        fill = placeholder.get(m, "observed") if isinstance(placeholder, Mapping) \
            else placeholder
        observed = ~missing
        if isinstance(fill, str):
            if fill != "observed":
                raise ValueError(f"placeholder must be a number, 'observed' or a dict of "
                                 f"them, got {fill!r}")
            first = observed.nonzero().flatten()
            fill = x[first[0]] if len(first) else torch.zeros_like(x[0])
        row = observed.reshape((n,) + (1,) * (x.dim() - 1))
        fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
        if not torch.isfinite(fill).all():
            raise ValueError(f"modality '{m}': the placeholder must be finite, got {fill}")
        data[m] = torch.where(row, x, fill).to(dtype)
        mask[m] = observed
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"'{m}': {n}" for m, n in sizes.items())
        raise ValueError(f"modalities have different numbers of data points N ({listing})")
    return data, mask


def subset_members(num_modalities: int, device=None) -> torch.Tensor:
    """``(2^M - 1, M)`` bool: the members of every non-empty subset in *index order*, row
    ``k`` the subset whose bits are ``k + 1`` (modality ``m`` is bit ``m``), the inverse of
    :func:`subset_index`. (For subsets by size and in modality order, with names, see
    :func:`pyro_mmvae.eval.subset_matrix`.)"""
    k = torch.arange(1, 2 ** num_modalities, device=device).unsqueeze(-1)
    return (k >> torch.arange(num_modalities, device=device)) & 1 == 1


def subset_index(mask: torch.Tensor) -> torch.Tensor:
    """``(...)`` long: the index ``sum_m mask_m 2^m - 1`` of the subset each row of ``mask``
    ``(..., M)`` names (-1 for the empty subset), the row order of :func:`subset_members`."""
    weights = 2 ** torch.arange(mask.shape[-1], device=mask.device)
    return (mask.long() * weights).sum(-1) - 1


def stack_mask(mask: Mask, modalities) -> torch.Tensor:
    """Stack a mask dict into a bool tensor ``(..., N, M)`` in the order of ``modalities``."""
    return torch.stack([mask[m] for m in modalities], dim=-1)


def unstack_mask(tensor: torch.Tensor, modalities) -> dict:
    """Inverse of :func:`stack_mask`."""
    return {m: tensor[..., i] for i, m in enumerate(modalities)}


def validate_batch(data: Data, mask: Optional[Mask] = None, *, modalities=None,
                   require_observed: bool = False, leading_mask_dims: bool = False) -> dict:
    """Check a batch and its mask; return the mask (all-observed if ``mask`` is None).

    Raises ``ValueError`` naming the modality and the problem for: an empty batch (``N = 0``),
    a non-tensor, modality tensors with different leading dimension, an unknown modality (a
    mask key, or a name outside ``modalities``), a non-boolean or wrongly shaped mask, NaN or
    infinite values anywhere in the data (missing entries must hold a finite placeholder, or
    they would poison gradients; the message says whether observed or masked-out points hold
    them), and (with ``require_observed``) a data point with no observed modality.

    :param leading_mask_dims: accept masks ``(..., N)`` with leading dims (stacked subsets,
        ``(T, 1, N)``), as the library's bounds hand them to a guide; all modalities' masks must
        then have the same shape. Default: masks must be ``(N,)``.

    Cheap enough to run at every step: the finiteness check is one sum per modality and a single
    device sync (:func:`_check_finite`); the other checks read only shapes and dtypes. The
    finiteness check, the only one that reads values, runs while Pyro's validation is enabled
    (its default; :func:`pyro_mmvae.train.fit` checks the whole training set before the first
    step and then trains with validation off).
    """
    if not isinstance(data, Mapping) or not data:
        raise ValueError("data must be a non-empty dict {modality: tensor}")
    sizes = {}
    for m, x in data.items():
        if not torch.is_tensor(x):
            raise ValueError(f"modality '{m}': expected a tensor, got {type(x).__name__}")
        if x.dim() == 0:
            raise ValueError(f"modality '{m}': expected a leading batch dimension, got a scalar")
        sizes[m] = x.shape[0]
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"'{m}': {n}" for m, n in sizes.items())
        raise ValueError(f"modalities have different batch sizes N ({listing})")
    n = next(iter(sizes.values()))
    if n == 0:
        names = ", ".join(f"'{m}'" for m in data)
        raise ValueError(f"empty batch: modalities {names} have N = 0 data points; pass at "
                         "least one")
    if modalities is not None:
        unknown = sorted(set(data) - set(modalities))
        if unknown:
            raise ValueError(f"unknown modality '{unknown[0]}': the model knows "
                             f"{sorted(modalities)}")
    if mask is None:
        mask = full_mask(data)
    else:
        # a modality absent from data may be named in the mask if nothing of it is observed
        unknown = sorted(m for m in set(mask) - set(data)
                         if not (torch.is_tensor(mask[m]) and mask[m].dtype == torch.bool
                                 and not mask[m].any()))
        if unknown:
            raise ValueError(f"unknown modality '{unknown[0]}' in mask: data has {sorted(data)} "
                             "(a modality without data must be masked out everywhere)")
        missing = sorted(set(data) - set(mask))
        if missing:
            raise ValueError(f"modality '{missing[0]}' has data but no mask entry")
        shapes = {}
        for m, mk in mask.items():
            if not torch.is_tensor(mk) or mk.dtype != torch.bool:
                dtype = mk.dtype if torch.is_tensor(mk) else type(mk).__name__
                raise ValueError(f"modality '{m}': mask must be a bool tensor, got {dtype}")
            if leading_mask_dims:
                if mk.dim() == 0 or mk.shape[-1] != n:
                    raise ValueError(f"modality '{m}': mask must have shape (..., {n}) (its "
                                     f"last dim the batch size N), got {tuple(mk.shape)}")
            elif mk.shape != (n,):
                raise ValueError(f"modality '{m}': mask must have shape ({n},), got "
                                 f"{tuple(mk.shape)}")
            shapes[m] = tuple(mk.shape)
        if len(set(shapes.values())) > 1:
            listing = ", ".join(f"'{m}': {s}" for m, s in shapes.items())
            raise ValueError(f"masks of the modalities have different shapes ({listing})")
    if is_validation_enabled():
        _check_finite(data, mask, n)
    if require_observed:
        observed = stack_mask(mask, list(data))
        none = ~observed.reshape(-1, n, observed.shape[-1]).any(-1).all(0)
        if none.any():
            idx = none.nonzero().flatten()[:5].tolist()
            raise ValueError(f"data points {idx} have no observed modality; this bound needs "
                             "at least one")
    return dict(mask)


def _check_finite(data: Data, mask: Mask, n: int) -> None:
    """``ValueError`` naming the first modality with NaN or infinite values (see
    :func:`validate_batch`).

    Fast path: a NaN or an infinity makes the sum of a tensor non-finite, so finite sums (one
    reduction per modality, one device sync in all) prove the data finite; only otherwise (or
    when a sum overflows) are the entries scanned one by one.
    """
    floats = [(m, x) for m, x in data.items() if x.is_floating_point() or x.is_complex()]
    if not floats:
        return
    sums = [x.sum() for _, x in floats]
    device = sums[0].device
    if bool(torch.isfinite(torch.stack([s.to(device) for s in sums])).all()):
        return
    for m, x in floats:
        bad = ~torch.isfinite(x.reshape(n, -1)).all(-1)
        if bad.any():
            mk = mask[m]
            seen = bad & (mk.reshape(-1, n).any(0) if mk.dim() > 1 else mk).to(bad.device)
            where = "observed" if seen.any() else "masked-out"
            idx = (seen if seen.any() else bad).nonzero().flatten()[:5].tolist()
            raise ValueError(f"modality '{m}': NaN or infinite values in {where} data points "
                             f"{idx}; fill missing entries with a finite placeholder (zeros) "
                             "and mask them out")


# --------------------------------------------------------------------------- vectorised programs

VECTORIZED = "vectorized"


def vectorized(program):
    """Declare that a model or guide broadcasts over plates left of its data plate.

    Such a program accepts masks with extra leading dimensions (``(T, 1, N)``: subsets stacked
    on a plate, a singleton particle dim) and latents with extra leading dimensions (particles,
    subsets, mixture components), exactly as a model must for Pyro's
    ``Trace_ELBO(vectorize_particles=True)``: tensors it builds from the mask or the latents
    broadcast against them, global latents (outside the data plate) included. The library's
    bounds and evaluation functions then call it **once**, with everything stacked on plates;
    any other program is called once per (subset, particle) cell with plain ``(N,)`` masks,
    to the same result. Use as a decorator on a function (``@vectorized``) or set the class
    attribute ``vectorized = True`` (the library's ``MultimodalModel`` and ``MultimodalGuide``
    do). Returns ``program``.
    """
    setattr(program, VECTORIZED, True)
    return program


def data_plate(size: int):
    """``pyro.plate("data", size)`` for a guide, recording no subsample site.

    An ``AutoGuideList`` creates its parts' plates itself, which records a site ``"data"``; a
    guide part opening the protocol's plate again would record a second one ("Multiple sample
    sites named 'data'"). Without subsampling the site carries nothing the ELBOs need.
    """
    with poutine.block(hide=[DATA_PLATE]):
        return pyro.plate(DATA_PLATE, size)


def is_vectorized(program) -> bool:
    """Whether ``program`` declared itself vectorised (see :func:`vectorized`)."""
    return bool(getattr(program, VECTORIZED, False))
