"""`lenstune report` from MLflow alone: family leaderboard, ROC plot, Markdown page."""

from __future__ import annotations

import csv

import pytest

from tuner.cli.report import main as report_main


def best_run_exp(client, run_id: str) -> str:
    return client.get_run(run_id).info.experiment_id


def test_report_leaderboard_and_page(promoted, tracking, tmp_path, capsys):
    uri, client, _ = tracking
    out = tmp_path / "report"
    assert report_main(["--experiment", "toy", "--out", str(out), "--tracking-uri", uri]) == 0
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert [r["family"] for r in rows] == ["scratch"]
    row = rows[0]
    # the best completed trial over all studies is the second study's (val AUC 0.97)
    best = promoted["results"][1]
    assert row["run_id"] == best.trial_run_id
    assert float(row["best_val_auc"]) == 0.97
    assert abs(float(row["test_auc"]) - best.candidate.auc_macro) < 1e-5
    assert int(row["trials"]) == 4 and int(row["completed"]) == 3
    assert int(row["epochs"]) == 2 + 1 + 3 + 1
    # hours = wall time x resources of the trial's study (study 2: 2 CPUs, 0.5 GPU per trial)
    trials = client.search_runs([best_run_exp(client, best.trial_run_id)], "tags.`lenstune.kind` = 'trial'")
    hours = {r.info.run_id: (r.info.end_time - r.info.start_time) / 3.6e6 for r in trials}
    assert float(row["gpu_hours"]) == pytest.approx(0.5 * hours[best.trial_run_id])
    assert float(row["cpu_hours"]) == pytest.approx(sum(hours.values()) + hours[best.trial_run_id])
    assert "model.embed_dim=32" in row["params"]
    page = (out / "README.md").read_text()
    assert "](roc_families.png)" in page and "](leaderboard.csv)" in page
    assert "| scratch | 4 | 3 | 0.9700 |" in page
    assert "ROC curves drawn for: scratch" in page
    assert (out / "roc_families.png").stat().st_size > 1000


def test_report_refuses_to_overwrite_without_force(promoted, tracking, tmp_path, capsys):
    uri = tracking[0]
    out = tmp_path / "report"
    args = ["--experiment", "toy", "--out", str(out), "--tracking-uri", uri]
    assert report_main(args) == 0
    (out / "README.md").write_text("edited by hand")
    assert report_main(args) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (out / "README.md").read_text() == "edited by hand"
    assert report_main(args + ["--force"]) == 0
    assert "| scratch |" in (out / "README.md").read_text()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    assert report_main(["--experiment", "toy", "--out", str(other), "--tracking-uri", uri,
                        "--force"]) == 2
    assert "not a lenstune report" in capsys.readouterr().err
    assert (other / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_report_unknown_experiment(tracking, tmp_path, capsys):
    code = report_main(["--experiment", "nope", "--out", str(tmp_path / "r"),
                        "--tracking-uri", tracking[0]])
    assert code == 2 and "no MLflow experiment named 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_report_page_is_self_contained_and_logged_to_the_study(promoted, tracking, tmp_path):
    import re

    uri, client, _ = tracking
    study = promoted["results"][1].study_run_id
    out = tmp_path / "page"
    assert report_main(["--experiment", "toy", "--out", str(out), "--tracking-uri", uri,
                        "--study", study]) == 0
    page = (out / "index.html").read_text()
    for section in ("leaderboard", "roc", "curves", "calibration"):
        assert f"<section id='{section}'>" in page, section
    sources = re.findall(r"<img[^>]* src='([^']*)'", page)
    assert len(sources) >= 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page  # nothing fetched from a network
    assert "<td>scratch</td>" in page
    for png in ("roc_families.png", "roc_per_family.png", "learning_curves.png",
                "calibration_champion.png"):
        assert (out / png).stat().st_size > 1000, png
    logged = {a.path for a in client.list_artifacts(study, "report")}
    assert {"report/index.html", "report/leaderboard.csv", "report/README.md"} <= logged
    assert report_main(["--experiment", "toy", "--out", str(tmp_path / "x"), "--tracking-uri",
                        uri, "--study", "0" * 32]) == 2  # no such study run


@pytest.mark.parametrize("strategy, max_epochs, dotted, epochs", [
    ("asha-tpe", "None", "ASHA's rungs", [1, 2]),  # micro levit: 3 epochs, grace 1, rf 2
    ("pbt", "5", "PBT's perturbations", [1, 2, 3, 4]),  # every epoch, to --max-epochs 5
    ("random", "None", None, []),
])
def test_the_learning_curves_dot_where_the_studys_strategy_decides(tracking, tmp_path, strategy,
                                                                   max_epochs, dotted, epochs):
    import json

    from tuner.report.collect import decision_epochs
    from tuner.study.search_space import load_search_space

    client = tracking[1]
    exp_id = client.create_experiment(f"decisions-{strategy}",  # not the other tests' "toy"
                                      artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(exp_id).info.run_id
    client.log_param(run, "strategy", strategy)
    client.log_param(run, "max_epochs", max_epochs)
    folder = tmp_path / "search_space"
    folder.mkdir()
    space = load_search_space("levit", "micro")
    (folder / "levit.json").write_text(json.dumps(space.model_dump(mode="json"), default=str))
    client.log_artifacts(run, str(folder), "search_space")
    assert decision_epochs(client, run) == (dotted, {"levit": epochs})
