"""The search-efficiency benchmark's summary, recomputed from saved per-trial curves
(``bench/search_efficiency.py --pool``), which the results file's pooled verdict rests on."""

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "search_efficiency.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("search_efficiency", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(method, seed, *curves):
    return {"method": method, "seed": seed, "curves": [{"config": {}, "val_auc": c} for c in curves]}


def test_pool_recomputes_best_auc_and_epochs_per_seed(bench, tmp_path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b.json.gz"
    first.write_text(json.dumps([_run("asha_tpe", 0, [0.7, 0.9], [0.6]),
                                 _run("random_fifo", 0, [0.7, 0.8, 0.91, 0.92], [0.5] * 4)]))
    with gzip.open(second, "wt") as f:
        json.dump([_run("asha_tpe", 1, [0.8]), _run("random_fifo", 1, [0.85] * 4, [0.5] * 4)], f)
    assert bench.main(["--pool", str(first), str(second), "--out", str(tmp_path / "o.md")]) == 0
    table = (tmp_path / "o.md").read_text()
    # seed 0: 0.90 vs 0.92, 3 of 8 epochs; seed 1: 0.80 vs 0.85, 1 of 8
    assert "| asha_tpe | 0.8500 | 2.0 | -0.0350 (-0.0200, -0.0500) | 0.250 (0.375, 0.125) | not met |" in table
    assert "| random_fifo | 0.8850 | 8.0 |" in table


def test_pool_refuses_a_seed_twice_or_without_random_search(bench, tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([_run("asha_tpe", 0, [0.7]), _run("random_fifo", 0, [0.7])]))
    with pytest.raises(SystemExit, match="asha_tpe seed 0 is in more than one file"):
        bench.main(["--pool", str(path), str(path)])
    path.write_text(json.dumps([_run("asha_tpe", 3, [0.7])]))
    with pytest.raises(SystemExit, match=r"no random_fifo run for seeds \[3\]"):
        bench.main(["--pool", str(path)])
