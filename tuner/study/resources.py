"""What a study asks of the Ray cluster it runs on: GPUs per trial, trials at once, and whether
its Tune storage can be reached from every node.

``gpus_per_trial: auto`` and ``max_concurrent: auto`` (the defaults) follow the cluster:

- GPUs: a trial asks for a GPU share when the cluster has GPU nodes now or its autoscaler has
  GPU node types it can start (:func:`inspect_cluster`); on a machine without either it asks for
  none, as before. The share comes from the search-space profile (``micro`` trials are tiny and
  four share a GPU; ``gpu``-profile trials take a whole one), or from the profile's own
  ``gpus_per_trial`` in the family's search-space file (a half for the small families).
- Trials at once: the trial slots of the nodes the cluster has, or of the nodes its autoscaler
  can add (each node type's ``max_workers``) together with the head, whichever is more. A slot
  needs the trial's CPUs and GPUs on one node.

The autoscaler's node types come from the first of these that answers, all read on the head
node, where ``ray job submit`` runs the driver:
- the GCS, where an autoscaler has reported its node groups;
- on KubeRay, the RayCluster resource itself, read the way Ray's KubeRay autoscaler reads it
  (the head pod's service account may get its RayCluster: the autoscaler sidecar needs that too);
- the ``--autoscaling-config`` of the autoscaler process serving this cluster's GCS, else
  ``~/ray_bootstrap_config.yaml`` (where the cluster launcher puts it).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# GPU share of a trial per search-space profile when the family's file names none: micro
# models (< 300k parameters) use a few percent of a GPU, so four share one; a gpu-profile
# trial of the larger families fills a GPU's memory bandwidth on its own.
PROFILE_GPU_SHARE = {"micro": 0.25, "gpu": 1.0}
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")
# File systems every node of a cluster can mount: a storage path on one of these is shared.
SHARED_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "ceph",
                      "glusterfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "fuse.mountpoint-s3",
                      "fuse.sshfs", "9p", "virtiofs")


@dataclass(frozen=True)
class NodeType:
    """A kind of node the cluster can have: CPUs and GPUs each, and how many at most."""

    name: str
    cpus: float
    gpus: float
    max_count: int


@dataclass(frozen=True)
class ClusterView:
    """The nodes a study can use: those alive now (CPUs, GPUs each) and the worker node types
    an autoscaler can start (empty without one); ``source`` says where the types came from."""

    live: list[tuple[float, float]]
    node_types: list[NodeType] = field(default_factory=list)
    max_workers: int | None = None
    source: str = "no autoscaler"

    @property
    def gpus_now(self) -> float:
        return sum(gpus for _, gpus in self.live)

    @property
    def can_start_gpus(self) -> bool:
        return any(t.gpus > 0 and t.max_count > 0 for t in self.node_types)

    @property
    def multi_node(self) -> bool:
        """More than one node now, or an autoscaler that can add worker nodes."""
        return len(self.live) > 1 or any(t.max_count > 0 for t in self.node_types)


@dataclass(frozen=True)
class TrialResources:
    """Resolved per-trial resources and concurrency of one family, with the reason."""

    cpus: float
    gpus: float
    max_concurrent: int
    reason: str

    def as_params(self, family: str) -> dict[str, Any]:
        return {f"resources.{family}.cpus_per_trial": self.cpus,
                f"resources.{family}.gpus_per_trial": self.gpus,
                f"resources.{family}.max_concurrent": self.max_concurrent}


def _slots_on(cpus: float, gpus: float, trial_cpus: float, trial_gpus: float) -> int:
    """Trials that fit at once on a node with ``cpus`` and ``gpus``."""
    fits = math.floor(cpus / trial_cpus + 1e-9) if trial_cpus > 0 else 10**6
    if trial_gpus > 0:
        fits = min(fits, math.floor(gpus / trial_gpus + 1e-9))
    return max(fits, 0)


def trial_slots(view: ClusterView, trial_cpus: float, trial_gpus: float) -> int:
    """Trials that can run at once: on the live nodes, or on the head plus every node the
    autoscaler can add (node types with the most slots first, up to ``max_workers`` nodes),
    whichever is more; at least 1."""
    live = sum(_slots_on(c, g, trial_cpus, trial_gpus) for c, g in view.live)
    if not view.node_types:
        return max(live, 1)
    head = _slots_on(*view.live[0], trial_cpus, trial_gpus) if view.live else 0
    budget = view.max_workers if view.max_workers is not None else 10**6
    scaled = 0
    per_type = sorted(((_slots_on(t.cpus, t.gpus, trial_cpus, trial_gpus), t.max_count)
                       for t in view.node_types), reverse=True)
    for slots, count in per_type:
        nodes = min(count, budget)
        scaled, budget = scaled + slots * nodes, budget - nodes
    return max(live, head + scaled, 1)


def _types_from_autoscaler_yaml(config: dict[str, Any]) -> tuple[list[NodeType], int | None]:
    """Worker node types of a Ray cluster-launcher / autoscaler config (the head type left out:
    it is alive already, so it counts among the live nodes)."""
    head = config.get("head_node_type")
    global_max = config.get("max_workers")
    types = []
    for name, spec in (config.get("available_node_types") or {}).items():
        if name == head:
            continue
        resources = spec.get("resources") or {}
        count = spec.get("max_workers", global_max if global_max is not None else 0)
        types.append(NodeType(name, float(resources.get("CPU", 0)), float(resources.get("GPU", 0)),
                              int(count)))
    return types, (int(global_max) if global_max is not None else None)


def _autoscaler_config_path(gcs_address: str) -> Path | None:
    """The ``--autoscaling-config`` of the autoscaler process serving ``gcs_address`` on this
    machine (the head node), else the cluster launcher's bootstrap config if present."""
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if not any(a.endswith("monitor.py") for a in args):
                continue
            flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
            if flags.get("gcs-address") == gcs_address and flags.get("autoscaling-config"):
                return Path(flags["autoscaling-config"])
    bootstrap = BOOTSTRAP_CONFIG.expanduser()
    return bootstrap if bootstrap.is_file() else None


def _kuberay_config() -> dict[str, Any] | None:
    """The autoscaling config of this pod's RayCluster (KubeRay sets RAY_CLUSTER_NAME), built
    by Ray's own KubeRay config producer; None outside KubeRay or when it cannot be read."""
    name = os.environ.get("RAY_CLUSTER_NAME")
    namespace_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    if not (name and os.environ.get("KUBERNETES_SERVICE_HOST") and namespace_file.is_file()):
        return None
    try:
        from ray.autoscaler._private.kuberay.autoscaling_config import AutoscalingConfigProducer

        return AutoscalingConfigProducer(name, namespace_file.read_text().strip())()
    except Exception:  # no permission, API change: the other sources still apply
        return None


def inspect_cluster() -> ClusterView:
    """The cluster of the connected Ray (``ray.init`` done): its alive nodes and the node types
    its autoscaler can start."""
    import ray

    # The head first: trial_slots counts it beside the nodes the autoscaler adds.
    alive = sorted((n for n in ray.nodes() if n.get("Alive")),
                   key=lambda n: "node:__internal_head__" not in n["Resources"])
    live = [(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
            for n in alive]
    try:
        reported = ray._private.state.state.get_cluster_config()
    except Exception:  # an older GCS without the call: fall back to the config file
        reported = None
    if reported is not None and reported.node_group_configs:
        types = [NodeType(g.name, float(g.resources.get("CPU", 0)), float(g.resources.get("GPU", 0)),
                          int(g.max_count) if g.max_count >= 0 else 10**6)
                 for g in reported.node_group_configs]
        return ClusterView(live, types, None, "the autoscaler's node groups in the GCS")
    kuberay = _kuberay_config()
    if kuberay:
        types, max_workers = _types_from_autoscaler_yaml(kuberay)
        if types:
            return ClusterView(live, types, max_workers, "the RayCluster's worker groups")
    path = _autoscaler_config_path(ray.get_runtime_context().gcs_address)
    if path is not None and path.is_file():
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            config = {}
        types, max_workers = _types_from_autoscaler_yaml(config)
        if types:
            return ClusterView(live, types, max_workers, f"the autoscaler config {path}")
    return ClusterView(live)


def gpu_share(profile: str, declared: float | None = None) -> float:
    """A trial's GPU share in ``profile``: the search space's own value, else the profile's."""
    if declared is not None:
        return declared
    return PROFILE_GPU_SHARE.get(profile, 1.0)


def resolve_resources(view: ClusterView, *, cpus: float, gpus: float | str,
                      max_concurrent: int | str, profile: str,
                      declared_share: float | None = None) -> TrialResources:
    """Per-trial resources of one family. Explicit values win; ``auto`` follows ``view``."""
    reasons = []
    if gpus == "auto":
        if view.gpus_now > 0 or view.can_start_gpus:
            gpus = gpu_share(profile, declared_share)
            where = ("GPU nodes" if view.gpus_now > 0 else f"GPU node types ({view.source})")
            reasons.append(f"gpus_per_trial auto -> {gpus:g} (the cluster has {where}; "
                           f"{profile} profile share)")
        else:
            gpus = 0.0
            reasons.append("gpus_per_trial auto -> 0 (no GPU nodes and none the cluster can start)")
    if max_concurrent == "auto":
        max_concurrent = trial_slots(view, cpus, float(gpus))
        reasons.append(f"max_concurrent auto -> {max_concurrent} (trial slots of "
                       f"{'the nodes the autoscaler can start' if view.node_types else 'the live nodes'})")
    return TrialResources(float(cpus), float(gpus), int(max_concurrent), "; ".join(reasons))


def shared_filesystem(path: Path) -> str | None:
    """The file-system type under ``path`` when it is one every node can mount (NFS, Lustre,
    ...), from /proc/mounts; None for a node-local disk or when unknown."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    target, best = path.resolve(), None
    for fields in mounts:
        if len(fields) < 3:
            continue
        mount = Path(fields[1])
        if (target == mount or mount in target.parents) and (
                best is None or len(str(mount)) > len(str(best[0]))):
            best = (mount, fields[2])
    if best and (best[1] in SHARED_FILESYSTEMS or best[1].startswith("fuse.")):
        return best[1]
    return None


def check_storage_reachable(storage: str, view: ClusterView) -> str | None:
    """Why ``storage`` cannot serve a study on this cluster, or None when it can: on more than
    one node (now, or once the autoscaler adds some) Tune storage must be reachable from every
    node (a URI such as s3://, or a path on a shared file system), since Ray refuses to
    checkpoint a trial on another node into a node-local folder."""
    if "://" in storage or not view.multi_node:
        return None
    if shared_filesystem(Path(storage)):
        return None
    return (f"Tune storage {storage!r} is a folder on this node's disk, but the Ray cluster has "
            f"more than one node (or can start more: {view.source}): trials on other nodes "
            "could not save checkpoints there. Set LENSTUNE_STORAGE (or --storage) to an "
            "s3://bucket/prefix every node can reach, or to a shared file system (NFS)")
