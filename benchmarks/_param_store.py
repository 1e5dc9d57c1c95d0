"""Each benchmark variant's own Pyro param store, switched with Pyro's public API.

Variants timed side by side build the same library modules, so their parameters have the same
names; each keeps its own store state (``ParamStoreDict.get_state`` / ``set_state``), and
:meth:`ParamStoreSlot.activate` puts a variant's state into the global store (saving the one it
replaces) only when another variant's is there: consecutive steps of one variant pay nothing.
"""

from __future__ import annotations

import pyro


class ParamStoreSlot:
    """One variant's param-store state."""

    _active = None  # the slot whose state the global store holds now

    def __init__(self):
        self.state = {"params": {}, "constraints": {}}

    def activate(self) -> None:
        """Make this slot's parameters the global store's."""
        active = ParamStoreSlot._active
        if active is self:
            return
        store = pyro.get_param_store()
        if active is not None:
            active.state = store.get_state()
        store.clear()
        store.set_state(self.state)
        ParamStoreSlot._active = self

    @staticmethod
    def release() -> None:
        """Save the active slot's state and leave the global store empty."""
        active = ParamStoreSlot._active
        store = pyro.get_param_store()
        if active is not None:
            active.state = store.get_state()
        store.clear()
        ParamStoreSlot._active = None
