"""The library's models and guides are ``pyro_mmvae.models`` / ``pyro_mmvae.guides``: a user's own
``models.py`` and ``guides.py`` in the working folder change nothing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

USER_FILE = "raise RuntimeError('the user\\'s own {name}.py was imported')\n"


@pytest.fixture
def user_folder(tmp_path):
    for name in ("models", "guides"):
        (tmp_path / f"{name}.py").write_text(USER_FILE.format(name=name))
    return tmp_path


def run(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_library_imports_its_own_packages_beside_user_files(user_folder):
    code = ("import pyro_mmvae.cli, pyro_mmvae.models as m, pyro_mmvae.guides as g\n"
            "from pyro_mmvae.guides import MultimodalGuide, PoE\n"
            "from pyro_mmvae.models import MultimodalModel, LinearGaussianModel\n"
            "print(m.__name__, g.__name__)\n")
    out = run([sys.executable, "-c", code], user_folder)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["pyro_mmvae.models", "pyro_mmvae.guides"]
    # the user's files are what a plain `import models` finds there, as they should be
    out = run([sys.executable, "-c", "import models"], user_folder)
    assert "the user's own models.py" in out.stderr


@pytest.mark.slow
def test_cli_runs_from_a_folder_with_user_models_and_guides(user_folder):
    exe = Path(sys.executable).with_name("pyro-mmvae")
    args = [str(exe)] if exe.exists() else [sys.executable, "-m", "pyro_mmvae.cli"]
    out = run(args + ["train", "--help"], user_folder)
    assert out.returncode == 0, out.stderr
    assert "--aggregator" in out.stdout


def test_no_top_level_models_or_guides_is_installed(tmp_path):
    code = "import importlib.util as u; print(u.find_spec('models'), u.find_spec('guides'))"
    out = run([sys.executable, "-c", code], tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "None"]


def test_the_core_imports_nothing_from_models_or_guides():
    """DESIGN.md: infer/, eval/, diagnostics/, data/, train/ and the core modules work on any
    model and guide that follow the protocol, so they import neither package built on top of
    them, nor the application layer (run configuration, registry, runs, report, CLI)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "pyro_mmvae"
    core = [p for d in ("infer", "eval", "diagnostics", "data", "train")
            for p in (root / d).rglob("*.py")]
    core += [root / f for f in ("nn.py", "protocol.py", "checks.py", "io.py", "params.py",
                                "sharding.py", "optim.py")]
    assert all(p.is_file() for p in core) and len(core) > 40
    offenders = []
    for path in core:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            above = [["pyro_mmvae", m]
                     for m in ("models", "guides", "config", "options", "registry", "runs",
                               "report", "cli")]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[:2] in above]
    assert not offenders


def test_experiments_and_benchmarks_edit_no_sys_path():
    """Scripts run from the repository root as ``python experiments/<name>.py`` with the
    package installed: their own folder is on sys.path, nothing else is needed."""
    root = Path(__file__).resolve().parents[1]
    offenders = [str(p.relative_to(root)) for folder in ("experiments", "benchmarks")
                 for p in sorted((root / folder).glob("*.py"))
                 if "sys.path" in p.read_text()]
    assert offenders == []


def test_no_test_module_imports_another():
    """Shared fixtures live in conftest.py and helper modules, not in test modules."""
    import ast

    root = Path(__file__).resolve().parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(root)}: {n}" for n in names
                          if n.split(".")[-1].startswith("test_")]
    assert offenders == []
