"""`lenstune uncertainty` end to end on the registered champion (a real micro model): the report
folder, and metrics + plots in MLflow under the model's source run."""

from __future__ import annotations

import json

import pytest

from tuner.cli.uncertainty import main as uncertainty_main

CHAMPION = "models:/lenstune-model_ii@champion"


@pytest.mark.parametrize("method", ["temperature", "conformal"])
def test_report_of_the_champion_is_logged_under_its_run(promoted, tracking, toy_data, other_data,
                                                        tmp_path, capsys, method):
    uri, client, _ = tracking
    out = tmp_path / method
    code = uncertainty_main(["--model", CHAMPION, "--method", method, "--data", str(toy_data),
                             "--shift-data", str(other_data), "--out", str(out),
                             "--tracking-uri", uri, "--alpha", "0.2"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "metrics.json").read_text())
    metrics = report["metrics"]
    assert report["method"] == method and 0 <= metrics["ece"] <= 1 and metrics["nll"] > 0
    assert "other/ood_auroc_entropy" in metrics and "other/ece" in metrics
    assert {"reliability.png", "risk_coverage.png", "entropy_in_vs_out.png"} <= {p.name for p in out.iterdir()}
    if method == "conformal":
        assert 0 <= metrics["conformal_coverage"] <= 1 and metrics["conformal_set_size"] >= 0
        assert (out / "conformal_set_sizes.png").is_file()

    source_run = client.get_model_version_by_alias("lenstune-model_ii", "champion").run_id
    assert source_run == promoted["results"][1].trial_run_id
    logged = client.get_run(source_run).data.metrics
    assert logged[f"uncertainty/{method}/ece"] == pytest.approx(metrics["ece"])
    assert logged[f"uncertainty/{method}/other/ood_auroc_entropy"] == pytest.approx(
        metrics["other/ood_auroc_entropy"])
    files = {a.path for a in client.list_artifacts(source_run, f"uncertainty/{method}")}
    assert {f"uncertainty/{method}/metrics.json", f"uncertainty/{method}/reliability.png"} <= files
    assert f"logged to MLflow run {source_run}" in capsys.readouterr().out


def test_methods_that_do_not_apply_fail_clearly(promoted, tracking, toy_data, tmp_path, capsys):
    uri = tracking[0]
    base = ["--model", CHAMPION, "--data", str(toy_data), "--tracking-uri", uri]
    assert uncertainty_main([*base, "--method", "mc_dropout", "--out", str(tmp_path / "a")]) == 2
    assert "MC dropout needs at least one dropout layer" in capsys.readouterr().err
    assert uncertainty_main([*base, "--method", "ensemble", "--out", str(tmp_path / "b")]) == 2
    assert "needs at least 2 models" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_nothing_is_written_when_there_is_nowhere_to_log(promoted, tracking, toy_data, tmp_path, capsys):
    import mlflow

    from tuner.registry.pyfunc import resolve_model_uri

    uri = tracking[0]
    local = mlflow.artifacts.download_artifacts(resolve_model_uri(CHAMPION, uri),
                                                dst_path=str(tmp_path / "model"), tracking_uri=uri)
    out = tmp_path / "r"
    base = ["--method", "temperature", "--data", str(toy_data), "--out", str(out)]
    assert uncertainty_main([*base, "--model", local, "--tracking-uri", uri]) == 2
    assert "no MLflow run to log into" in capsys.readouterr().err and not out.exists()

    missing = tmp_path / "missing.db"
    assert uncertainty_main([*base, "--model", CHAMPION, "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert "no MLflow database" in capsys.readouterr().err
    assert not out.exists() and not missing.exists()
