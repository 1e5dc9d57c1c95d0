"""How a :class:`~pyro_mmvae.config.RunConfig` field is declared: its value check
(:class:`Check`, which is also the command line's argparse ``type=``), its argument group and
its help (:func:`option`)."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Check:
    """A field's values: ``ok(value)``, described as ``words`` (``"must be " + words``);
    :meth:`parse` is the command line's ``type=``."""

    words: str
    convert: Callable[[str], Any]
    ok: Callable[[Any], bool]

    def parse(self, text: str):
        try:
            value = self.convert(text)
        except ValueError:
            value = None
        if value is None or not self.ok(value):
            raise argparse.ArgumentTypeError(f"must be {self.words}, got {text}")
        return value


POSITIVE_INT = Check("a positive integer", int, lambda v: _is_int(v) and v >= 1)
NON_NEGATIVE_INT = Check("a non-negative integer", int, lambda v: _is_int(v) and v >= 0)
INTEGER = Check("an integer", int, _is_int)
POSITIVE = Check("a positive number", float, lambda v: _is_real(v) and 0 < v < math.inf)
NON_NEGATIVE = Check("a finite number >= 0", float,
                     lambda v: _is_real(v) and 0 <= v < math.inf)
FRACTION = Check("in [0, 1)", float, lambda v: _is_real(v) and 0 <= v < 1)
PATH = Check("a path", Path, lambda v: isinstance(v, (str, Path)))
TEXT = Check("text", str, lambda v: isinstance(v, str))
OPEN_FRACTION = Check("in (0, 1)", float, lambda v: _is_real(v) and 0 < v < 1)

GROUPS = ("data", "model and guide (defaults depend on --dataset)", "objective", "optimisation",
          "output and evaluation", "runtime")


def option(default, group: int, help: str, check: Optional[Check] = None, *,
           metavar: Optional[str] = None, runtime: Optional[str] = None,
           recorded: bool = True):
    """A :class:`RunConfig` field: ``group`` indexes :data:`GROUPS` (the command line's
    argument groups); ``runtime``: ``"resume"`` for the options a resume or an evaluation may
    set anew (saved otherwise), ``"command"`` for how one command runs (a resume takes them
    from its own command line); ``recorded``: written into ``config.json``."""
    meta = dict(group=GROUPS[group], help=help, check=check, metavar=metavar, runtime=runtime,
                recorded=recorded)
    return field(default=default, metadata=meta)
