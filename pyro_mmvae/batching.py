r"""Modules of one architecture run as one batched call.

A multimodal model has one encoder and one decoder per modality, often of the same
architecture (PolyMNIST's five image encoders, the linear study's MLPs). Called one by one,
each layer is ``M`` small kernels; on a GPU a step then costs its kernel launches rather than
its arithmetic. :func:`batched_call` stacks the modules' parameters along a new leading dim
(``torch.stack``, so gradients reach every module's own parameters) and runs the shared
architecture once under ``torch.vmap`` with ``torch.func.functional_call``, turning each
layer's ``M`` matrix products into one batched product.

Which modules are batched is decided by :func:`architecture`: same classes, hyperparameters,
parameter names, shapes, dtypes and devices, and no buffers (a buffer may be mutated in the
forward pass, as batch-norm statistics are, which ``vmap`` cannot do). Their inputs must also
have the same shape and dtype. A module that ``vmap`` cannot run (dropout, in-place updates, a
data-dependent shape) falls back to the one-by-one loop, remembered per architecture.

``batch_modalities="auto"`` (the library's default) batches on CUDA only: on a CPU the loop is
as fast or faster at the sizes of the papers' networks (the arithmetic dominates there; see
``benchmarks/bench_batching.py``). ``True`` batches wherever possible, ``False`` never.
"""

from __future__ import annotations

from typing import Callable, Dict, Hashable, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn
from torch.func import functional_call

BatchSetting = Union[bool, str]

_SIMPLE = (bool, int, float, str, type(None), torch.dtype, torch.device)
_UNBATCHABLE = set()  # architectures vmap failed on: run them one by one from then on


def check_batch_setting(value) -> BatchSetting:
    """``value`` if it is True, False or ``"auto"``; else ``ValueError`` naming
    ``batch_modalities``."""
    if value is True or value is False or value == "auto":
        return value
    raise ValueError(f"batch_modalities must be True, False or 'auto', got {value!r}")


def _hyperparameters(module: nn.Module) -> Optional[tuple]:
    """The module's own public attributes as a hashable tuple, None if one is not a plain
    value (a function, a tensor, an object: modules holding those are not compared)."""
    items = []
    for key, value in sorted(vars(module).items()):
        if key.startswith("_") or key == "training":
            continue
        if isinstance(value, (tuple, list)) and all(isinstance(v, _SIMPLE) for v in value):
            value = tuple(value)
        elif not isinstance(value, _SIMPLE):
            return None
        items.append((key, value))
    return tuple(items)


def architecture(module: nn.Module) -> Optional[Hashable]:
    """A key equal for modules that compute the same function of their parameters and input,
    or None if the module cannot be batched (it has buffers, or attributes that are not plain
    values)."""
    if next(module.buffers(), None) is not None:
        return None
    parts = []
    for name, sub in module.named_modules():
        hyper = _hyperparameters(sub)
        if hyper is None:
            return None
        parts.append((name, type(sub), sub.training, hyper))
    params = tuple((n, tuple(p.shape), p.dtype, p.device, p.requires_grad)
                   for n, p in module.named_parameters())
    return tuple(parts), params


def should_batch(setting: BatchSetting, like: torch.Tensor) -> bool:
    """Whether to batch: ``setting`` True or False, or ``"auto"``: on CUDA tensors only."""
    if setting == "auto":
        return like.is_cuda
    return bool(setting)


def groups(modules: Mapping[str, nn.Module], inputs: Mapping[str, torch.Tensor],
           archs: Optional[Mapping[str, Optional[Hashable]]] = None) -> List[List[str]]:
    """The keys of ``modules`` (those in ``inputs``) in groups of one architecture and input
    shape and dtype, in the order of ``modules``; single-member groups for the rest.
    ``archs``: the modules' :func:`architecture` keys, if already computed."""
    found: Dict[Hashable, List[str]] = {}
    out = []
    for key, module in modules.items():
        if key not in inputs:
            continue
        arch = archs[key] if archs is not None else architecture(module)
        if arch is None or arch in _UNBATCHABLE:
            out.append([key])
            continue
        x = inputs[key]
        sig = (arch, tuple(x.shape), x.dtype, x.device)
        if sig not in found:
            found[sig] = []
            out.append(found[sig])
        found[sig].append(key)
    return out


def batched_call(modules: Sequence[nn.Module], inputs: Sequence[torch.Tensor],
                 arch: Optional[Hashable] = None) -> Optional[List[torch.Tensor]]:
    """``[module(x) for module, x in zip(modules, inputs)]`` as one batched call of modules of
    one :func:`architecture` (``arch``, computed if not given; inputs of one shape); None if
    ``vmap`` cannot run them (then remembered for that architecture, and the caller loops)."""
    first = modules[0]
    arch = architecture(first) if arch is None else arch
    if arch is None or arch in _UNBATCHABLE:
        return None
    names = [n for n, _ in first.named_parameters()]
    own = [dict(m.named_parameters()) for m in modules]
    stacked = {n: torch.stack([p[n] for p in own]) for n in names}

    def run(params, x):
        return functional_call(first, params, (x,))

    try:
        out = torch.vmap(run)(stacked, torch.stack(list(inputs)))
    except (RuntimeError, ValueError, NotImplementedError):
        _UNBATCHABLE.add(arch)
        return None
    return list(out.unbind(0))


def call_grouped(modules: Mapping[str, nn.Module], inputs: Mapping[str, torch.Tensor],
                 setting: BatchSetting = "auto",
                 call: Optional[Callable[[str, nn.Module, torch.Tensor], torch.Tensor]] = None
                 ) -> Dict[str, torch.Tensor]:
    """``{key: modules[key](inputs[key])}`` for the keys in ``inputs`` (in the order of
    ``modules``), modules of one architecture with inputs of one shape batched when
    :func:`should_batch` says so. ``call(key, module, x)`` runs a module on its own (default
    ``module(x)``; the guide's names the modality in its errors)."""
    call = call or (lambda key, module, x: module(x))
    keys = [k for k in modules if k in inputs]
    if not keys or not should_batch(setting, inputs[keys[0]]):
        return {k: call(k, modules[k], inputs[k]) for k in keys}
    archs = {k: architecture(modules[k]) for k in keys}  # once per module and call
    out = {}
    for group in groups(modules, inputs, archs):
        results = None
        if len(group) > 1:
            results = batched_call([modules[k] for k in group], [inputs[k] for k in group],
                                   archs[group[0]])
        if results is None:
            results = [call(k, modules[k], inputs[k]) for k in group]
        out.update(zip(group, results))
    return {k: out[k] for k in keys}
