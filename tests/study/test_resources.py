"""Trial resources follow the cluster: GPU shares, trial slots, storage every node reaches."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuner.study.resources import (ClusterView, NodeType, _types_from_autoscaler_yaml,
                             check_storage_reachable, resolve_resources, trial_slots)

REPO = Path(__file__).resolve().parents[2]


def test_a_machine_without_gpus_asks_for_none_and_fills_its_cpus():
    view = ClusterView(live=[(2.0, 0.0)])
    res = resolve_resources(view, cpus=1, gpus="auto", max_concurrent="auto", profile="micro")
    assert (res.gpus, res.max_concurrent) == (0.0, 2)
    assert "no GPU nodes" in res.reason


def test_live_gpus_get_the_profile_share_and_the_slots_they_hold():
    view = ClusterView(live=[(8.0, 0.0), (4.0, 1.0), (48.0, 4.0)])
    micro = resolve_resources(view, cpus=1, gpus="auto", max_concurrent="auto", profile="micro")
    assert micro.gpus == 0.25
    # The CPU-only head holds 8 CPU-bound slots it cannot use: GPU trials need a GPU.
    assert micro.max_concurrent == 4 + 16
    gpu = resolve_resources(view, cpus=1, gpus="auto", max_concurrent="auto", profile="gpu")
    assert (gpu.gpus, gpu.max_concurrent) == (1.0, 5)
    half = resolve_resources(view, cpus=1, gpus="auto", max_concurrent="auto", profile="gpu",
                             declared_share=0.5)
    assert (half.gpus, half.max_concurrent) == (0.5, 2 + 8)


def test_gpu_node_types_an_autoscaler_can_start_count_before_any_exists():
    view = ClusterView(live=[(8.0, 0.0)],
                       node_types=[NodeType("gpu_1x", 4, 1, 8), NodeType("gpu_4x", 48, 4, 2)],
                       max_workers=10, source="test")
    res = resolve_resources(view, cpus=1, gpus="auto", max_concurrent="auto", profile="gpu")
    # The 4-GPU type first (4 slots a node, 2 nodes), then 8 one-GPU nodes: 16 slots.
    assert (res.gpus, res.max_concurrent) == (1.0, 16)
    capped = ClusterView(live=[(8.0, 0.0)], node_types=view.node_types, max_workers=3)
    assert trial_slots(capped, 1, 1) == 2 * 4 + 1 * 1


def test_explicit_values_win_over_the_cluster():
    view = ClusterView(live=[(4.0, 1.0)])
    res = resolve_resources(view, cpus=2, gpus=0.0, max_concurrent=3, profile="gpu")
    assert (res.cpus, res.gpus, res.max_concurrent, res.reason) == (2.0, 0.0, 3, "")


def test_the_repository_cluster_configs_resolve_to_gpu_trials():
    for path, expect_share in (("cluster/aws-gpu.yaml", 1.0), ("cluster/local-fake-gpu.yaml", 1.0)):
        types, max_workers = _types_from_autoscaler_yaml(yaml.safe_load((REPO / path).read_text()))
        assert any(t.gpus > 0 for t in types), path
        view = ClusterView(live=[(1.0, 0.0)], node_types=types, max_workers=max_workers)
        res = resolve_resources(view, cpus=1, gpus="auto", max_concurrent="auto", profile="gpu")
        assert res.gpus == expect_share and res.max_concurrent >= 2, (path, res)


def test_node_local_storage_is_refused_on_a_multi_node_cluster(tmp_path):
    single = ClusterView(live=[(2.0, 0.0)])
    assert check_storage_reachable(str(tmp_path), single) is None
    scaling = ClusterView(live=[(2.0, 0.0)], node_types=[NodeType("gpu", 4, 1, 2)], source="x")
    problem = check_storage_reachable(str(tmp_path), scaling)
    assert problem and "LENSTUNE_STORAGE" in problem and str(tmp_path) in problem
    assert check_storage_reachable("s3://bucket/studies", scaling) is None
    two_nodes = ClusterView(live=[(2.0, 0.0), (2.0, 0.0)])
    assert check_storage_reachable(str(tmp_path), two_nodes) is not None


def test_gpus_per_trial_in_a_search_space_must_be_a_share(tmp_path):
    from tuner.study.search_space import SearchSpaceError, load_search_space

    raw = yaml.safe_load((REPO / "search_spaces" / "vit.yaml").read_text())
    raw["profiles"]["gpu"]["gpus_per_trial"] = 0.5
    good = tmp_path / "vit.yaml"
    good.write_text(yaml.safe_dump(raw))
    assert load_search_space("vit", "gpu", good, check_build=False).gpus_per_trial == 0.5
    raw["profiles"]["gpu"]["gpus_per_trial"] = 2
    good.write_text(yaml.safe_dump(raw))
    with pytest.raises(SearchSpaceError, match="gpus_per_trial"):
        load_search_space("vit", "gpu", good, check_build=False)
