"""The hyper-ensemble of a study's top-k trials as its own registered model version."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from tests.registry.conftest import log_study
from tuner.data import load_split
from tuner.registry.ensembles import register_hyper_ensemble
from tuner.tracking.schema import ENSEMBLE
from tuner.tracking.schema import ENSEMBLE_MEMBERS_TAG as TAG_MEMBERS
from tuner.tracking.schema import ENSEMBLE_WEIGHTS_TAG as TAG_WEIGHTS
from tuner.tracking.schema import MODEL_KIND_TAG as TAG_KIND
from tuner.registry.promotion import PromotionError, promote_champion
from tuner.tracking.schema import CHAMPION
from tuner.models.io import predict_probs
from tuner.registry.pyfunc import load_registered, resolve_model_uri
from tuner.models.io import WeightedEnsemble
from tuner.uncertainty.ensemble import greedy_hyper_ensemble

MODEL = "lenstune-ens-toy"  # kept apart from the registered model the other promotion tests check


def sharpened(model: torch.nn.Module, factor: float) -> torch.nn.Module:
    """The same network with its logits multiplied by ``factor`` (over-confident); greedy
    selection mixes it with the original because neither alone has the best validation NLL."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.head.weight.mul_(factor)
        model.head.bias.mul_(factor)
    return model


@pytest.fixture(scope="module")
def ensemble_study(toy_data, micro_models, tracking, tmp_path_factory):
    uri, client, _ = tracking
    exp = client.create_experiment("toy-ensemble",
                                   artifact_location=str(tmp_path_factory.mktemp("ens-artifacts")))
    (strong, cfg), (weak, weak_cfg) = micro_models["strong"], micro_models["weak"]
    random, random_cfg = micro_models["random"]
    trials = [
        {"family": "scratch", "stop_reason": "completed", "val_auc": [0.95], "model": strong, "config": cfg},
        {"family": "scratch", "stop_reason": "completed", "val_auc": [0.94],
         "model": sharpened(strong, 8.0), "config": cfg},
        {"family": "scratch", "stop_reason": "completed", "val_auc": [0.90], "model": weak, "config": weak_cfg},
        {"family": "scratch", "stop_reason": "asha_stopped", "val_auc": [0.99],
         "model": random, "config": random_cfg},
    ]
    sid = log_study(client, exp, "ens", toy_data, trials)
    lines: list[str] = []
    single = promote_champion("toy-ensemble", tracking_uri=uri, model_name=MODEL, echo=lines.append)
    ensemble = register_hyper_ensemble("toy-ensemble", top_k=3, tracking_uri=uri, model_name=MODEL,
                                       echo=lines.append)
    return {"sid": sid, "single": single, "ensemble": ensemble, "lines": lines, "trials": trials}


def _trial_ids(client, sid):
    runs = client.search_runs([client.get_run(sid).info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{sid}'")
    return {r.data.tags["trial_id"]: r.info.run_id for r in runs}


def test_members_are_the_greedy_pick_among_completed_trials(ensemble_study, tracking, toy_data):
    uri, client, _ = tracking
    ens = ensemble_study["ensemble"]
    version = client.get_model_version_by_alias(MODEL, ENSEMBLE)
    assert str(version.version) == ens.version == "2" and version.run_id == ensemble_study["sid"]
    ids = _trial_ids(client, ensemble_study["sid"])
    members, weights = json.loads(version.tags[TAG_MEMBERS]), json.loads(version.tags[TAG_WEIGHTS])
    assert version.tags[TAG_KIND] == "hyper_ensemble"
    # the same selection computed here from the three best completed trials' validation probs
    val = load_split(toy_data, "val")
    probs = [predict_probs(t["model"], val.images.numpy(), 32) for t in ensemble_study["trials"][:3]]
    _, expected = greedy_hyper_ensemble(probs, val.labels.numpy(), 3)
    order = [ids["ens_00000"], ids["ens_00001"], ids["ens_00002"]]
    assert dict(zip(members, weights)) == pytest.approx(
        {rid: w for rid, w in zip(order, expected) if w > 0}, abs=1e-6)
    assert len(members) >= 2 and ids["ens_00003"] not in members  # never the ASHA-stopped trial
    assert sum(weights) == pytest.approx(1.0)


def test_registered_ensemble_loads_weights_only_and_averages_members(ensemble_study, tracking, toy_data):
    import mlflow

    uri, client, _ = tracking
    model, config = load_registered(f"models:/{MODEL}@{ENSEMBLE}", tracking_uri=uri)
    assert isinstance(model, WeightedEnsemble) and config.is_ensemble
    images = load_split(toy_data, "test").images[:8].numpy().copy()
    ids = _trial_ids(client, ensemble_study["sid"])
    nets = {ids[f"ens_{i:05d}"]: t["model"] for i, t in enumerate(ensemble_study["trials"])}
    expected = sum(m.weight * predict_probs(nets[m.run_id], images, 32) for m in config.members)
    np.testing.assert_allclose(predict_probs(model, images, config.img_size), expected, atol=1e-5)
    frame = mlflow.pyfunc.load_model(resolve_model_uri(f"models:/{MODEL}@{ENSEMBLE}", uri)).predict(images)
    np.testing.assert_allclose(frame.filter(like="prob_").to_numpy(), expected, atol=1e-5)
    # evaluated on the test split like a single model
    tags = client.get_model_version(MODEL, "2").tags
    assert float(tags["test_auc_macro"]) == pytest.approx(ensemble_study["ensemble"].candidate.auc_macro)
    assert {"test_ece", "test_nll", "test_confusion"} <= set(tags)


def test_ensemble_competes_for_champion_by_test_auc(ensemble_study, tracking):
    uri, client, _ = tracking
    single, ens = ensemble_study["single"], ensemble_study["ensemble"]
    assert ens.champion_version == single.version == "1"
    assert ens.champion.auc_macro == pytest.approx(single.candidate.auc_macro)
    better = ens.candidate.auc_macro > single.candidate.auc_macro
    assert ens.decision == ("promoted" if better else "kept")
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == ("2" if better else "1")
    assert f"{ens.candidate.auc_macro:.4f}" in ensemble_study["lines"][-1]
    assert "hyper-ensemble" in ensemble_study["lines"][-1] or better
    # the champion's calibration is recorded next to its AUC on the study run
    metrics = client.get_run(ensemble_study["sid"]).data.metrics
    champ = ens.candidate if better else ens.champion
    assert metrics["champion_test_auc_macro"] == pytest.approx(champ.auc_macro)
    assert metrics["champion_test_ece"] == pytest.approx(champ.ece)
    assert metrics["champion_test_nll"] == pytest.approx(champ.nll)


def test_registering_again_changes_nothing(ensemble_study, tracking):
    uri, client, _ = tracking
    again = register_hyper_ensemble("toy-ensemble", top_k=3, tracking_uri=uri, model_name=MODEL,
                                    echo=lambda _: None)
    assert again.decision == "unchanged" and again.version == "2"
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 2


def test_single_member_selection_and_too_few_trials_are_refused(ensemble_study, toy_data, micro_models,
                                                                tracking, tmp_path):
    uri, client, _ = tracking
    exp = client.create_experiment("toy-ensemble-one", artifact_location=str(tmp_path / "a"))
    (strong, cfg), (weak, weak_cfg) = micro_models["strong"], micro_models["weak"]
    log_study(client, exp, "one", toy_data, [
        {"family": "scratch", "stop_reason": "completed", "val_auc": [0.95], "model": strong, "config": cfg},
        {"family": "scratch", "stop_reason": "completed", "val_auc": [0.90], "model": strong, "config": cfg},
        {"family": "scratch", "stop_reason": "asha_stopped", "val_auc": [0.9], "model": weak, "config": weak_cfg},
    ])
    before = len(client.search_model_versions(f"name = '{MODEL}'"))
    with pytest.raises(PromotionError, match="kept only trial .* no ensemble is registered"):
        register_hyper_ensemble("toy-ensemble-one", top_k=2, tracking_uri=uri, model_name=MODEL)
    with pytest.raises(PromotionError, match="top_k >= 2"):
        register_hyper_ensemble("toy-ensemble-one", top_k=1, tracking_uri=uri, model_name=MODEL)
    exp2 = client.create_experiment("toy-ensemble-few", artifact_location=str(tmp_path / "b"))
    log_study(client, exp2, "few", toy_data, [
        {"family": "scratch", "stop_reason": "completed", "val_auc": [0.95], "model": strong, "config": cfg}])
    with pytest.raises(PromotionError, match="at least 2 completed trials; study .* has 1"):
        register_hyper_ensemble("toy-ensemble-few", top_k=3, tracking_uri=uri, model_name=MODEL)
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == before


def test_predict_with_ensemble_uncertainty(ensemble_study, tracking, toy_data, tmp_path, capsys):
    import pandas as pd

    from tuner.cli.predict import main as predict_main

    uri = tracking[0]
    path = tmp_path / "x.npy"
    np.save(path, load_split(toy_data, "test").images[:9].numpy().copy())
    base = [str(path), "--model", f"models:/{MODEL}@{ENSEMBLE}", "--tracking-uri", uri]
    assert predict_main([*base, "--out", str(tmp_path / "e.csv"), "--uncertainty", "ensemble"]) == 0
    frame = pd.read_csv(tmp_path / "e.csv")
    assert (frame["mutual_information"] >= 0).all() and (frame["mutual_information"] > 0).any()
    assert predict_main([*base, "--out", str(tmp_path / "n.csv")]) == 0
    np.testing.assert_allclose(frame.filter(like="prob_").to_numpy(),
                               pd.read_csv(tmp_path / "n.csv").filter(like="prob_").to_numpy(), atol=1e-6)
    assert predict_main([*base, "--out", str(tmp_path / "l.csv"), "--uncertainty", "laplace"]) == 2
    assert "applies to a single network" in capsys.readouterr().err


def test_uncertainty_report_of_the_registered_ensemble(ensemble_study, tracking, toy_data, tmp_path,
                                                       capsys):
    from tuner.cli.uncertainty import main as uncertainty_main

    uri, client, _ = tracking
    base = ["--model", f"models:/{MODEL}@{ENSEMBLE}", "--data", str(toy_data), "--tracking-uri", uri]
    assert uncertainty_main([*base, "--method", "ensemble", "--out", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "metrics.json").read_text())["metrics"]
    members = len(json.loads(client.get_model_version(MODEL, "2").tags[TAG_MEMBERS]))
    assert report["forward_passes_per_image"] == members and report["mean_mutual_info"] > 0
    logged = client.get_run(ensemble_study["sid"]).data.metrics  # the version's source run
    assert logged["uncertainty/ensemble/nll"] == pytest.approx(report["nll"])
    assert uncertainty_main([*base, "--method", "laplace", "--out", str(tmp_path / "l")]) == 2
    assert "applies to a single network" in capsys.readouterr().err


def test_the_ensemble_keeps_to_the_promotion_limits_member_by_member_and_in_sum(
        ensemble_study, toy_data, micro_models, tracking, tmp_path):
    """--max-params/--max-latency-ms: members only from trials within the limits, and the
    ensemble (its members run one after the other) within them in sum, or nothing."""
    uri, client, _ = tracking
    exp = client.create_experiment("toy-ensemble-limits", artifact_location=str(tmp_path / "a"))
    (strong, cfg), (weak, weak_cfg) = micro_models["strong"], micro_models["weak"]
    log_study(client, exp, "limits", toy_data, [
        {"family": "scratch", "stop_reason": "completed", "val_auc": [0.95], "model": strong,
         "config": cfg, "costs": {"params": 1000, "latency_ms": 1.0}},
        {"family": "scratch", "stop_reason": "completed", "val_auc": [0.94],
         "model": sharpened(strong, 8.0), "config": cfg, "costs": {"params": 1000, "latency_ms": 1.0}},
        # the best trial, but over the limit: never a member
        {"family": "scratch", "stop_reason": "completed", "val_auc": [0.99], "model": weak,
         "config": weak_cfg, "costs": {"params": 9000, "latency_ms": 1.0}},
    ])
    before = len(client.search_model_versions(f"name = '{MODEL}'"))
    lines = []
    with pytest.raises(PromotionError, match=r"the hyper-ensemble of 2 members has params 2000 "
                       r"\(summed over its members, which run one after the other\) > 1500"):
        register_hyper_ensemble("toy-ensemble-limits", top_k=3, tracking_uri=uri, model_name=MODEL,
                                limits={"params": 1500}, echo=lines.append)
    assert "promotion: 2 of 3 completed trials have params <= 1500" in lines[0]
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == before
    result = register_hyper_ensemble("toy-ensemble-limits", top_k=3, tracking_uri=uri,
                                     model_name=MODEL, limits={"params": 2500}, compete=False,
                                     echo=lambda _: None)
    members = json.loads(client.get_model_version(MODEL, result.version).tags[TAG_MEMBERS])
    heavy = [r for r in client.search_runs([exp]) if r.data.metrics.get("params") == 9000]
    assert len(members) == 2 and heavy[0].info.run_id not in members
