import json
import math

import torch

from pyro_mmvae.tables import (beside, command_line, fmt, header, machine_summary,
                               markdown_table, mean_std, repository_relative, write_results)


def test_mean_std_is_the_sample_std_of_the_finite_values():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([4.0, None, float("nan")]) == (4.0, None)  # one value: no std
    mean, std = mean_std([])
    assert math.isnan(mean) and std is None


def test_cells():
    assert fmt((2.0, 1.0)) == "2.00 ± 1.00"
    assert fmt(3.14159, 3) == "3.142"
    assert fmt(None) == fmt(float("nan")) == fmt((float("inf"), None)) == "–"
    assert beside(101.2, 102.2) == "101.20 (102.20)"
    assert beside((1.0, 0.5), None) == "1.00 ± 0.50"
    assert beside(None, 3.0) == "– (3.00)"


def test_markdown_table_and_header():
    lines = markdown_table(["a", "b"], [[1, "x"], [2, "y"]])
    assert lines == ["| a | b |", "|---|---|", "| 1 | x |", "| 2 | y |"]
    assert command_line("experiments/x.py", ["--out", "a b"]) == (
        "python experiments/x.py --out 'a b'")
    head = header("T", command="python x.py", budget="3 epochs", seeds=[0, 1], wall_s=12.4,
                  machine="one GPU")
    assert head[0] == "# T" and "- Seeds: 0, 1" in head and "- Wall time: 12 s (one GPU)" in head
    torch.set_num_threads(1)  # the suite's setting
    assert machine_summary().endswith("CPU cores, 1 torch thread")
    assert header("T", command="c", budget="b", seeds=[0], wall_s=1)[-2].endswith(
        f"({machine_summary()})")


def test_results_record_no_machine_paths(tmp_path):
    root = tmp_path / "repo"
    (root / "experiments").mkdir(parents=True)
    assert repository_relative(root / "experiments", root) == "experiments"
    assert repository_relative(tmp_path / "elsewhere" / "out", root) == "out"
    write_results(root / "out", {"x": 1, "y": float("nan")}, ["# T", "body"])
    # strict JSON: NaN becomes null
    assert json.loads((root / "out" / "results.json").read_text(),
                      parse_constant=lambda c: 1 / 0) == {"x": 1, "y": None}
    assert (root / "out" / "README.md").read_text() == "# T\nbody\n"
