"""Results tables for experiment scripts: mean ± std over seeds, our numbers beside a paper's,
markdown tables with a header that names the command, seeds, budget and wall time, and
results files that carry no machine paths.

Every experiment script writes ``experiments/results/<name>/`` with ``README.md`` (the table),
``results.json`` (the raw numbers) and figures; the MSNVI and M2VAE scripts format their cells
with these helpers (``mean ± std``, and ``ours (paper)`` beside a paper's number)::

    >>> mean_std([1.0, 2.0, 3.0])
    (2.0, 1.0)
    >>> fmt((2.0, 1.0))
    '2.00 ± 1.00'
    >>> beside(101.2, 102.2)
    '101.20 (102.20)'
"""

from __future__ import annotations

import math
import os
import shlex
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from pyro_mmvae.io import atomic_write

Number = Optional[float]
MISSING = "–"


def mean_std(values: Iterable[Number]) -> Tuple[float, Optional[float]]:
    """Mean and sample standard deviation (``ddof=1``) of the finite ``values``; the std is
    None for fewer than two, the mean NaN for none."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), None
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def fmt(cell: Union[Number, Tuple[float, Optional[float]]], digits: int = 2) -> str:
    """A number, or a ``(mean, std)`` pair as ``"mean ± std"``; missing or non-finite as
    ``–``."""
    mean, std = cell if isinstance(cell, tuple) else (cell, None)
    if mean is None or not math.isfinite(mean):
        return MISSING
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def beside(ours, paper: Number, digits: int = 2) -> str:
    """``"ours (paper)"``: our cell (a number or ``(mean, std)``) with the paper's number in
    parentheses, or ours alone where the paper has none."""
    text = fmt(ours, digits)
    return text if paper is None else f"{text} ({fmt(paper, digits)})"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list:
    """The lines of a markdown table (cells converted with ``str``)."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return lines


def command_line(script: str, argv: Optional[Sequence[str]]) -> str:
    """``python <script> <argv...>`` as a shell-quoted command."""
    return " ".join(["python", script, *map(shlex.quote, argv or [])])


def machine_summary(threads: Optional[int] = None) -> str:
    """``"<n> CPU cores, <k> torch thread(s)"``: this machine's cores and ``threads`` (default
    this process's torch threads) — no host names or paths."""
    import torch

    threads = torch.get_num_threads() if threads is None else int(threads)
    return f"{os.cpu_count()} CPU cores, {threads} torch thread{'s' if threads > 1 else ''}"


def header(title: str, *, command: str, budget: str, seeds: Sequence[int], wall_s: float,
           machine: Optional[str] = None) -> list:
    """A results README's first lines: title, command, budget, seeds and wall time on
    ``machine`` (default :func:`machine_summary`)."""
    machine = machine_summary() if machine is None else machine
    return [f"# {title}", "", f"- Command: `{command}`", f"- Budget: {budget}",
            f"- Seeds: {', '.join(map(str, seeds))}",
            f"- Wall time: {wall_s:.0f} s ({machine})", ""]


def repository_relative(path: Union[str, Path], root: Union[str, Path]) -> str:
    """``path`` relative to ``root`` when inside it, else its name (results record no machine
    paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return Path(path).name


def write_results(out: Union[str, Path], payload: Mapping, readme: Sequence[str]) -> None:
    """Write ``results.json`` (``payload`` as strict JSON: non-finite numbers become
    ``null``) and ``README.md`` (the ``readme`` lines) in ``out``, each atomically."""
    from pyro_mmvae.train import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", payload)
    text = "\n".join(readme) + "\n"
    atomic_write(out / "README.md", lambda f: f.write(text), mode="w")
