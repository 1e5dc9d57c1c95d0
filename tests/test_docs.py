"""The documentation's tutorials run, and the site's pages show every one of them; the README's
commands are CI's, its quick start runs and its links lead to files of the repository.

Each tutorial under ``docs/tutorials/`` is a script with ``main(argv)``; here each runs with a
small budget (in process, under the suite's float64 / validation defaults) and its output is
checked. The build itself (``python -m sphinx -W --keep-going -b html docs docs/_build/html``)
runs in ``.ci/run`` after the tests.
"""

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
TUTORIALS = DOCS / "tutorials"


def load_tutorial(name):
    path = TUTORIALS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tutorial_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_model_trains_and_cross_generates(capsys):
    history = load_tutorial("custom_model").main(["--epochs", "4", "--num-points", "400"])
    assert history["epoch"] == [1, 2, 3, 4]
    assert all(math.isfinite(v) for v in history["loss"])
    assert history["loss"][-1] < history["loss"][0] - 1.0  # it learns
    out = capsys.readouterr().out
    assert "epoch   4: loss per data point" in out
    # x_m1 (9 dimensions) generated for 5 points from x_m0 alone
    assert re.search(r"x_m1 generated from x_m0: \(1, 5, \d+\)", out)


@pytest.mark.slow
def test_missing_modalities_train_and_conditioning_helps(capsys):
    summary = load_tutorial("missing_modalities").main(
        ["--epochs", "30", "--num-points", "400", "--batch-size", "25", "--num-samples", "64"])
    assert summary["loss"][-1] < summary["loss"][0]
    assert summary["scored"] > 0
    # the importance-sampled estimates agree with the model's closed forms
    assert summary["conditional"] == pytest.approx(summary["exact_conditional"], abs=0.1)
    assert summary["marginal"] == pytest.approx(summary["exact_marginal"], abs=0.1)
    # x_m0 carries information about the shared latent, hence about x_m1
    assert summary["exact_conditional"] > summary["exact_marginal"] + 0.3
    out = capsys.readouterr().out
    for m in ("m0", "m1", "m2"):
        observed = int(re.search(rf"{m}: observed for (\d+) of 400", out).group(1))
        assert 150 < observed < 350  # about 40% missing


def test_arviz_tutorial_matches_the_exact_posterior(tmp_path, capsys):
    summary = load_tutorial("arviz_posterior").main(
        ["--epochs", "10", "--num-points", "400", "--num-samples", "100",
         "--output-dir", str(tmp_path)])
    assert summary["loss"][-1] < summary["loss"][0]
    assert {"posterior", "posterior_predictive", "log_likelihood", "sample_stats",
            "observed_data", "constant_data"} <= set(summary["groups"])
    assert summary["max_mean_error"] < 1.0  # guide means near the closed-form posterior's
    assert all(math.isfinite(k) for k in summary["khat"])
    assert (tmp_path / "posterior.png").stat().st_size > 0
    assert "Pareto k-hat per data point" in capsys.readouterr().out


@pytest.mark.slow
def test_paper_table_tutorial_writes_table1(tmp_path, capsys):
    table = load_tutorial("paper_table").main(["--output-dir", str(tmp_path)])
    assert table == tmp_path / "table1.md"
    text = table.read_text()
    assert "\n| PoE | " in text and "\n| SumPooling | " in text
    assert "Hirt et al. 2024, Table 1" in text and "(paper only)" in text  # the paper's rows
    assert (tmp_path / "results.json").stat().st_size > 0
    assert "\n| SumPooling | " in capsys.readouterr().out


@pytest.mark.slow  # a fresh interpreter imports torch and pyro: seconds
def test_a_tutorial_runs_as_a_script_from_the_repository_root():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "docs/tutorials/custom_model.py", "--epochs", "1",
                          "--num-points", "200"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "epoch   1: loss per data point" in out.stdout


def test_every_tutorial_is_shown_on_a_page_of_the_site():
    pages = {p.stem for p in TUTORIALS.glob("*.rst")} - {"index"}
    scripts = {p.stem for p in TUTORIALS.glob("*.py")}
    included = set()
    for page in TUTORIALS.glob("*.rst"):
        included |= {Path(s).stem for s in
                     re.findall(r"literalinclude:: (\S+\.py)", page.read_text())}
    assert scripts <= included, scripts - included
    toctree = (TUTORIALS / "index.rst").read_text()
    assert all(re.search(rf"^   {p}$", toctree, re.M) for p in pages), pages


def test_the_cli_page_includes_the_parsers_own_help(tmp_path):
    spec = importlib.util.spec_from_file_location("docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    conf.write_cli_help(tmp_path)
    train = (tmp_path / "cli_train.txt").read_text()
    assert train.startswith("usage: pyro-mmvae train")
    assert "--aggregator" in train and "--bound" in train
    cli_page = (DOCS / "cli.rst").read_text()
    for command in conf.CLI_COMMANDS:
        name = f"cli_{command or 'main'}.txt"
        assert (tmp_path / name).read_text().startswith("usage: pyro-mmvae")
        assert f"literalinclude:: _generated/{name}" in cli_page


# --------------------------------------------------------------------------- README

INSTALL_AND_TRAIN = ('python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" '
                     '&& pyro-mmvae train')
TEST_COMMAND = ". .venv/bin/activate && python -m pytest"


def readme_blocks(language):
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.S | re.M)


def test_the_readme_gives_the_two_commands_that_ci_runs():
    assert readme_blocks("bash")[:2] == [INSTALL_AND_TRAIN + "\n", TEST_COMMAND + "\n"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in ci and "\npython -m pytest\n" in ci
    # the documentation build the README names is CI's, less CI's -q -W --keep-going
    assert "python -m sphinx -b html docs docs/_build/html" in README.read_text()
    assert "python -m sphinx -q -W --keep-going -b html docs docs/_build/html" in ci


def test_the_readme_links_lead_to_files_of_the_repository():
    links = re.findall(r"\]\(([^)#]+)\)", README.read_text())
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert len(local) > 20
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


def test_the_readme_quick_start_trains_and_scores(capsys):
    (code,) = readme_blocks("python")
    # the same program on a smaller budget
    for full, small in (("epochs=20", "epochs=2"), ("num_samples=100", "num_samples=8")):
        assert full in code
        code = code.replace(full, small)
    namespace = {"__name__": "readme_quick_start"}
    exec(compile(code, str(README), "exec"), namespace)
    history, cond = namespace["history"], namespace["cond"]
    assert history["epoch"] == [1, 2] and all(math.isfinite(v) for v in history["loss"])
    scored = namespace["mask"]["b"]  # log p(x_b | x_a), log p(x_b) where a is missing
    assert cond.shape == (2000,) and cond[scored].isfinite().all() and cond[~scored].isnan().all()
