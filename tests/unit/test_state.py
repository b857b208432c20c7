import json
import os

import pytest

from collectors.errors import UsageError
from collectors.state import RunState, cluster_dir_name


def test_create_makes_unique_runs_and_points_latest(tmp_path):
    first = RunState.create(tmp_path, "hp", run_id="20260101_000000")
    second = RunState.create(tmp_path, "hp", run_id="20260101_000000")
    assert first.run_id == "20260101_000000"
    assert second.run_id == "20260101_000000_2"
    assert (tmp_path / "hp" / "latest").resolve() == second.run_dir
    assert RunState.load(tmp_path, "hp").run_id == second.run_id
    assert RunState.load(tmp_path, "hp", "20260101_000000").run_id == first.run_id


def test_state_round_trips_with_schema_version(tmp_path):
    state = RunState.create(tmp_path, "hp")
    state.nodes["i-1"] = {"instance_id": "i-1", "status": "ok"}
    state.mark_stage("run", "done", planned=1)
    data = json.loads(state.path.read_text())
    assert data["schema_version"] == 1
    assert data["nodes"]["i-1"]["status"] == "ok"
    assert data["stages"]["run"]["status"] == "done"
    assert not [p for p in state.run_dir.iterdir() if p.name.startswith(".state.")]


def test_save_failure_leaves_the_previous_file(tmp_path):
    state = RunState.create(tmp_path, "hp")
    state.nodes["i-1"] = {"status": "ok"}
    state.save()
    state.nodes["i-2"] = {"bad": object()}  # not JSON-serialisable: the write fails part-way
    with pytest.raises(TypeError):
        state.save()
    assert json.loads(state.path.read_text())["nodes"] == {"i-1": {"status": "ok"}}
    assert not [p for p in state.run_dir.iterdir() if p.name.startswith(".state.")]


def test_missing_runs_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no runs for cluster"):
        RunState.load(tmp_path, "nope")
    RunState.create(tmp_path, "hp")
    with pytest.raises(UsageError, match="no state for run 20990101_000000"):
        RunState.load(tmp_path, "hp", "20990101_000000")
    with pytest.raises(UsageError, match="YYYYMMDD_HHMMSS"):
        RunState.load(tmp_path, "hp", "../../etc")


def test_lock_refuses_a_second_holder(tmp_path):
    state = RunState.create(tmp_path, "hp")
    other = RunState.load(tmp_path, "hp")
    with state.locked():
        # flock locks belong to open file descriptions, so a second open in this process conflicts too.
        with pytest.raises(UsageError, match=f"in use by pid {os.getpid()}"):
            with other.locked():
                pass
    with other.locked():
        pass


def test_discard_points_latest_back(tmp_path):
    first = RunState.create(tmp_path, "hp", run_id="20260101_000000")
    second = RunState.create(tmp_path, "hp", run_id="20260102_000000")
    second.discard()
    assert not second.run_dir.exists()
    assert (tmp_path / "hp" / "latest").resolve() == first.run_dir
    first.discard()
    assert not (tmp_path / "hp" / "latest").exists()


def test_cluster_arns_do_not_nest_folders():
    assert cluster_dir_name("arn:aws:sagemaker:us-west-2:123:cluster/abc123") == "abc123"
    assert cluster_dir_name("my cluster") == "my_cluster"


def test_stage_prerequisites(tmp_path):
    state = RunState.create(tmp_path, "hp")
    with pytest.raises(UsageError, match=f"continue the run with `invoke collect --cluster hp --run-id {state.run_id}`"):
        state.require_stage("discover", "render")


def test_a_run_started_with_the_clusters_arn_moves_under_its_name_and_the_arn_still_finds_it(tmp_path):
    """Before: the run stayed under the ARN's last segment (the cluster id), while its S3 prefix and the
    resume hint (`invoke run --cluster NAME --run-id …`) used the name, which found nothing."""
    arn = "arn:aws:sagemaker:us-west-2:123456789012:cluster/abc123def456"
    state = RunState.create(tmp_path, arn)
    state.data["cluster"]["name"] = "hp-prod"
    with state.locked():
        state.adopt_cluster_name("hp-prod")
        state.save()
    assert state.run_dir == tmp_path / "hp-prod" / state.run_id
    assert RunState.load(tmp_path, "hp-prod").run_id == state.run_id
    assert RunState.load(tmp_path, arn).run_id == state.run_id
    assert (tmp_path / "abc123def456").is_symlink()
    second = RunState.create(tmp_path, arn)  # through the link: already the name's folder
    assert second.run_dir.parent.resolve() == (tmp_path / "hp-prod").resolve()
