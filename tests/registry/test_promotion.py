"""Champion/challenger promotion across three studies, checked through MlflowClient."""

from __future__ import annotations

import numpy as np
import pytest

from tuner.registry.promotion import PromotionError, promote_champion
from tuner.tracking.schema import CHALLENGER, CHAMPION
from tuner.tracking.schema import DECISION_TAG as TAG_DECISION

NAME = "lenstune-model_ii"


def test_champion_moves_only_for_a_better_model(promoted, tracking):
    _, client, _ = tracking
    first, second, third = promoted["results"]
    # the premise: the second study's model is better on the test split, the third worse
    assert second.candidate.auc_macro > first.candidate.auc_macro > third.candidate.auc_macro

    assert (first.decision, first.version, first.champion_version) == ("promoted", "1", None)
    assert (second.decision, second.version, second.champion_version) == ("promoted", "2", "1")
    assert (third.decision, third.version, third.champion_version) == ("kept", "3", "2")
    # the champion was re-evaluated on the same test split, not read from an old tag
    assert second.champion.auc_macro == pytest.approx(first.candidate.auc_macro)
    assert third.champion.auc_macro == pytest.approx(second.candidate.auc_macro)
    assert third.champion.dataset_digest == third.candidate.dataset_digest

    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == "2"
    assert str(client.get_model_version_by_alias(NAME, CHALLENGER).version) == "3"
    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{NAME}'")}
    assert sorted(versions) == ["1", "2", "3"]
    assert "champion stays v2" in versions["3"].tags[TAG_DECISION]
    assert "new champion" in versions["2"].tags[TAG_DECISION]
    # decisions printed with both numbers
    assert f"{third.champion.auc_macro:.4f}" in promoted["lines"][2]
    assert f"{third.candidate.auc_macro:.4f}" in promoted["lines"][2]


def test_asha_stopped_trials_are_never_promoted(promoted, tracking):
    _, client, _ = tracking
    first = promoted["results"][0]
    trial = client.get_run(first.trial_run_id)
    assert trial.data.tags["stop_reason"] == "completed"


def test_version_tags_hold_test_metrics_and_calibration(promoted, tracking):
    _, client, _ = tracking
    second = promoted["results"][1]
    version = client.get_model_version(NAME, "2")
    tags = version.tags
    assert float(tags["test_auc_macro"]) == pytest.approx(second.candidate.auc_macro, abs=1e-6)
    for key in ("test_ece", "test_nll", "test_acc", "test_auc_cdm", "test_confusion"):
        assert key in tags
    assert tags["lenstune.trial_run_id"] == second.trial_run_id
    assert tags["lenstune.family"] == "scratch"
    assert np.asarray(eval(tags["test_confusion"])).sum() == second.candidate.n_images
    # test metrics and plots also land in the trial run, for the report
    run = client.get_run(second.trial_run_id)
    assert run.data.metrics["test_auc_macro"] == pytest.approx(second.candidate.auc_macro)
    listed = {a.path for a in client.list_artifacts(second.trial_run_id, "evaluation")}
    assert {"evaluation/evaluation.png", "evaluation/roc.json"} <= listed


def test_promoting_twice_promotes_nothing_twice(promoted, tracking):
    uri, client, _ = tracking
    lines = []
    again = promote_champion("toy", tracking_uri=uri, echo=lines.append)
    assert again.decision == "unchanged" and again.version == "3"
    assert "nothing changed" in lines[0]
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 3
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == "2"


def test_clear_errors(promoted, tracking, tmp_path):
    uri, client, _ = tracking
    with pytest.raises(PromotionError, match="no MLflow experiment named 'nope'"):
        promote_champion("nope", tracking_uri=uri)
    other = client.create_experiment("toy-errors", artifact_location=str(tmp_path / "a"))
    study = client.create_run(other, tags={"lenstune.kind": "study"})
    client.create_run(other, tags={"mlflow.parentRunId": study.info.run_id,
                                   "lenstune.kind": "trial", "family": "scratch",
                                   "stop_reason": "asha_stopped"})
    with pytest.raises(PromotionError, match="no trial .* completed its budget"):
        promote_champion("toy-errors", tracking_uri=uri)
    with pytest.raises(PromotionError, match="is not in experiment 'toy-errors'"):
        promote_champion("toy-errors", tracking_uri=uri, study_run_id=promoted["results"][0].study_run_id)
    # the exit-code convention (tuner.cli): refused input 2, nothing to promote 1
    from tuner.cli.promote import main

    assert main(["--experiment", "nope", "--tracking-uri", uri]) == 2
    assert main(["--experiment", "toy-errors", "--tracking-uri", uri]) == 1


def test_promote_cli(promoted, tracking, tmp_path, capsys):
    from tuner.cli.promote import main

    uri, client, _ = tracking
    assert main(["--experiment", "toy", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "nothing changed" in out and "lenstune-model_ii v3" in out
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 3
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["--experiment", "toy", "--tracking-uri", missing]) == 2
    assert "no MLflow database" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_test_split_of_another_dataset_is_refused_before_writing(promoted, tracking, other_data):
    uri, client, _ = tracking
    before = len(client.search_model_versions(f"name = '{NAME}'"))
    with pytest.raises(PromotionError, match="was trained on dataset .* pass the study's --data"):
        promote_champion("toy", tracking_uri=uri, data_root=other_data)
    assert len(client.search_model_versions(f"name = '{NAME}'")) == before
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == "2"


def test_champion_calibration_is_recorded_next_to_its_auc(promoted, tracking):
    from tuner.cli.promote import format_result

    _, client, _ = tracking
    third = promoted["results"][2]  # champion v2 kept, re-measured on the same test split
    tags = client.get_model_version(NAME, "2").tags
    assert float(tags["test_ece"]) == pytest.approx(third.champion.ece, abs=1e-6)
    assert float(tags["test_nll"]) == pytest.approx(third.champion.nll, abs=1e-6)
    study = client.get_run(third.study_run_id)
    assert study.data.metrics["champion_test_auc_macro"] == pytest.approx(third.champion.auc_macro)
    assert study.data.metrics["champion_test_ece"] == pytest.approx(third.champion.ece)
    assert study.data.metrics["champion_test_nll"] == pytest.approx(third.champion.nll)
    assert study.data.tags["lenstune.champion"] == f"{NAME} v2"
    text = format_result(third)
    assert f"compared with champion v2: test AUC {third.champion.auc_macro:.4f}" in text
    assert f"ECE {third.champion.ece:.4f}, NLL {third.champion.nll:.4f}" in text
