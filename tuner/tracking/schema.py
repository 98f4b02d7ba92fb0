"""Every name lenstune writes to MLflow and reads back: run tags, metrics, stop reasons,
artifact paths, registry aliases and model-version tags. Writers (the trainable, the study
driver, promotion) and readers (promotion, ``lenstune report``, ``lenstune predict``) use these
constants and nothing else, so a name is spelled once.

A study is one parent run (``KIND_TAG = KIND_STUDY``) with one nested run per trial
(``KIND_TAG = KIND_TRIAL``). See ``docs/tuning.md`` for what each holds.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------- the objective
OBJECTIVE = "val_auc_macro"  # the default objective, maximised: validation macro one-vs-rest AUC
OBJECTIVE_MODE = "max"
# --objective robust_auc: the mean (or, --robust-reduce worst, the lowest) validation macro AUC
# over the study's validation shift suite (tuner/robustness), evaluated every epoch
ROBUST_OBJECTIVE = "val_robust_auc"
OBJECTIVES = {"val_auc": OBJECTIVE, "robust_auc": ROBUST_OBJECTIVE}  # --objective -> metric


def best_of(metric: str) -> str:
    """The metric holding the best ``metric`` so far, logged with every epoch."""
    return f"best_{metric}"


BEST_OBJECTIVE = best_of(OBJECTIVE)  # "best_val_auc_macro"


def shift_auc_of(shift: str, split: str = "val") -> str:
    """Macro AUC on one shift set of the suite, e.g. ``val_auc_macro.noise_x2``."""
    return f"{split}_auc_macro.{shift}"

# ------------------------------------------------------------------------- per-epoch metrics
TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
VAL_ACC = "val_acc"
EPOCH_SECONDS = "epoch_seconds"
IMAGES_PER_SECOND = "images_per_second"
SIMULATION_SECONDS = "simulation_seconds"  # train_data fresh: simulating the epoch's training set
EPOCH = "epoch"  # the key of the epoch number in Ray Tune reports


def val_auc_of(class_name: str) -> str:
    """The per-class validation AUC metric, e.g. ``val_auc_cdm``."""
    return f"val_auc_{class_name}"


# ------------------------------------------------------------------------------ experiments
# MLflow 3's UI opens an experiment on the page this tag names (the GenAI overview when unset);
# "custom_model_development" is its value for model training: the runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# ---------------------------------------------------------------------------------- run tags
KIND_TAG = "lenstune.kind"
KIND_STUDY = "study"
KIND_TRIAL = "trial"
STUDY_TAG = "lenstune.study"  # the study (Ray Tune run) name, on the parent and every trial
PARENT_RUN_TAG = "mlflow.parentRunId"
FAMILY_TAG = "family"
OBJECTIVE_TAG = "lenstune.objective"  # study and trial runs: the metric the study maximised
TRIAL_ID_TAG = "trial_id"
STOP_REASON_TAG = "stop_reason"
STOP_MESSAGE_TAG = "stop_message"

# why a trial run ended, and the MLflow status each one ends it with
STOP_COMPLETED = "completed"  # ran its whole epoch budget: the only trials promotion considers
STOP_ASHA = "asha_stopped"  # stopped early by ASHA at a rung
STOP_HYPERBAND = "hyperband_stopped"  # stopped early by HyperBand (BOHB) at a milestone
STOP_FAILED = "failed"  # raised (NaN loss, out of memory, ...)
# the study stopped the family (tuner/study/stopping.py) while the trial was running
STOP_PLATEAU = "plateau_stopped"  # --plateau N: the best had not improved in N trials
STOP_BUDGET = "budget_stopped"  # --budget-gpu-hours: the trials' device time was spent
STOP_TIME = "time_budget_stopped"  # --time-budget: the family's wall-clock seconds were spent
STUDY_STOPS = (STOP_PLATEAU, STOP_BUDGET, STOP_TIME)
EARLY_STOPS = (STOP_ASHA, STOP_HYPERBAND)  # the strategy's scheduler ended the trial
STOP_REASONS = (STOP_COMPLETED, *EARLY_STOPS, STOP_FAILED, *STUDY_STOPS)
RUN_STATUS = {STOP_COMPLETED: "FINISHED", STOP_ASHA: "KILLED", STOP_HYPERBAND: "KILLED",
              STOP_FAILED: "FAILED",
              **{reason: "KILLED" for reason in STUDY_STOPS}}
# trials that ended on the study's terms (not failed): they count toward its samples, and a
# resumed study neither trains them again nor discards them
FINISHED_REASONS = (STOP_COMPLETED, *EARLY_STOPS, *STUDY_STOPS)

# the study run: how each family was searched and why it ended early (tuner/study/strategies.py)
STRATEGY_TAG = "lenstune.strategy"
STUDY_STOP_PREFIX = "lenstune.study_stop."  # + family: "<reason>: <message>"
WARM_START_PREFIX = "lenstune.warm_start."  # + family: what its first trials came from
EXTENDED_PREFIX = "lenstune.extended."  # + family: trials added by --extend, and the new total
PBT_EXPLOITS_TAG = "lenstune.pbt_exploits"  # trial run: times PBT had it copy a better trial
PBT_LAST_EXPLOIT_TAG = "lenstune.pbt_last_exploit"  # which trial, at which epoch, what changed

# where a trial ran (set when it starts and again when it is restored)
NODE_ID_TAG = "lenstune.node_id"
NODE_IP_TAG = "lenstune.node_ip"
ASSIGNED_RESOURCES_TAG = "lenstune.assigned_resources"
DEVICE_TAG = "lenstune.device"
WORKER_PID_TAG = "lenstune.worker_pid"  # the trial's worker process on its node

# trial runs: bookkeeping
RETRIES_TAG = "lenstune.retries"  # attempts after the first (a lost worker or node, an error)
RETRIED_AFTER_TAG = "lenstune.retried_after"  # what the previous attempt ended with
ORPHANED_TAG = "lenstune.orphaned"  # a run the resumed study does not know (then deleted)
CHECKPOINT_FALLBACK_TAG = "lenstune.checkpoint_fallback"  # damaged checkpoints skipped on restore
PLOTS_ERROR_TAG = "lenstune.plots_error"
TEST_DIGEST_TAG = "lenstune.test_digest"  # the test split its registered_model/evaluation is of

# study (parent) runs
FAMILIES_TAG = "lenstune.families"
DONE_TAG_PREFIX = "lenstune.done."  # + family, once that family's sub-study ended
RESOURCES_TAG_PREFIX = "lenstune.resources."  # + family: what a trial asked for, and why
ORPHAN_RUNS_DELETED_PREFIX = "lenstune.orphan_trial_runs_deleted."  # + family
ORPHAN_FOLDERS_DELETED_PREFIX = "lenstune.orphan_trial_folders_deleted."  # + family
IMPORTANCES_ERROR_PREFIX = "lenstune.importances_error."  # + family
FILES_LOGGED_TAG = "lenstune.files_logged"
CHAMPION_TAG = "lenstune.champion"  # "<model name> v<version>" after promotion
DATA_ROOT_TAG = "lenstune.data_root"
DATA_PARAM = "data"  # the study's dataset folder, a param of the parent run
REPORT_ARTIFACT = "report"  # `lenstune report`'s folder (index.html, ...) on the study run
ROBUSTNESS_ARTIFACT = "robustness"  # PNGs of a study's robustness checks, shown by the report
PARETO_ARTIFACT = "pareto"  # PNGs of a study's Pareto fronts, shown by the report

# ----------------------------------------------------------------------------------- artifacts
CHECKPOINT_ARTIFACT = "checkpoint"  # a trial's best-epoch checkpoint folder
CONFIG_ARTIFACT = "config.json"  # a trial's resolved config
REGISTERED_MODEL_ARTIFACT = "registered_model"  # the MLflow model folder a version points at
EVALUATION_ARTIFACT = "evaluation"  # test metrics.json, probs.npz, roc.json, evaluation.png; of
# a family's best trial, and inside every registered model folder

# ------------------------------------------------------------------------------------ registry
CHAMPION = "champion"  # alias of the best model of a registered model name
CHALLENGER = "challenger"  # alias of the newest version that did not become champion
ENSEMBLE = "ensemble"  # alias of the newest registered hyper-ensemble

# model-version tags
TRIAL_RUN_TAG = "lenstune.trial_run_id"
STUDY_RUN_TAG = "lenstune.study_run_id"
DECISION_TAG = "lenstune.decision"
VERSION_FAMILY_TAG = "lenstune.family"
DATASET_DIGEST_TAG = "lenstune.dataset_digest"
VERSION_VAL_AUC_TAG = "lenstune.val_auc_macro"
COMPARED_WITH_TAG = "lenstune.compared_with"
MODEL_KIND_TAG = "lenstune.model_kind"
ENSEMBLE_KEY_TAG = "lenstune.ensemble_key"  # "<study run id>:top<k>"
ENSEMBLE_MEMBERS_TAG = "lenstune.ensemble_members"  # JSON list of trial run ids
ENSEMBLE_WEIGHTS_TAG = "lenstune.ensemble_weights"  # JSON list, same order, sums to 1
VAL_NLL_TAG = "lenstune.val_nll"
MEMBER_VAL_NLL_TAG = "lenstune.member_val_nll"
