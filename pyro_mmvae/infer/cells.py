r"""Plates for the bounds' stacked calls, and the same calls for programs that do not broadcast.

The bounds and the evaluation functions trace a model or guide inside plates stacked left of the
data plate: ``"particles"`` (Pyro's ``vectorize_particles``) and *replicate* plates (the masked
bound's pair ``[S, O]``, the sub-sampled objective's subsets, a mixture's components, the
subsets of a coherence evaluation). Each entry of a replicate plate is another call of the same
program with another mask (or another replayed latent) on the same data, so **global latents**
(sites outside the data plate) are drawn once per particle and shared by every entry: a
replicate plate never applies to a site outside the data plate (:class:`ReplicatePlate`).

A program that declares :func:`~pyro_mmvae.protocol.vectorized` runs once inside those plates.
Any other program is traced by :func:`looped_trace`: once per *cell* of the plates' grid, with
plain ``(N,)`` masks, upstream latents sliced to the cell, and its global latents replayed from
the first replicate entry of the same particle; the cells' traces are then merged into one trace
with the layout of the vectorised call — a local site's value ``(*grid, N, *event)``, a global
site's ``(*particles, 1, *event)`` — whose distributions are :class:`StackedDistribution`\ s.
Everything downstream (the bounds' densities, KLs, STL, DReG) reads the merged trace as it reads
a vectorised one, so both paths give the same values and gradients.
"""

from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from pyro import poutine
from pyro.distributions import (Independent, Laplace, MultivariateNormal, Normal,
                                TorchDistribution)
from pyro.distributions.util import broadcast_shape
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.plate_messenger import PlateMessenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import Distribution, constraints, kl_divergence, register_kl

from pyro_mmvae.protocol import DATA_PLATE, STL_FN

Plate = Tuple[str, int, int]  # (name, size, dim)
# The bounds' and evaluations' replicate plates: entries are other calls on the same data (other
# masks, other replayed latents) that share the global latents. Any other plate ("particles",
# ArviZ's draws) holds independent draws, globals included.
REPLICATE_PLATES = frozenset({"masked_pair", "subsets", "mixture_components"})


def in_data_plate(site) -> bool:
    """Whether a trace site (or message) sits inside the protocol's ``"data"`` plate."""
    return any(frame.name == DATA_PLATE for frame in site["cond_indep_stack"])


class ReplicatePlate(PlateMessenger):
    """A vectorised plate that applies only to sites inside the ``"data"`` plate.

    Sites outside it (global latents, global parameters) are left as they are, so every entry of
    the plate shares one draw; it must enclose the program (inner plates are processed first, so
    a site's frames already name the data plate when this plate sees it).
    """

    def _process_message(self, msg) -> None:
        if in_data_plate(msg):
            super()._process_message(msg)

    def _postprocess_message(self, msg) -> None:
        if in_data_plate(msg):
            super()._postprocess_message(msg)


def within_plates(fn, plates: Sequence[Plate]):
    """Wrap a Pyro program in the bounds' plates (outermost first): those named in
    :data:`REPLICATE_PLATES` as :class:`ReplicatePlate`, any other as an ordinary plate."""
    for name, size, dim in reversed(plates):
        plate = ReplicatePlate if name in REPLICATE_PLATES else PlateMessenger
        fn = plate(name=name, size=size, dim=dim)(fn)
    return fn


# --------------------------------------------------------------------------- stacked distributions

class StackedDistribution(TorchDistribution):
    r"""The distributions of one site in the cells of a plate grid, as one distribution.

    ``parts`` (in row-major order over ``grid``) each have batch shape ``cell_batch`` (after
    broadcasting; a global site's ``()`` counts as ``(1,)``); the stack has batch shape
    ``grid + cell_batch``. ``log_prob``, ``rsample``, ``mean``, ``variance``, ``entropy`` and
    closed-form KLs between two stacks on the same grid are evaluated cell by cell. A value
    may carry extra leading dims (a mixture bound's components): each cell then scores its
    slice with them.
    """

    arg_constraints: Dict[str, constraints.Constraint] = {}

    def __init__(self, parts: Sequence, grid: Sequence[int], cell_batch: Sequence[int]):
        self.parts = list(parts)
        self.grid = torch.Size(grid)
        self.cell_batch = torch.Size(cell_batch)
        if len(self.parts) != self.grid.numel():
            raise ValueError(f"{len(self.parts)} distributions for a grid of {tuple(self.grid)}")
        event = self.parts[0].event_shape
        super().__init__(self.grid + self.cell_batch, event, validate_args=False)

    @property
    def support(self):
        return self.parts[0].support

    @property
    def has_rsample(self):
        return all(p.has_rsample for p in self.parts)

    def stack_cells(self, results: List[torch.Tensor], trailing: int) -> torch.Tensor:
        """Stack per-cell tensors ``(*lead, *cell_batch, *trailing dims)`` into the grid."""
        tail = len(self.cell_batch)
        shape = torch.Size(broadcast_shape(*(r.shape for r in results)))
        lead = shape[:len(shape) - tail - trailing]
        out = torch.stack([r.expand(shape) for r in results], dim=len(lead))
        return out.reshape(lead + self.grid + shape[len(lead):])

    def cell_values(self, value: torch.Tensor):
        """Per-cell slices of a value broadcast to ``(*lead, *grid, *cell_batch, *event)``."""
        value = value.expand(torch.Size(broadcast_shape(value.shape,
                                                        self.batch_shape + self.event_shape)))
        inner = len(self.cell_batch) + len(self.event_shape)
        lead = value.dim() - inner - len(self.grid)
        flat = value.reshape(value.shape[:lead] + (-1,) + value.shape[value.dim() - inner:])
        return [flat.select(lead, i) for i in range(len(self.parts))]

    def log_prob(self, value):
        if value.numel() == 0:  # a factor (Unit): its value holds nothing to slice
            empty = value.new_empty(self.cell_batch + self.event_shape)
            return self.stack_cells([p.log_prob(empty).expand(self.cell_batch)
                                     for p in self.parts], 0)
        results = [p.log_prob(v) for p, v in zip(self.parts, self.cell_values(value))]
        return self.stack_cells(results, 0)

    def rsample(self, sample_shape=torch.Size()):
        return self.stack_cells([p.rsample(sample_shape) for p in self.parts],
                                len(self.event_shape))

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.stack_cells([p.sample(sample_shape) for p in self.parts],
                                    len(self.event_shape))

    def _per_part(self, attr):
        shape = self.cell_batch + self.event_shape
        return self.stack_cells([getattr(p, attr).expand(shape) for p in self.parts],
                                len(self.event_shape))

    @property
    def mean(self):
        return self._per_part("mean")

    @property
    def variance(self):
        return self._per_part("variance")

    def entropy(self):
        return self.stack_cells([p.entropy().expand(self.cell_batch) for p in self.parts], 0)

    def reordered(self, order: Sequence[int]) -> "StackedDistribution":
        """The stack with its outermost grid entries permuted (``order`` indexes grid dim 0)."""
        per_row = len(self.parts) // self.grid[0]
        rows = [self.parts[i * per_row:(i + 1) * per_row] for i in range(self.grid[0])]
        return StackedDistribution([p for i in order for p in rows[i]], self.grid,
                                   self.cell_batch)


def as_stack(fn, grid, cell_batch) -> StackedDistribution:
    """A Normal / Laplace / MultivariateNormal (or an ``Independent`` of one) with batch
    ``grid + cell_batch`` as a :class:`StackedDistribution` on that grid, by slicing its
    parameters; ``NotImplementedError`` for other families."""
    ndims = fn.reinterpreted_batch_ndims if isinstance(fn, Independent) else 0
    base = fn.base_dist if isinstance(fn, Independent) else fn
    grid, cell_batch = torch.Size(grid), torch.Size(cell_batch)
    if isinstance(base, (Normal, Laplace)):
        names, event_ndims = ("loc", "scale"), (0, 0)
    elif isinstance(base, MultivariateNormal):
        names, event_ndims = ("loc", "scale_tril"), (1, 2)
    else:
        raise NotImplementedError
    batch = grid + cell_batch + base.batch_shape[len(base.batch_shape) - ndims:]
    params = []
    for name, k in zip(names, event_ndims):
        t = getattr(base, name)
        t = t.expand(batch + t.shape[t.dim() - k:])
        params.append(t.reshape((grid.numel(),) + t.shape[len(grid):]))
    parts = []
    for i in range(grid.numel()):
        if isinstance(base, MultivariateNormal):
            part = MultivariateNormal(params[0][i], scale_tril=params[1][i])
        else:
            part = type(base)(params[0][i], params[1][i])
        parts.append(part.to_event(ndims) if ndims else part)
    return StackedDistribution(parts, grid, cell_batch)


@register_kl(StackedDistribution, StackedDistribution)
def _kl_stacked(p, q):
    if p.grid != q.grid or p.cell_batch != q.cell_batch:
        raise NotImplementedError
    kls = [kl_divergence(a, b).expand(p.cell_batch) for a, b in zip(p.parts, q.parts)]
    return p.stack_cells(kls, 0)


@register_kl(Distribution, StackedDistribution)
def _kl_to_stacked(p, q):
    return _kl_stacked(as_stack(p, q.grid, q.cell_batch), q)


@register_kl(StackedDistribution, Distribution)
def _kl_from_stacked(p, q):
    return _kl_stacked(p, as_stack(q, p.grid, p.cell_batch))


# --------------------------------------------------------------------------- looped tracing

def _check_plates(plates: Sequence[Plate]) -> List[Plate]:
    plates = sorted(plates, key=lambda p: p[2])
    dims = [p[2] for p in plates]
    if dims and dims != list(range(dims[0], dims[0] + len(dims))):
        raise ValueError(f"the stacked plates must occupy consecutive dims, got {dims}")
    return plates


def _cell_batch_ndim(site, plate_names) -> int:
    """Batch dims a site has inside one cell: the plates around it that are not grid plates."""
    return sum(1 for f in site["cond_indep_stack"] if f.name not in plate_names
               and f.dim is not None)


def select_cell(value: torch.Tensor, cell: Sequence[int], plates: Sequence[Plate],
                event_dim: int = 0, batch_ndim: Optional[int] = None) -> torch.Tensor:
    """The entry of a stacked tensor at ``cell`` (one index per plate, outermost first).

    Plate dims of size 1 (broadcast) are dropped, absent ones ignored. With ``batch_ndim`` the
    result is reshaped to that many batch dims (leading singletons dropped), the shape the
    value has inside one call of a program that does not broadcast.
    """
    for (name, size, dim), i in zip(plates, cell):
        pos = dim - event_dim
        if value.dim() >= -pos:
            value = value.select(pos, i if value.shape[pos] == size else 0)
    if batch_ndim is not None:
        shape = value.shape[:value.dim() - event_dim]
        while len(shape) > batch_ndim and shape[0] == 1:
            shape = shape[1:]
        value = value.reshape(shape + value.shape[value.dim() - event_dim:])
    return value


def _subsample_sites(trace) -> dict:
    """The plates' subsample sites of a trace (the data indices a subsampled plate drew)."""
    return {n: site for n, site in trace.nodes.items() if site_is_subsample(site)}


def _sample_sites(trace):
    return [name for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)]


def looped_trace(program, data, mask, plates: Sequence[Plate], upstream=None):
    """Trace a program that does not broadcast, once per cell of ``plates``, as one trace.

    :param mask: ``{modality: bool tensor}`` with the plates' leading dims (broadcastable).
    :param upstream: a trace (vectorised or merged) whose latent values the program replays,
        sliced to each cell (a model replayed against its guide's trace).
    :returns: a :class:`pyro.poutine.Trace` with the layout of the vectorised call (module
        docstring); its sites' distributions are :class:`StackedDistribution`.
    """
    plates = _check_plates(plates)
    names = {p[0] for p in plates}
    grid = tuple(p[1] for p in plates)
    particle_axes = [i for i, p in enumerate(plates) if p[0] not in REPLICATE_PLATES]
    replays = {}
    if upstream is not None:
        for name in _sample_sites(upstream):
            site = upstream.nodes[name]
            if not site["is_observed"]:
                replays[name] = (site, site["fn"].event_dim, _cell_batch_ndim(site, names))
    cells = list(itertools.product(*(range(s) for s in grid)))
    traces, shared = [], {}
    subsample = {} if upstream is None else _subsample_sites(upstream)
    for cell in cells:
        key = tuple(cell[i] for i in particle_axes)
        replay = poutine.Trace()
        for name, (site, event_dim, ndim) in replays.items():
            value = select_cell(site["value"], cell, plates, event_dim, ndim)
            replay.add_node(name, name=name, type="sample", is_observed=False,
                            infer=site.get("infer", {}), value=value)
        for name, site in subsample.items():  # one data subsample for every cell
            replay.add_node(name, **site)
        for name, site in shared.get(key, {}).items():
            if name not in replays:
                replay.add_node(name, name=name, type="sample", is_observed=False,
                                infer=site["infer"], value=site["value"])
        cell_mask = {m: select_cell(t, cell, plates) for m, t in mask.items()}
        tr = poutine.trace(poutine.replay(program, trace=replay)).get_trace(data, cell_mask)
        if not subsample:
            subsample = _subsample_sites(tr)
        if key not in shared:
            shared[key] = {n: tr.nodes[n] for n in _sample_sites(tr)
                           if not tr.nodes[n]["is_observed"] and not in_data_plate(tr.nodes[n])}
        traces.append(tr)
    return _merge(traces, cells, plates, particle_axes)


def _merge(traces, cells, plates, particle_axes):
    grid = tuple(p[1] for p in plates)
    names = {p[0] for p in plates}
    first_of_particle = [i for i, cell in enumerate(cells)
                         if all(cell[j] == 0 for j in range(len(cell)) if j not in particle_axes)]
    merged = poutine.Trace()
    for name, site in _subsample_sites(traces[0]).items():  # the same in every cell
        merged.add_node(name, **site)
    for name in _sample_sites(traces[0]):
        site = traces[0].nodes[name]
        local = in_data_plate(site)
        members = list(range(len(traces))) if local else first_of_particle
        axes = list(range(len(plates))) if local else particle_axes
        try:
            parts = [traces[i].nodes[name] for i in members]
        except KeyError:
            raise ValueError(f"site '{name}' is not sampled in every call of the program; the "
                             "library's bounds need the same sites in every call") from None
        site_grid = tuple(grid[a] for a in axes)
        sub_plates = [plates[a] for a in axes]
        event_dim = site["fn"].event_dim
        ndim = max(-plates[-1][2] - 1, 0) if plates else 0  # max_plate_nesting
        cell_batch = torch.Size(broadcast_shape(*(p["fn"].batch_shape for p in parts)))
        cell_batch = torch.Size((1,) * (ndim - len(cell_batch))) + cell_batch
        fns = [p["fn"] for p in parts]
        values = [p["value"].expand(cell_batch + p["value"].shape[p["value"].dim() - event_dim:])
                  for p in parts]
        value = torch.stack(values).reshape(site_grid + values[0].shape)
        node = dict(site)
        node.update(
            fn=StackedDistribution(fns, site_grid, cell_batch), value=value,
            mask=_stack_masks([p["mask"] for p in parts], site_grid, cell_batch),
            scale=_stack_scales([p["scale"] for p in parts], site_grid, cell_batch, name),
            cond_indep_stack=tuple(CondIndepStackFrame(n, d, s, 0) for n, s, d in sub_plates)
            + tuple(site["cond_indep_stack"]),
            infer=dict(site["infer"]))
        for key in ("log_prob", "unscaled_log_prob", "log_prob_sum", "packed"):
            node.pop(key, None)
        if STL_FN in site["infer"]:
            node["infer"][STL_FN] = _stacked_stl(parts, [cells[i] for i in members], plates,
                                                 site_grid, cell_batch, merged, names)
        merged.add_node(name, **node)
    return merged


def _stack_masks(masks, grid, cell_batch):
    if all(m is None for m in masks):
        return None
    device = next((m.device for m in masks if torch.is_tensor(m)), None)
    full = [torch.as_tensor(True if m is None else m, device=device).expand(cell_batch)
            for m in masks]
    return torch.stack(full).reshape(torch.Size(grid) + cell_batch)


def _stack_scales(scales, grid, cell_batch, name):
    if not any(torch.is_tensor(s) for s in scales):
        if len(set(scales)) > 1:
            raise ValueError(f"site '{name}' has a different scale in different calls")
        return scales[0]
    full = [torch.as_tensor(s).expand(cell_batch) for s in scales]
    return torch.stack(full).reshape(torch.Size(grid) + cell_batch)


def _stacked_stl(parts, cells, plates, grid, cell_batch, merged, names):
    """Merged ``infer[STL_FN]``: each cell's rebuild at the values sliced to that cell."""
    def rebuild(values):
        fns = []
        for part, cell in zip(parts, cells):
            sliced = {}
            for n, v in values.items():
                up = merged.nodes[n]
                sliced[n] = select_cell(v, cell, plates, up["fn"].event_dim,
                                        _cell_batch_ndim(up, names))
            fns.append(part["infer"][STL_FN](sliced))
        return StackedDistribution(fns, grid, cell_batch)
    return rebuild
