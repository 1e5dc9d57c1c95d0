r"""Parameter names in Pyro's param store for the library's models and guides.

:class:`NamedPyroModule` is the base class of :class:`~pyro_mmvae.models.MultimodalModel` and
:class:`~pyro_mmvae.guides.MultimodalGuide` (hence of every library model and guide). It is a
:class:`pyro.nn.PyroModule` that differs from a plain one in two ways.

**Each instance has its own names.** Its ``nn.Module`` children (encoders, aggregator,
decoders, prior, ...) are registered with :func:`pyro.module` under ``<root>.<child>``, so a
parameter is stored as ``"<root>.encoders$$$image.0.weight"`` (``"encoders$$$image.0.weight"``
for the empty root). With ``name="..."`` the root is exactly that string, and a call while
another module's parameters already occupy those names raises ``ValueError``. With the default
``name=None`` the root is chosen when the instance is called (``svi.step``, an ELBO's
``loss``, ``poutine.trace``): the first of ``""``, ``"<ClassName>_1"``, ``"<ClassName>_2"``, ...
whose names do not hold another module's parameters. So one model and one guide keep the
unprefixed names of earlier versions (param-store files and the optimiser state in
checkpoints still match), a second instance trained in the same store gets ``_1``, and names
depend only on the order in which instances are first called, never on memory addresses or
garbage collection. An instance keeps its root unless another module's parameters come to
occupy its names (say another instance was called first after ``pyro.clear_param_store()``);
it then moves to the first root where the store holds nothing, keeping its own parameters.
:attr:`NamedPyroModule.pyro_name` tells which root an instance has.

**Loaded parameters are adopted.** Children are registered with
``update_module_params=True``: a value found in the store under one of the instance's names
that no library module has registered (what :meth:`pyro.params.param_store.ParamStoreDict.load`
or ``set_state`` put there) replaces the module's own parameter at the call that chooses or
keeps that name (a different shape is a ``ValueError``). So
``pyro.get_param_store().load(path)`` restores a model and guide built in the same order with
the same constructor arguments (and names) once they are called; ``load_state_dict``
restores them at once, whatever their names.

A ``NamedPyroModule`` that is a child of another ``PyroModule`` takes the name its parent
gives it, as any ``PyroModule`` does.
"""

from __future__ import annotations

import itertools
import weakref
from contextlib import contextmanager
from typing import Dict, Iterator, Optional, Tuple

import pyro
import torch
from pyro.nn import PyroModule
from pyro.params.param_store import param_with_module_name

__all__ = ["NamedPyroModule", "registered_once", "registration_skipped", "registration_entries",
           "still_registered"]

_DIVIDER = "$$$"  # pyro's module namespace divider (pyro.params.param_store)
_UNCONSTRAINED = "_unconstrained"

# Tensors that some NamedPyroModule has registered in the param store, by id (weak references,
# so a tensor leaves when the store and the module drop it). A value in the store that is not
# here was loaded (ParamStoreDict.load / set_state) or put there by pyro.param, and is adopted.
_registered: Dict[int, weakref.ref] = {}


def _mark_registered(tensor: torch.Tensor) -> None:
    key = id(tensor)
    ref = _registered.get(key)
    if ref is not None and ref() is tensor:
        return

    def forget(dead, key=key):
        if _registered.get(key) is dead:
            del _registered[key]

    _registered[key] = weakref.ref(tensor, forget)


def _is_registered(tensor: torch.Tensor) -> bool:
    ref = _registered.get(id(tensor))
    return ref is not None and ref() is tensor


def _make_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name  # as pyro.nn.module._make_name


def _module_local_params() -> bool:
    return bool(pyro.settings.get("module_local_params"))


def _store_entries(module: torch.nn.Module, prefix: str) -> Iterator[Tuple[str, torch.Tensor]]:
    """``(param-store name, tensor)`` of every parameter that calling the ``PyroModule``
    ``module`` with root ``prefix`` registers: its own parameters (PyroParams under their
    constrained name), those of ``PyroModule`` children recursively, and those of plain
    ``nn.Module`` children through :func:`pyro.module`."""
    for key, p in module._parameters.items():
        if p is None:
            continue
        if key.endswith(_UNCONSTRAINED) and key[:-len(_UNCONSTRAINED)] in module._pyro_params:
            key = key[:-len(_UNCONSTRAINED)]
        yield _make_name(prefix, key), p
    for key, child in module._modules.items():
        if child is None:
            continue
        if isinstance(child, PyroModule):
            yield from _store_entries(child, _make_name(prefix, key))
        else:
            for pname, p in child.named_parameters():
                if p.requires_grad:  # what pyro.module registers
                    yield param_with_module_name(_make_name(prefix, key), pname), p


def _rename(module: PyroModule, name: str) -> None:
    """Set the Pyro name of ``module`` and of its ``PyroModule`` descendants."""
    module.__dict__["_pyro_name"] = name
    for key, child in module._modules.items():
        if isinstance(child, PyroModule):
            _rename(child, _make_name(name, key))


class NamedPyroModule(PyroModule):
    """A :class:`~pyro.nn.PyroModule` with per-instance names in the param store and adoption
    of loaded parameters (see :mod:`pyro_mmvae.params`).

    :param name: root of this instance's parameter names in the param store: a string (``""``
        for none) used as is, a clash with another module's parameters being a
        ``ValueError``; or None (default) for the first free of ``""``, ``"<ClassName>_1"``,
        ``"<ClassName>_2"``, ... chosen when the instance is called.
    """

    def __init__(self, name: Optional[str] = None):
        if name is not None:
            if not isinstance(name, str):
                raise TypeError(f"name must be a string or None, got {type(name).__name__}")
            if _DIVIDER in name:
                raise ValueError(f"name must not contain {_DIVIDER!r} (pyro's module "
                                 f"divider), got {name!r}")
        super().__init__(name="" if name is None else name)
        self.__dict__["_name_fixed"] = name is not None
        self.__dict__["_name_chosen"] = name is not None
        self.__dict__["_name_nested"] = False
        self.__dict__["_name_owner"] = None

    @property
    def pyro_name(self) -> Optional[str]:
        """The root of this instance's names in the param store (``""``: unprefixed), or None
        while a default name has not been chosen yet (before the first call)."""
        owner = self.__dict__.get("_name_owner")
        if owner is not None:
            return owner.pyro_name
        if not self.__dict__.get("_name_chosen") and not self.__dict__.get("_name_nested"):
            return None
        return self._pyro_name

    def _share_names_with(self, owner: "NamedPyroModule") -> None:
        """Use the names of ``owner``, whose modules this instance shares (e.g.
        :meth:`~pyro_mmvae.guides.DiscreteMoEGuide.mixture_guide`)."""
        self.__dict__["_name_owner"] = owner

    # --- names --------------------------------------------------------------------------

    def _pyro_set_supermodule(self, name, context) -> None:
        super()._pyro_set_supermodule(name, context)
        self.__dict__["_name_nested"] = True  # the parent PyroModule names it

    def _clash(self, root: str, adopt: bool = True) -> Optional[str]:
        """The first name under ``root`` where the store holds another module's parameter
        (None if there is none); with ``adopt``, values that no library module registered
        (loaded ones) do not count, but one of another shape is a ``ValueError``."""
        store = pyro.get_param_store()._params
        for fullname, p in _store_entries(self, root):
            t = store.get(fullname)
            if t is None or t is p:
                continue
            if not adopt or _is_registered(t):
                return fullname
            if t.shape != p.shape:
                raise ValueError(
                    f"the param store holds {fullname!r} with shape {tuple(t.shape)}, but this "
                    f"{type(self).__name__}'s parameter has shape {tuple(p.shape)}: was a param "
                    "store of another configuration loaded? (pyro.clear_param_store() before "
                    "loading, and build the modules with the same arguments)")
        return None

    def _choose_name(self) -> str:
        """Check (fixed name) or choose (default) the root before a call; returns it."""
        d = self.__dict__
        owner = d.get("_name_owner")
        if owner is not None:
            root = owner._choose_name()
            _rename(self, root)
            d["_name_chosen"] = True
            return root
        if d.get("_name_nested", False):
            return self._pyro_name
        if d.get("_name_fixed", False):
            clash = self._clash(self._pyro_name)
            if clash is not None:
                raise ValueError(
                    f"{type(self).__name__}(name={self._pyro_name!r}): the param store already "
                    f"holds another module's parameter {clash!r}; give each model and guide "
                    "its own name, or pyro.clear_param_store() first")
            return self._pyro_name
        chosen = d.get("_name_chosen", False)
        if chosen and self._clash(self._pyro_name) is None:
            return self._pyro_name
        # A new instance adopts loaded values; one whose names another module took since
        # moves to names where the store holds nothing, keeping its own parameters.
        candidates = itertools.chain([""], (f"{type(self).__name__}_{k}"
                                            for k in itertools.count(1)))
        root = next(r for r in candidates if self._clash(r, adopt=not chosen) is None)
        _rename(self, root)
        d["_name_chosen"] = True
        return root

    def _mark_own_parameters(self) -> None:
        store = pyro.get_param_store()._params
        for fullname, p in _store_entries(self, self._pyro_name):
            if store.get(fullname) is p:
                _mark_registered(p)

    # --- registration ---------------------------------------------------------------------

    def register_parameters(self) -> None:
        """Register every parameter of this instance's plain ``nn.Module`` children now, as
        its calls do when they reach each child (:func:`pyro.module` with
        ``update_module_params=True``; the root chosen or checked first), and mark them as
        this instance's. :func:`registered_once` calls it."""
        root = self._choose_name()
        for key, child in self._modules.items():
            if child is not None and not isinstance(child, PyroModule):
                pyro.module(_make_name(root, key), child, update_module_params=True)
        self._mark_own_parameters()

    def __call__(self, *args, **kwargs):
        outermost = (not self._pyro_context.active and not _module_local_params()
                     and id(self) not in _REGISTERED)
        if outermost:
            self._choose_name()
        try:
            return super().__call__(*args, **kwargs)
        finally:
            if outermost:
                self._mark_own_parameters()

    def __getattr__(self, name: str):
        # Plain nn.Module children: pyro.module(<root>.<child>, child,
        # update_module_params=True) instead of PyroModule's update_module_params=False, which
        # would leave the module's own tensors in place of what the store holds.
        modules = self.__dict__.get("_modules")
        child = modules.get(name) if modules is not None else None
        if (child is None or isinstance(child, PyroModule)
                or not self._pyro_context.active or _module_local_params()):
            return super().__getattr__(name)
        if id(self) in _REGISTERED:  # registered once for this evaluation (registered_once)
            return child
        if not self.__dict__.get("_name_chosen") and not self.__dict__.get("_name_nested"):
            self._choose_name()  # reached from a pyro_method rather than __call__
        pyro.module(_make_name(self._pyro_name, name), child, update_module_params=True)
        return child


# Ids of the NamedPyroModules whose parameters registered_once registered for the evaluation
# running now: their calls inside it do not register them again.
_REGISTERED: set = set()


@contextmanager
def registered_once(*programs):
    """Register the parameters of the :class:`NamedPyroModule` s among ``programs`` once, here,
    and not again at each of their calls inside the block.

    The library's bounds trace the model and the guide several times per step (the masked
    bound's conditional prior runs the guide twice; a program traced cell by cell runs once
    per cell), and every call sends one Pyro ``param`` message per parameter through the
    handler stack of the traces, plates and replays around it: about 60 messages per step for
    a 5-modality model, a tenth of a CPU step. Inside this block they are sent once, through
    the caller's stack only — what ``SVI``'s parameter capture (and any other handler around
    the bound) sees is unchanged: the same names, the same tensors, loaded values adopted as
    before. Programs that are not a top-level ``NamedPyroModule`` (hand-written functions,
    autoguides, a library guide inside an ``AutoGuideList``, a module nested in another
    ``PyroModule``) are called as they are. With ``pyro.settings`` ``module_local_params``
    nothing changes.
    """
    mine = []
    try:  # a registration that raises (a name clash) must not leave the others' ids behind
        for program in _top_level(programs):
            program.register_parameters()
            _REGISTERED.add(id(program))
            mine.append(id(program))
        yield
    finally:
        _REGISTERED.difference_update(mine)


def _top_level(programs) -> list:
    """The top-level :class:`NamedPyroModule` s among ``programs`` that are not registered for
    the evaluation running now (none with ``module_local_params``)."""
    if _module_local_params():
        return []
    return [p for p in programs
            if isinstance(p, NamedPyroModule) and id(p) not in _REGISTERED
            and not p.__dict__.get("_name_nested") and not p._pyro_context.active]


def registration_entries(*programs) -> Tuple[Tuple[str, torch.Tensor], ...]:
    """``(param-store name, tensor)`` of every parameter that a call of the top-level
    :class:`NamedPyroModule` s among ``programs`` registers under its current name (call
    them once first, so their names are chosen); what :func:`still_registered` checks."""
    return tuple(entry for program in _top_level(programs)
                 if program.pyro_name is not None
                 for entry in _store_entries(program, program.pyro_name))


def still_registered(entries) -> bool:
    """Whether the param store still holds exactly these tensors under these names (nothing
    cleared, loaded or replaced since :func:`registration_entries` recorded them)."""
    store = pyro.get_param_store()._params
    return all(store.get(name) is tensor for name, tensor in entries)


@contextmanager
def registration_skipped(*programs):
    """Inside the block, calls of the top-level :class:`NamedPyroModule` s among ``programs``
    register nothing: no ``param`` message is sent for their parameters, so no handler (not
    ``SVI``'s parameter capture either) sees them.

    For a training loop that has collected the parameters itself (:func:`pyro_mmvae.train.fit`
    after its first step) and checked with :func:`still_registered` that the store holds
    exactly the tensors these calls would register, so that registering them again would
    change nothing. Their plain ``nn.Module`` children then run their own parameters, which
    are the store's. ``PyroModule`` children, nested modules and other programs register as
    usual.
    """
    mine = [id(p) for p in _top_level(programs)]
    _REGISTERED.update(mine)
    try:
        yield
    finally:
        _REGISTERED.difference_update(mine)
