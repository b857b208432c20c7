"""The cluster stage's parts: which event queries a selection needs, reading a log stream back under
its cap (botocore's Stubber stands in for CloudWatch Logs), the --since window, the line a failed
lifecycle script is reported by, and the nodes' redaction catalogue run here by real bash."""

from __future__ import annotations

import re
import tarfile
from datetime import datetime, timezone

import boto3
import botocore.config
import pytest
from botocore.stub import Stubber

from collectors.cluster_api import MANIFEST, TARBALL, TOP_FOLDER, stream_node, window_start
from collectors.context import StageContext
from collectors.redaction import RedactionError, redact_files
from collectors.report.checks.cluster_api import failing_lines
from collectors.sandbox.credentials import FAKE_CREDENTIALS
from collectors.settings import Settings
from collectors.stages import cluster as cluster_stage
from collectors.stages.cluster import PER_NODE_QUERIES_MAX, Entry, event_queries, newest_lines
from collectors.state import RunState
from tests.conftest import closed_port

NODES = {f"i-0{index:016x}": {"group": "gpu" if index < 2 else "cpu"} for index in range(3)}
GROUP, STREAM = "/aws/sagemaker/Clusters/hp/abc123def456", "LifecycleConfig/gpu/i-00000000000000000"
TRACEBACK = re.compile(rb"Traceback \(most recent call last\)")
EXIT = re.compile(rb"exited with (?:status|code) [1-9]|returned non-zero exit status [1-9]")


@pytest.mark.parametrize("options, expected", [
    ({}, [{}]),
    ({"instance_groups": ["gpu"]}, [{"ResourceType": "Cluster"}, {"InstanceGroupName": "cpu"},
                                    {"InstanceGroupName": "gpu"}]),
    ({"nodes": ["ip-1-2-3-4"]}, [{"ResourceType": "Cluster"},
                                 {"ResourceType": "InstanceGroup", "InstanceGroupName": "cpu"},
                                 {"ResourceType": "InstanceGroup", "InstanceGroupName": "gpu"}]
     + [{"NodeId": iid} for iid in sorted(NODES)]),
])
def test_event_queries_follow_the_selection(options, expected):
    assert event_queries(options, NODES) == expected


def test_many_named_nodes_are_one_listing_of_the_cluster():
    nodes = {f"i-0{index:016x}": {"group": "gpu"} for index in range(PER_NODE_QUERIES_MAX + 1)}
    assert event_queries({"nodes": list(nodes)}, nodes) == [{}]


def logs_client():
    return boto3.client("logs", region_name="us-west-2", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def page(messages: list[tuple[int, str]], backward: str) -> dict:
    return {"events": [{"timestamp": at, "message": text, "ingestionTime": at} for at, text in messages],
            "nextForwardToken": "f/1", "nextBackwardToken": backward}


def expected_request(token: str | None = None) -> dict:
    request = {"logGroupName": GROUP, "logStreamName": STREAM, "startFromHead": False, "startTime": 1000}
    return {**request, "nextToken": token} if token else request


def test_a_stream_is_read_back_to_its_start_until_the_token_comes_back():
    logs = logs_client()
    with Stubber(logs) as stub:
        stub.add_response("get_log_events", page([(3000, "three"), (4000, "four\n")], "b/2"), expected_request())
        stub.add_response("get_log_events", page([], "b/1"), expected_request("b/2"))  # an empty page mid-stream
        stub.add_response("get_log_events", page([(1000, "one"), (2000, "two")], "b/0"), expected_request("b/1"))
        stub.add_response("get_log_events", page([], "b/0"), expected_request("b/0"))
        entry = Entry("f", "logs:GetLogEvents")
        lines, cut = newest_lines(logs, GROUP, STREAM, 1000, 1 << 20, entry)
        stub.assert_no_pending_responses()
    assert lines == ["1970-01-01T00:00:01.000Z one\n", "1970-01-01T00:00:02.000Z two\n",
                     "1970-01-01T00:00:03.000Z three\n", "1970-01-01T00:00:04.000Z four\n"]
    assert not cut and entry.calls == 4


def test_a_long_stream_keeps_its_newest_lines_under_the_cap():
    logs = logs_client()
    line = len("1970-01-01T00:00:01.000Z xxxx\n")
    with Stubber(logs) as stub:
        stub.add_response("get_log_events", page([(t * 1000, "xxxx") for t in range(1, 6)], "b/0"),
                          expected_request())
        lines, cut = newest_lines(logs, GROUP, STREAM, 1000, 2 * line, Entry("f", "logs:GetLogEvents"))
    assert cut and lines == ["1970-01-01T00:00:04.000Z xxxx\n", "1970-01-01T00:00:05.000Z xxxx\n"]


def test_the_window_reads_as_the_node_script_does():
    now = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    assert window_start("all", now) is None
    assert window_start("90m", now) == datetime(2026, 11, 22, 10, 30, tzinfo=timezone.utc)
    assert window_start("2w", now) == datetime(2026, 11, 8, 12, 0, tzinfo=timezone.utc)
    assert window_start("2026-11-20", now) == datetime(2026, 11, 20, tzinfo=timezone.utc)  # no zone: UTC
    assert window_start("2026-11-20T08:00:00+02:00", now) == datetime(2026, 11, 20, 6, tzinfo=timezone.utc)


def test_only_hyperpods_per_node_streams_name_a_node():
    assert stream_node("SagemakerHealthMonitoringAgent/worker-group-1/i-0a1b2c3d4e5f60001") == "i-0a1b2c3d4e5f60001"
    assert stream_node("i-0a1b2c3d4e5f60001") is None and stream_node("Other/stream/name") is None


def stamped(*messages: str) -> list[bytes]:
    return [f"2026-11-22T09:00:{second:02d}.000Z {text}".encode() for second, text in enumerate(messages)]


def test_the_failing_line_is_the_exception_the_last_traceback_ends_in_then_the_exit():
    lines = stamped("[on_create.sh] Running lifecycle_script.py",
                    "Traceback (most recent call last):", '  File "a.py", line 3, in <module>', "    run()",
                    "KeyError: 'fsx'", "During handling of the above exception, another exception occurred:",
                    "Traceback (most recent call last):", '  File "a.py", line 9, in <module>',
                    "subprocess.CalledProcessError: Command 'x' returned non-zero exit status 100.",
                    "[on_create.sh] lifecycle_script.py exited with status 1")
    assert failing_lines(lines, TRACEBACK, EXIT) == [9, 10]


def test_a_script_that_only_exits_non_zero_is_reported_by_that_line_and_a_good_one_not_at_all():
    assert failing_lines(stamped("step one", "on_create.sh exited with code 2", "cleanup"), TRACEBACK, EXIT) == [2]
    assert failing_lines(stamped("step one", "lifecycle_script.py exited with status 0"), TRACEBACK, EXIT) == []


def test_files_built_here_go_through_the_nodes_catalogue(tmp_path):
    token = "ghp_" + "Z9y8X7w6V5u4T3s2R1q0" * 2
    event = tmp_path / "events.json"
    event.write_text(f'{{"Description": "pull failed with {token}", "Note": "GPU stress test"}}\n')
    plain = tmp_path / "plain.log"
    plain.write_text("nothing secret here\n")
    counts = redact_files([event, plain], tmp_path / "work", ("stress test",))
    assert counts == {event: 2, plain: 0}
    assert token not in event.read_text() and "stress test" not in event.read_text()
    assert plain.read_text() == "nothing secret here\n"


def test_a_catalogue_that_cannot_run_ships_nothing(tmp_path):
    event = tmp_path / "events.json"
    event.write_text('{"Description": "x"}\n')
    with pytest.raises(RedactionError, match="not a valid extended regular expression"):
        redact_files([event], tmp_path / "work", ("(unclosed",))
    assert not event.exists()


class OneTryAws:
    """Real botocore clients, one try each, to a loopback port nothing listens on."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def client(self, service: str, **_):
        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-west-2",
                            config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}),
                            **{key.lower(): value for key, value in FAKE_CREDENTIALS.items()})


def test_an_api_that_does_not_answer_costs_one_call_not_one_per_node(tmp_path):
    settings = Settings.from_config({"runs_dir": str(tmp_path)}, cluster="hp")
    state = RunState.create(settings.runs_dir, "hp")
    state.data["cluster"] = {"requested": "hp", "name": "hp", "arn": "arn:aws:sagemaker:us-west-2:123456789012:"
                             "cluster/abc123def456", "type": "slurm"}
    state.data["nodes"] = {iid: {"instance_id": iid, "group": "gpu", "hyperpod_status": "Failure"} for iid in NODES}
    state.mark_stage("discover", "done")
    aws = OneTryAws(f"http://127.0.0.1:{closed_port()}")
    with state.locked():
        code = cluster_stage.execute(StageContext(settings, state, aws, {}))
    assert code == 1
    rows = members_manifest(state.run_dir / TARBALL)
    assert list(rows) == ["describe_cluster.json"] and rows["describe_cluster.json"]["status"] == "failed"
    assert "describe_cluster.json failed: Could not connect" in state.stage("cluster")["error"]


def members_manifest(path) -> dict[str, dict[str, str]]:
    with tarfile.open(path) as tar:
        lines = tar.extractfile(f"{TOP_FOLDER}/{MANIFEST}").read().decode().splitlines()
    columns = lines[0].split("\t")
    return {row[0]: dict(zip(columns, row)) for row in (line.split("\t") for line in lines[1:])}
