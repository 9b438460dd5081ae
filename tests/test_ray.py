"""--ray: the workers as actors of a real two-node local Ray cluster (CPU nodes, the tiny model)."""

from __future__ import annotations

import pytest
from ray.cluster_utils import Cluster

from conftest import offline_env, small_corpus
from test_workers import Run, summary, tree


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node, each its own raylet, on this machine. One CPU each, so that
    two actors take one node each. Ray runs its workers at niceness 15 by default: on a machine
    busy with anything else they would crawl, so here they run at the driver's priority."""
    head = {"num_cpus": 1, "_system_config": {"worker_niceness": 0}}
    nodes = Cluster(initialize_head=True, head_node_args=head)
    second = nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    yield nodes, second
    nodes.shutdown()


def test_ray_actors_write_the_same_tree_as_one_process(dsocr, cluster, tmp_path):
    nodes, _ = cluster
    inputs = small_corpus(tmp_path / "in")
    env = offline_env(OMP_NUM_THREADS="1")  # Ray's actors run with one thread each too
    single = dsocr("run", str(inputs), "-o", str(tmp_path / "single"), "--workers", "1", env=env)
    assert single.returncode == 0, single.stderr
    spread = dsocr("run", str(inputs), "-o", str(tmp_path / "ray"), "--ray", nodes.address, "--workers", "2", env=env)
    assert spread.returncode == 0, spread.stderr
    assert tree(tmp_path / "single") == tree(tmp_path / "ray")
    workers = summary(tmp_path / "ray")["engine"]["workers"]
    assert len(workers) == 2 and all(w["state"] == "running" and w["device"] == "cpu" for w in workers)
    assert len({w["pid"] for w in workers}) == 2


def test_a_node_removed_mid_run_loses_and_duplicates_nothing(tiny_model, cluster, tmp_path):
    nodes, second = cluster
    inputs = small_corpus(tmp_path / "in")
    out = tmp_path / "out"
    # One lane per actor, so both still hold a page when the first document is done and the node goes.
    args = ["--ray", nodes.address, "--workers", "2", "--max-new-tokens", "200", "--batch-size", "1"]
    run = Run(tiny_model, "run", str(inputs), "-o", str(out), *args)
    run.wait_for(r"2 workers: ")
    run.wait_for(r"done .*page\(s\)")
    nodes.remove_node(second, allow_graceful=False)
    assert run.process.wait(timeout=600) == 0, "".join(run.lines)
    report = summary(out)
    assert sorted(item["key"] for item in report["items"]) == ["doc.pdf", "img0.png", "img1.png", "img2.png"]
    assert {item["status"] for item in report["items"]} == {"done"}
    assert len(list(out.rglob("document.json"))) == 4
    assert sum(w["restarts"] for w in report["engine"]["workers"]) >= 1


def test_an_unreachable_cluster_is_a_setup_error(dsocr, tmp_path):
    inputs = small_corpus(tmp_path / "in")
    result = dsocr("run", str(inputs), "-o", str(tmp_path / "out"), "--ray", "127.0.0.1:9", timeout=180)
    assert result.returncode == 4, result.stderr
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in result.stderr
