r"""Generation coherence and linear latent classification, for every subset of modalities.

Definitions (Shi et al. 2019, MMVAE §4; Sutter et al. 2021, MoPoE App. B; Hirt et al. App. I).
Each data point carries a label ``y`` shared by all its modalities, and every
modality ``m`` has a classifier :math:`\mathrm{clf}_m` trained on real data
(:mod:`pyro_mmvae.eval.classifiers`).

- **Conditional coherence** of a target ``m`` given an input subset ``S``: draw
  :math:`z\sim q(z\mid x_S)`, decode :math:`\hat x_m` (the likelihood mean of
  :math:`p(x_m\mid z)`, or a sample), and score :math:`\mathbf 1[\arg\max
  \mathrm{clf}_m(\hat x_m)=y]`, averaged over the test set. ``m`` in ``S`` is
  *self-reconstruction* coherence, ``m`` outside ``S`` *cross* coherence, and
  :math:`S=\mathcal M\setminus\{m\}` *leave-one-out* coherence. MoPoE's PolyMNIST figure plots
  the cross coherence averaged over the targets outside ``S`` and over all subsets of the same
  size, against that size.
- **Joint (random-generation) coherence**: draw :math:`(z, x_1,\dots,x_M)` from the model
  (:math:`z` from the prior) and count a sample coherent when all classifiers predict the same
  label.
- **Linear latent classification**: fit a logistic regression (lbfgs, ``max_iter`` 1000; MoPoE
  uses 500 random training points) on the posterior means of :math:`q(z\mid x_S)` of training
  data and report its accuracy on the test data, for every subset ``S``.

**Batched over subsets.** All subsets are stacked along a plate left of the data plate: the
guide is traced *once* per mini-batch with masks of shape ``(S, [P,] B)`` (the protocol's
leading mask dims), and the model is replayed against that trace *once* with every modality
masked out (``model(data, {m: all False (B,)})``: the protocol's generation mechanism,
:func:`pyro_mmvae.protocol.observe`), so every ``"x_<m>"`` site is generated for every subset
and particle; the classifiers then run on the flattened ``(S * P * B, ...)`` generations.
Latents the guide does not sample (e.g. the private ``"w_<m>"`` of a modality outside ``S``,
for a guide that leaves them out) come from the model's prior. This works for any protocol
model and guide (ones that do not declare :func:`pyro_mmvae.protocol.vectorized` are called
cell by cell by :func:`~pyro_mmvae.infer.traces.trace_guide` and ``trace_model``).

Results are plain floats and dicts keyed by readable subset names (``"m0+m2"``, modalities in
data order), ready for ``json.dump``; quantities with nothing to average are ``None``.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions import Categorical, OneHotCategorical

from pyro_mmvae.eval.classifiers import predict
from pyro_mmvae.eval.memory import (check_memory_budget, chunk_for_budget, chunks_for_budget,
                                    trace_nbytes)
from pyro_mmvae.infer.cells import StackedDistribution
from pyro_mmvae.infer.traces import trace_guide, trace_model
from pyro_mmvae.protocol import (LATENT_SITE, num_points, check_positive_int,
                                 obs_site, stack_mask, unstack_mask, validate_batch)

SubsetSpec = Union[str, Iterable[str]]


# --------------------------------------------------------------------------- subsets

def subset_name(members: Iterable[str]) -> str:
    """Readable name of a subset: its modalities joined by ``"+"`` (e.g. ``"m0+m2"``)."""
    return "+".join(members)


def all_subsets(modalities: Sequence[str]) -> list:
    """All non-empty subsets of ``modalities`` as tuples, by size, then in modality order."""
    return [c for k in range(1, len(modalities) + 1)
            for c in itertools.combinations(modalities, k)]


def subset_matrix(subsets: Optional[Sequence[SubsetSpec]], modalities: Sequence[str],
                  device=None):
    """``(names, rows)``: subset names and a bool matrix ``(S, M)`` (one row per subset).

    ``subsets`` defaults to all ``2^M - 1`` non-empty subsets; an entry may be a name
    (``"m0+m2"``, or a single modality) or an iterable of modality names. Members are put in
    the order of ``modalities``. A bare string is one subset (``subsets="top"`` is the single
    modality ``"top"``, not its letters).
    """
    modalities = list(modalities)
    if subsets is None:
        subsets = all_subsets(modalities)
    elif isinstance(subsets, str):  # one subset ("m0+m2" or "top"), not one per character
        subsets = [subsets]
    names, rows = [], []
    for spec in subsets:
        if isinstance(spec, str):
            members = [spec] if spec in modalities else spec.split("+")
        else:
            members = list(spec)
        unknown = [m for m in members if m not in modalities]
        if unknown:
            raise ValueError(f"subset {spec!r} names unknown modality '{unknown[0]}': the data "
                             f"has {modalities}")
        if not members:
            raise ValueError("subsets must be non-empty")
        row = [m in members for m in modalities]
        name = subset_name(m for m, on in zip(modalities, row) if on)
        if name in names:
            raise ValueError(f"subset {name!r} is listed twice")
        names.append(name)
        rows.append(row)
    if not rows:
        raise ValueError("no subsets to evaluate")
    return names, torch.tensor(rows, dtype=torch.bool, device=device)


def _subset_masks(rows: torch.Tensor, n: int, modalities, max_plate_nesting: int,
                  particles: bool) -> dict:
    """Masks ``{m: (S, [1,] [1...,] n)}`` observing subset ``s`` in row ``s``."""
    s = rows.shape[0]
    shape = (s,) + (1,) * (int(particles) + max_plate_nesting - 1) + (n, rows.shape[1])
    return unstack_mask(rows[:, None, :].expand(s, n, rows.shape[1]).reshape(shape), modalities)


# --------------------------------------------------------------------------- helpers

def decoded_value(site: dict, use_mean: bool = True) -> torch.Tensor:
    """The generated value of a sampled ``"x_<m>"`` site: the likelihood mean with
    ``use_mean`` (for one-hot categorical likelihoods such as text, the per-position argmax as
    one-hot, as MoPoE decodes text; the sample where the distribution has no mean), else the
    sample itself. Shape of the site's value."""
    value = site["value"]
    if not use_mean:
        return value
    fn = site["fn"]
    if isinstance(fn, StackedDistribution):  # a program traced cell by cell: decode each cell
        parts = [decoded_value({"fn": p, "value": v}, use_mean)
                 for p, v in zip(fn.parts, fn.cell_values(value))]
        return fn.stack_cells(parts, len(fn.event_shape)).reshape(value.shape)
    base = fn
    while hasattr(base, "base_dist"):
        base = base.base_dist
    if isinstance(base, (OneHotCategorical, torch.distributions.OneHotCategorical)):
        probs = base.probs
        out = F.one_hot(probs.argmax(-1), probs.shape[-1]).to(value.dtype)
    elif isinstance(base, (Categorical, torch.distributions.Categorical)):
        out = base.probs.argmax(-1).to(value.dtype)
    else:
        try:
            out = fn.mean
        except NotImplementedError:
            return value
    return torch.broadcast_to(out, value.shape)


def unobserved(modalities, n: int, device=None) -> dict:
    """The all-False mask ``{m: (n,)}``: nothing observed, every modality generated."""
    return {m: torch.zeros(n, dtype=torch.bool, device=device) for m in modalities}


def generation_trace(model, guide, data: Mapping[str, torch.Tensor], rows: torch.Tensor,
                     plates, max_plate_nesting: int = 1):
    r"""One guide call on all subsets ``rows (S, M)`` stacked on ``plates`` (``"subsets"``
    then ``"particles"``, left of the data plate), and one model call replayed on it with
    every modality masked out (``model(data, all-False masks)``, the protocol's generation
    mechanism), so every ``"x_<m>"`` site is generated from :math:`z\sim q(z\mid x_S)` for
    every subset and particle. Returns the model trace."""
    return _generation_traces(model, guide, data, rows, plates, max_plate_nesting)[1]


def _generation_traces(model, guide, data, rows, plates, max_plate_nesting):
    """``(guide trace, model trace)`` of :func:`generation_trace`."""
    b = num_points(data)
    guide_tr = trace_guide(guide, data, _subset_masks(rows, b, list(data), max_plate_nesting,
                                                      True), plates)
    device = next(iter(data.values())).device
    return guide_tr, trace_model(model, guide_tr, data, unobserved(data, b, device), plates)


def _generated(trace, modality: str) -> dict:
    site = trace.nodes.get(obs_site(modality))
    if site is None or site["type"] != "sample":
        raise ValueError(f"modality '{modality}': the model generates no site "
                         f"'{obs_site(modality)}' when called with '{modality}' masked out")
    return site


def _flat_generations(site: dict, lead: int, use_mean: bool, modality: str) -> torch.Tensor:
    """Generated values of a site as ``(lead, *event)``."""
    x = decoded_value(site, use_mean)
    event = tuple(site["fn"].event_shape)
    if x.numel() != lead * int(np.prod(event, dtype=np.int64)):
        raise ValueError(f"modality '{modality}': generated batch shape "
                         f"{tuple(x.shape[:x.dim() - len(event)])} does not match the "
                         f"{lead} (subset x particle x data point) draws expected")
    return x.reshape((lead,) + event)


def _labels(labels, n: int, device) -> torch.Tensor:
    labels = torch.as_tensor(labels, device=device).long()
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    return labels


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _by_size(per_subset: Mapping[str, Optional[float]]) -> dict:
    sizes = {}
    for name, value in per_subset.items():
        sizes.setdefault(len(name.split("+")), []).append(value)
    return {k: _mean(v) for k, v in sorted(sizes.items())}


# --------------------------------------------------------------------------- coherence

@torch.no_grad()
def conditional_coherence(model, guide, data: Mapping[str, torch.Tensor], labels,
                          classifiers: Mapping, subsets: Optional[Sequence[SubsetSpec]] = None,
                          mask: Optional[Mapping[str, torch.Tensor]] = None,
                          num_samples: int = 1, use_mean: bool = True,
                          batch_size: Optional[int] = None, max_plate_nesting: int = 1,
                          memory_budget: Optional[int] = None,
                          reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
                          ) -> dict:
    r"""Conditional generation coherence for every input subset and every target modality.

    For each subset ``S`` (default: all :math:`2^M-1`) and each target ``m`` with a classifier:
    the fraction of (test point, particle) pairs whose generation :math:`\hat x_m` from
    :math:`z\sim q(z\mid x_S)` the classifier labels correctly (module docstring). Only data
    points where every modality of ``S`` is observed (``mask``) count for ``S``.

    One guide call and one model call per mini-batch of ``batch_size`` points cover all
    subsets and ``num_samples`` particles, on plates ``"subsets"`` and ``"particles"`` left of
    the data plate (which must be the model's only plate unless ``max_plate_nesting`` says
    more). Each call generates ``S * num_samples * batch_size`` values of every modality. By
    default (``batch_size=None``) the mini-batches are as large as fit in ``memory_budget``
    bytes (256 MiB unless given; :mod:`pyro_mmvae.eval.memory`), and where a single data
    point with all particles does not, the particles are split into chunks too. Correct
    predictions are counted per chunk and summed, so the chunks only split the work (with a
    deterministic guide, e.g. its mean, the result does not depend on them at all).

    :param classifiers: ``{modality: classifier}``; ``classifier(x (n, ...))`` returns scores
        ``(n, K)`` (argmax taken) or labels ``(n,)``. Targets are the modalities listed here.
    :param use_mean: decode the likelihood mean (:func:`decoded_value`), else a sample.
    :param batch_size: data points per guide and model call, each with all particles (None:
        from ``memory_budget``).
    :param memory_budget: bytes a chunk may hold (default 256 MiB), used when ``batch_size``
        is None.
    :param reduce: applied to the counts (correct predictions, evaluated points) before the
        fractions are taken: a data-parallel evaluation passes
        :func:`~pyro_mmvae.train.distributed.all_reduce_sum`, each process its shard of the
        points (:func:`~pyro_mmvae.train.distributed.local_shard`).
    :returns: ``{"coherence": {subset: {target: acc}},
        "self": {subset: mean over targets in S},
        "cross": {subset: mean over targets outside S} (subsets with such a target),
        "self_by_num_inputs": {|S|: mean}, "cross_by_num_inputs": {|S|: mean},
        "leave_one_out": {m: acc of m from all other modalities},
        "leave_one_out_mean": float, "num_points": {subset: evaluated data points}}``;
        accuracies are floats (``None`` where no data point has ``S`` observed).
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    batch_size = check_positive_int(batch_size, "batch_size", allow_none=True)
    budget = check_memory_budget(memory_budget)
    mask = validate_batch(data, mask)
    modalities = list(data)
    n = num_points(data)
    device = next(iter(data.values())).device
    labels = _labels(labels, n, device)
    if not classifiers:
        raise ValueError("conditional_coherence needs at least one classifier")
    targets = [m for m in modalities if m in classifiers] + \
        [m for m in classifiers if m not in modalities]
    names, rows = subset_matrix(subsets, modalities, device)
    s, p = len(names), int(num_samples)

    def plates(particles):
        return [("subsets", s, -(max_plate_nesting + 2)),
                ("particles", particles, -(max_plate_nesting + 1))]

    def probe(points, particles):
        x = {m: v[:points] for m, v in data.items()}
        return trace_nbytes(*_generation_traces(model, guide, x, rows, plates(particles),
                                                max_plate_nesting))

    if batch_size is None:
        batch_size, particles = chunks_for_budget(probe, n, p, budget)
    else:
        particles = p
    observed = stack_mask(mask, modalities)  # (N, M)
    correct = torch.zeros(s, len(targets), dtype=torch.long, device=device)
    count = torch.zeros(s, dtype=torch.long, device=device)
    for start in range(0, n, batch_size):
        idx = slice(start, start + batch_size)
        x_b = {m: v[idx] for m, v in data.items()}
        obs_b, y_b = observed[idx], labels[idx]
        b = obs_b.shape[0]
        # a subset counts where all its modalities are observed; elsewhere the guide sees the
        # zero placeholders and the result is discarded
        valid = ~(rows[:, None, :] & ~obs_b).any(-1)  # (S, B)
        for done in range(0, p, particles):
            k = min(particles, p - done)
            model_tr = generation_trace(model, guide, x_b, rows, plates(k), max_plate_nesting)
            for t, m in enumerate(targets):
                x_hat = _flat_generations(_generated(model_tr, m), s * k * b, use_mean, m)
                pred = predict(classifiers[m], x_hat).reshape(s, k, b)
                correct[:, t] += ((pred == y_b) & valid[:, None, :]).sum((1, 2))
            del model_tr
        count += valid.sum(-1)
    if reduce is not None:
        correct, count = reduce(correct), reduce(count)
    correct, count = correct.tolist(), count.tolist()

    coherence, self_coh, cross_coh = {}, {}, {}
    members = {name: set(name.split("+")) for name in names}
    for i, name in enumerate(names):
        total = count[i] * p
        coherence[name] = {m: (correct[i][t] / total if total else None)
                           for t, m in enumerate(targets)}
        inside = [coherence[name][m] for m in targets if m in members[name]]
        outside = [coherence[name][m] for m in targets if m not in members[name]]
        if inside:
            self_coh[name] = _mean(inside)
        if outside:
            cross_coh[name] = _mean(outside)
    loo = {}
    for m in targets:
        rest = subset_name(x for x in modalities if x != m)
        if rest and rest in coherence:
            loo[m] = coherence[rest][m]
    return {
        "coherence": coherence,
        "self": self_coh,
        "cross": cross_coh,
        "self_by_num_inputs": _by_size(self_coh),
        "cross_by_num_inputs": _by_size(cross_coh),
        "leave_one_out": loo,
        "leave_one_out_mean": _mean(loo.values()),
        "num_points": dict(zip(names, count)),
    }


def _device(*modules):
    """The device of the first parameter or buffer of any ``torch.nn.Module`` given (CPU if
    none has one)."""
    for module in modules:
        if isinstance(module, torch.nn.Module):
            for t in itertools.chain(module.parameters(), module.buffers()):
                return t.device
    return torch.device("cpu")


def unconditional_trace(model, modalities: Sequence[str], n: int, device=None):
    """Trace of ``model({}, {m: all False (n,)})``: ``n`` joint samples from the prior, every
    modality generated (:func:`pyro_mmvae.protocol.observe`)."""
    return poutine.trace(model).get_trace({}, unobserved(modalities, n, device))


@torch.no_grad()
def joint_coherence(model, classifiers: Mapping, num_samples: int = 1000, use_mean: bool = True,
                    batch_size: Optional[int] = None, modalities: Optional[Sequence[str]] = None,
                    memory_budget: Optional[int] = None) -> float:
    r"""Random-generation coherence (MoPoE "joint coherence"): the fraction of unconditional
    samples (``model({}, mask)`` with every modality masked out: ``z`` from the prior, then
    every modality generated, its likelihood mean with ``use_mean``) on which all
    ``classifiers`` predict the same label. Drawn in chunks of ``batch_size`` samples (None:
    as many as fit in ``memory_budget`` bytes, 256 MiB unless given;
    :mod:`pyro_mmvae.eval.memory`); agreements are counted per chunk and summed.

    :param modalities: the modalities the mask names (default: ``model.modalities`` if the
        model has that attribute, else the classifiers' modalities).
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    batch_size = check_positive_int(batch_size, "batch_size", allow_none=True)
    budget = check_memory_budget(memory_budget)
    if not classifiers:
        raise ValueError("joint_coherence needs at least one classifier")
    if modalities is None:
        modalities = getattr(model, "modalities", None) or list(classifiers)
    device = _device(model, *classifiers.values())
    if batch_size is None:
        batch_size = chunk_for_budget(
            lambda k: trace_nbytes(unconditional_trace(model, modalities, k, device)),
            num_samples, budget)
    agree, done = 0, 0
    while done < num_samples:
        n = min(batch_size, num_samples - done)
        trace = unconditional_trace(model, modalities, n, device)
        preds = torch.stack([predict(clf, _flat_generations(_generated(trace, m), n, use_mean, m))
                             for m, clf in classifiers.items()])
        agree += int((preds == preds[0]).all(0).sum())
        done += n
    return agree / num_samples


# --------------------------------------------------------------------------- latents

@torch.no_grad()
def encode_subsets(guide, data: Mapping[str, torch.Tensor], rows: torch.Tensor,
                   use_mean: bool = True, batch_size: int = 256, latent_site: str = LATENT_SITE,
                   max_plate_nesting: int = 1) -> torch.Tensor:
    r"""Latent codes ``(S, N, D)`` of :math:`q(z\mid x_S)` for every row ``S`` of ``rows``
    (``(S, M)`` bool, modalities in ``data`` order): the mean of the guide's ``latent_site``
    with ``use_mean`` (else one sample), event dims flattened. One guide call per mini-batch,
    the subsets stacked on a plate left of the data plate."""
    batch_size = check_positive_int(batch_size, "batch_size")
    modalities = list(data)
    s = rows.shape[0]
    plates = [("subsets", s, -(max_plate_nesting + 1))]
    out = []
    for start in range(0, num_points(data), batch_size):
        x_b = {m: v[start:start + batch_size] for m, v in data.items()}
        b = num_points(x_b)
        tr = trace_guide(guide, x_b, _subset_masks(rows, b, modalities, max_plate_nesting,
                                                   False), plates)
        site = tr.nodes.get(latent_site)
        if site is None or site["type"] != "sample":
            raise ValueError(f"the guide samples no site '{latent_site}'")
        code = decoded_value(site, use_mean)
        event = site["fn"].event_shape
        if code.numel() != s * b * int(np.prod(tuple(event), dtype=np.int64)):
            raise ValueError(f"latent '{latent_site}' has batch shape "
                             f"{tuple(code.shape[:code.dim() - len(event)])}; expected "
                             f"{s} subsets x {b} data points")
        out.append(code.reshape(s, b, -1))
    return torch.cat(out, dim=1)


def latent_classification(guide, train_data: Mapping[str, torch.Tensor], train_labels,
                          test_data: Mapping[str, torch.Tensor], test_labels,
                          subsets: Optional[Sequence[SubsetSpec]] = None,
                          num_train: Optional[int] = None,
                          train_mask: Optional[Mapping[str, torch.Tensor]] = None,
                          test_mask: Optional[Mapping[str, torch.Tensor]] = None,
                          use_mean: bool = True, batch_size: int = 256, seed: int = 0,
                          latent_site: str = LATENT_SITE, max_iter: int = 1000,
                          max_plate_nesting: int = 1) -> dict:
    r"""Linear classification accuracy of the latent representation, per input subset.

    For each subset ``S`` (default: all :math:`2^M-1`): a scikit-learn ``LogisticRegression``
    (lbfgs, ``max_iter``) fitted on the posterior means of :math:`q(z\mid x_S)`
    (``use_mean=False``: one sample, as Hirt et al. write) of ``num_train`` random training
    points (default all; MoPoE uses 500; drawn with ``seed``), scored on all test points. With
    masks, only points where all of ``S`` is observed are used for ``S``.

    :returns: ``{"accuracy": {subset: acc}, "by_num_inputs": {|S|: mean acc},
        "num_train": {subset: n}, "num_test": {subset: n}}`` (``None`` where a subset has no
        usable test point).
    """
    from sklearn.linear_model import LogisticRegression

    batch_size = check_positive_int(batch_size, "batch_size")
    num_train = check_positive_int(num_train, "num_train", allow_none=True)
    max_iter = check_positive_int(max_iter, "max_iter")
    train_mask = validate_batch(train_data, train_mask)
    test_mask = validate_batch(test_data, test_mask)
    modalities = list(train_data)
    if set(test_data) != set(modalities):
        raise ValueError(f"train data has modalities {modalities}, test data "
                         f"{list(test_data)}")
    test_data = {m: test_data[m] for m in modalities}
    test_mask = {m: test_mask[m] for m in modalities}
    n_train = num_points(train_data)
    device = next(iter(train_data.values())).device
    y_train = _labels(train_labels, n_train, device)
    y_test = _labels(test_labels, num_points(test_data), next(iter(test_data.values())).device)
    if num_train is not None and num_train < n_train:
        pick = torch.from_numpy(np.random.default_rng(seed).choice(n_train, num_train,
                                                                   replace=False))
        pick = pick.sort().values.to(device)
        train_data = {m: v[pick] for m, v in train_data.items()}
        train_mask = {m: v[pick] for m, v in train_mask.items()}
        y_train = y_train[pick]
    names, rows = subset_matrix(subsets, modalities, device)
    kw = dict(use_mean=use_mean, batch_size=batch_size, latent_site=latent_site,
              max_plate_nesting=max_plate_nesting)
    z_train = encode_subsets(guide, train_data, rows, **kw).cpu().numpy()
    z_test = encode_subsets(guide, test_data, rows.to(y_test.device), **kw).cpu().numpy()

    def usable(mask, r):
        obs = stack_mask(mask, modalities)
        return (~(r[:, None, :] & ~obs).any(-1)).cpu().numpy()  # (S, N)

    ok_train, ok_test = usable(train_mask, rows), usable(test_mask, rows.to(y_test.device))
    y_train, y_test = y_train.cpu().numpy(), y_test.cpu().numpy()
    accuracy, counts_train, counts_test = {}, {}, {}
    for i, name in enumerate(names):
        tr, te = ok_train[i], ok_test[i]
        counts_train[name], counts_test[name] = int(tr.sum()), int(te.sum())
        if not tr.any() or not te.any():
            accuracy[name] = None
            continue
        classes = np.unique(y_train[tr])
        if len(classes) < 2:  # LogisticRegression needs two classes
            pred = np.full(int(te.sum()), classes[0])
        else:
            clf = LogisticRegression(max_iter=max_iter).fit(z_train[i][tr], y_train[tr])
            pred = clf.predict(z_test[i][te])
        accuracy[name] = float((pred == y_test[te]).mean())
    return {"accuracy": accuracy, "by_num_inputs": _by_size(accuracy),
            "num_train": counts_train, "num_test": counts_test}
