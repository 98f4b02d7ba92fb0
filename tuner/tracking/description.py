"""The description of a study run, shown at the top of its page in the MLflow UI (the run's
``mlflow.note.content`` tag, Markdown): what was tuned, on which data, and where the champion
is. Written when the study starts and completed after promotion.
"""

from __future__ import annotations

from tuner.tracking import schema

NOTE_TAG = "mlflow.note.content"  # MLflow's run description
CHAMPION_HEADING = "**Champion:**"
UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def experiment_page(experiment_id: str, base: str = UI) -> str:
    """The MLflow UI's runs table of an experiment. MLflow 3.17's UI opens an experiment on the
    page of its sidebar switch (GenAI or Model training, remembered by the browser; GenAI at
    first); ``workflowType=machine_learning`` selects Model training, whose experiment page is
    the runs table, the study's run with its trials nested."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def study_description(study_name: str, *, families: list[str], profile: str, samples: int,
                      max_epochs: int | None, dataset_name: str, dataset_source: str,
                      preset: str, image_size: int, digest: str) -> str:
    """Markdown: the study, its families and budget, its dataset; the champion paragraph says
    how to promote until promotion replaces it."""
    epochs = f"up to {max_epochs} epochs" if max_epochs else "each family's epoch budget"
    return "\n\n".join([
        f"**Study `{study_name}`:** tuned {', '.join(f'`{f}`' for f in families)} "
        f"(search-space profile `{profile}`, {samples} trials per family, {epochs} a trial), "
        f"Optuna TPE proposing and ASHA stopping on `{schema.OBJECTIVE}` (max). One nested run "
        f"per trial; its `{schema.STOP_REASON_TAG}` tag says why it ended.",
        f"**Data:** `{dataset_name}` (preset `{preset}`, {image_size} px, digest "
        f"`{digest[:12]}`), at `{dataset_source}`; trials train on its train split and are "
        "scored on val; promotion evaluates on test.",
        f"{CHAMPION_HEADING} not promoted yet (`lenstune promote --experiment <this "
        "experiment>`).",
    ])


def champion_paragraph(result) -> str:
    """Where the champion is after a promotion (a :class:`tuner.registry.promotion.PromotionResult`):
    the alias to load, and the decision in promotion's words."""
    c = result.candidate
    return (f"{CHAMPION_HEADING} load `models:/{result.model_name}@{schema.CHAMPION}`. This "
            f"study's best trial (`{result.family}`, run `{result.trial_run_id}`) is version "
            f"{result.version}: test macro AUC {c.auc_macro:.4f}, accuracy {c.acc:.4f} on "
            f"{c.n_images} images. {result.message}")


def describe_study(client, run_id: str, text: str) -> None:
    """Set the study run's description."""
    client.set_tag(run_id, NOTE_TAG, text)


def describe_study_after_promotion(tracking_uri: str | None, result) -> None:
    """Replace the champion paragraph of the study run's description with where the champion
    is now (a study run without a description gets the paragraph alone)."""
    from tuner.tracking.store import mlflow_client

    client = mlflow_client(tracking_uri)
    note = client.get_run(result.study_run_id).data.tags.get(NOTE_TAG, "")
    head = note.split(CHAMPION_HEADING)[0].rstrip()
    describe_study(client, result.study_run_id,
                   (head + "\n\n" if head else "") + champion_paragraph(result))
