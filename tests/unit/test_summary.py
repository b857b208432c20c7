from collectors.stages.summarize import build_summary, render_table
from collectors.stages.run import session_failure
from collectors.transports.base import SessionResult

UPSTREAM_FIELDS = {"cluster_name", "cluster_id", "report_id", "timestamp", "total_nodes", "successful", "failed",
                   "results"}
UPSTREAM_RESULT_FIELDS = {"InstanceId", "NodeGroup", "Success", "Output", "Error", "ElapsedTime"}


def state_data():
    def node(iid, group, status, **extra):
        return {"instance_id": iid, "group": group, "status": status, "hostname": f"ip-{iid}", **extra}

    return {
        "run_id": "20260101_000000",
        "cluster": {"name": "hp", "id": "abc123", "type": "eks", "arn": "arn:x/abc123", "region": "us-west-2"},
        "options": {"commands": ["df -h"]},
        "stages": {"run": {"status": "done"}, "kubectl": {"status": "failed", "error": "kubectl is not on PATH"}},
        "s3": {"bucket": "b", "prefix": "p", "run_prefix": "p/hp/20260101_000000"},
        "nodes": {
            "i-2": node("i-2", "g2", "ok", elapsed=3.5, bytes=2048, output="[hpc] ok"),
            "i-1": node("i-1", "g1", "unreachable", error="SSM agent not connected", error_kind="unreachable"),
            "i-3": node("i-3", "g1", "ok_with_errors", elapsed=1, error="1 of 9 items failed"),
            "i-4": node("i-4", "g2", "skipped", error="HyperPod status is Pending"),
        },
    }


def test_summary_keeps_the_earlier_tools_fields_and_types():
    summary = build_summary(state_data())
    assert UPSTREAM_FIELDS <= set(summary)
    assert (summary["cluster_name"], summary["cluster_id"], summary["report_id"]) == ("hp", "abc123",
                                                                                      "20260101_000000")
    assert (summary["total_nodes"], summary["successful"], summary["failed"], summary["skipped"]) == (4, 2, 1, 1)
    for result in summary["results"]:
        assert UPSTREAM_RESULT_FIELDS <= set(result)
        assert isinstance(result["Success"], bool) and isinstance(result["ElapsedTime"], float)
        assert isinstance(result["Output"], str) and isinstance(result["Error"], str)
    assert [r["InstanceId"] for r in summary["results"]] == ["i-1", "i-3", "i-2", "i-4"]
    assert summary["s3_prefix"] == "s3://b/p/hp/20260101_000000"


def test_table_shows_every_node_and_the_failed_kubectl_stage():
    text = render_table(build_summary(state_data()), state_data())
    assert "4 node(s): 1 ok, 1 ok_with_errors, 1 skipped, 1 unreachable" in text
    assert "SSM agent not connected" in text and "2.0KB" in text
    assert "Kubernetes state failed (kubectl stage): kubectl is not on PATH" in text


def test_session_failures_map_to_fixed_statuses():
    assert session_failure(SessionResult("unreachable", error="x"))["status"] == "unreachable"
    timeout = session_failure(SessionResult("timeout", step="script", error="y"))
    assert (timeout["status"], timeout["error_kind"]) == ("timeout", "timeout_script")
    dropped = session_failure(SessionResult("session_dropped", step="script", error="z"))
    assert (dropped["status"], dropped["error_kind"]) == ("failed", "session_dropped")
    assert session_failure(SessionResult("interrupted"))["status"] == "interrupted"
