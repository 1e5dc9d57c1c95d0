"""Reproducing a paper table: Table 1 of Hirt et al. (arXiv:2309.00380), the illustrative
bi-modal linear-Gaussian example, with the experiment script ``experiments/linear_gaussian.py``.

Run from the repository root::

    python docs/tutorials/paper_table.py --output-dir table1-demo          # seconds (--quick)
    python docs/tutorials/paper_table.py --output-dir table1 --full        # the full budget

Every experiment script has ``main(argv)`` with the options of its command line, a ``--quick``
smoke budget and an ``--output-dir``; it writes its tables (``table1.md``: our numbers beside
the paper's, with the command and budget in the header), the raw numbers (``results.json``)
and figures there. This tutorial runs it as a subprocess; from the shell it is
``python experiments/linear_gaussian.py --tables 1 --output-dir DIR``.
"""

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments" / "linear_gaussian.py"


def main(argv=None):
    """Run Table 1 and print it; return the path of ``table1.md``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--full", action="store_true",
                   help="the script's full budget (all aggregators and bounds, 3 seeds)")
    args = p.parse_args(argv)

    options = ["--tables", "1", "--output-dir", str(args.output_dir)]
    if not args.full:  # two rows, one bound, the smoke budget
        options += ["--quick", "--aggregators", "poe", "sumpooling", "--bounds", "masked"]
    # the script as from the shell (it imports its sibling modules from experiments/)
    subprocess.run([sys.executable, str(SCRIPT), *options], check=True)
    table = args.output_dir / "table1.md"
    print(table.read_text())
    return table


if __name__ == "__main__":
    main()
