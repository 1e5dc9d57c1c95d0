"""Sphinx configuration of the pyro_mmvae documentation.

Build (from the repository root; ``-W`` turns every warning into an error, as CI does)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Before the build reads the pages, :func:`write_cli_help` (connected in :func:`setup`) writes
the ``--help`` text of every ``pyro-mmvae`` command to ``docs/_generated/cli_<command>.txt``
(what ``cli.rst`` includes), so the CLI page is always the parser's own text.
"""

import contextlib
import io
import logging
import os
from pathlib import Path

import pyro_mmvae

# ArviZ logs at INFO level which of its preview packages are missing when autodoc imports it
logging.getLogger("arviz.preview").setLevel(logging.WARNING)

HERE = Path(__file__).resolve().parent
GENERATED = HERE / "_generated"
CLI_COMMANDS = ("", "train", "evaluate", "generate")

project = "pyro_mmvae"
author = "the pyro_mmvae authors"
copyright = "the pyro_mmvae authors, Apache-2.0"
release = version = pyro_mmvae.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]
root_doc = "index"
source_suffix = {".rst": "restructuredtext"}

autodoc_default_options = {"members": True, "member-order": "bysource",
                           "show-inheritance": True}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # not torch's or Pyro's docstrings of overridden methods
autoclass_content = "class"  # the :param: fields are in the class docstrings
add_module_names = False
python_use_unqualified_type_names = True

# MathJax is loaded from its CDN by a reader's browser; the build itself needs no network.
html_theme = "furo"
html_title = f"pyro_mmvae {release}"
html_static_path = []


def write_cli_help(directory: Path = GENERATED) -> None:
    """Write ``pyro-mmvae [COMMAND] --help`` of every command into ``directory``."""
    from pyro_mmvae.cli import main

    directory.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "96"  # argparse wraps the help at $COLUMNS - 2
    try:
        for command in CLI_COMMANDS:
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
                main(([command] if command else []) + ["--help"])
            name = f"cli_{command or 'main'}.txt"
            text = out.getvalue()
            path = directory / name
            if not path.exists() or path.read_text() != text:  # keep the build incremental
                path.write_text(text)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def setup(app):
    """Sphinx hook: write the CLI help texts before the build reads the pages."""
    app.connect("builder-inited", lambda app: write_cli_help())
