"""System metrics of a trial's run: MLflow's ``SystemMetricsMonitor`` (CPU and memory of the
node, disk, network, and utilisation, memory and power of the node's NVIDIA GPUs when there are
any), sampled by a background thread of the trial into its run (``system/...`` metrics, the
run page's "System metrics" tab), by run id, with no active run.

The monitor also stops by itself once the run is no longer RUNNING (the driver ends the run of a
trial that ASHA stops). Cost, measured by ``bench/system_metrics.py`` (results in
``bench/results/system_metrics.md``): well under 1% of a trial at the default interval.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

# Seconds between samples; MLflow's MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it.
SAMPLING_INTERVAL_S = 5.0
# LENSTUNE_SYSTEM_METRICS=false turns the monitor off (e.g. for a benchmark's reference).
ENABLE_ENV = "LENSTUNE_SYSTEM_METRICS"


def _monitor_class():
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class TrialSystemMetrics(SystemMetricsMonitor):
        """MLflow's monitor, which also sends the samples of the last, partial interval when
        stopped (MLflow's drops them: a trial shorter than the interval would get nothing)."""

        def finish(self) -> None:
            if self._process is None:
                return
            self._shutdown_event.set()
            self._process.join(timeout=10)  # a sample stuck on an unreachable server: let it be
            if self._process.is_alive():
                self._process = None
                return
            self._process = None
            try:
                self.collect_metrics()
                self.publish_metrics(self.aggregate_metrics())
            finally:
                self.mlflow_logger.flush()

    return TrialSystemMetrics


def start_system_metrics(run_id: str, tracking_uri: str | None,
                         interval_s: float = SAMPLING_INTERVAL_S):
    """A started monitor logging into ``run_id`` every ``interval_s`` seconds, continuing the
    steps of an earlier attempt of the run; None when turned off or MLflow cannot monitor here
    (never a reason to fail a trial)."""
    if os.environ.get(ENABLE_ENV, "true").lower() in ("0", "false", "no"):
        return None
    # MLflow announces each monitor at INFO ("Started monitoring ..."): once per trial is noise
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    try:
        import psutil

        psutil.cpu_percent()  # the reference of the first CPU sample (else it reads 0)
        monitor = _monitor_class()(run_id, sampling_interval=interval_s,
                                   samples_before_logging=1, resume_logging=True,
                                   tracking_uri=tracking_uri)
        monitor.start()
    except Exception as exc:  # noqa: BLE001 - e.g. psutil missing on a worker image
        log.warning("no system metrics for run %s: %s", run_id, exc)
        return None
    return monitor


def stop_system_metrics(monitor) -> None:
    """Stop ``monitor`` (from :func:`start_system_metrics`; None is fine) and send what it
    sampled since its last send."""
    if monitor is None:
        return
    try:
        monitor.finish()
    except Exception as exc:  # noqa: BLE001 - metrics are an aid, not the trial's result
        log.warning("system metrics: %s", exc)
