"""The sandbox answers for HyperPod's own record as AWS does: cluster events and CloudWatch logs.

Events come from the scenario (a node's status, health label and lifecycle outcome); the API's rules
are the model's and the reference's: filters, sort order, MaxResults 1..100, a token per query,
Continuous clusters only. The sandbox's AWS alone is started (no nodes: no root needed).
"""

from __future__ import annotations

import botocore.exceptions
import pytest

from collectors.cluster_api import LIFECYCLE_STREAM, log_group_name, stream_name
from collectors.errors import SandboxError
from collectors.sandbox import Sandbox, SandboxSpec, sandbox_client
from collectors.sandbox.hyperpod import SECURITY_GROUP_IDS, SUBNET_IDS, instance_group_request

SCENARIO = {
    "cluster": "hp-history", "type": "eks",
    "instance_groups": [{"name": "gpu", "instance_type": "ml.p5.48xlarge", "count": 3},
                        {"name": "cpu", "instance_type": "ml.m5.xlarge", "count": 2}],
    "nodes": {
        "gpu/0": {"status": "Failure", "message": "Instance failed deep health checks: GPU stress test failed"},
        "gpu/1": {"kubernetes": {"labels": {"sagemaker.amazonaws.com/node-health-status":
                                            "UnschedulablePendingReboot"}}},
        "cpu/1": {"status": "Pending", "lifecycle": "failed"},
    },
}


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    sandbox = Sandbox(tmp_path_factory.mktemp("history") / "root")
    spec = SandboxSpec.from_scenario(SCENARIO)
    try:
        endpoint, cluster, _ = sandbox.start_aws(spec)
        clients = {service: sandbox_client(service, endpoint, spec.region, sandbox.root)
                   for service in ("sagemaker", "logs")}
        nodes = {f"{node.group}/{index}": node for group in ("gpu", "cpu")
                 for index, node in enumerate(n for n in cluster.nodes if n.group == group)}
        yield sandbox, cluster, clients, nodes
    finally:
        sandbox.down()


def all_events(sagemaker, **query) -> list[dict]:
    pages = sagemaker.get_paginator("list_cluster_events").paginate(**query, PaginationConfig={"PageSize": 3})
    return [event for page in pages for event in page["Events"]]


def refusal(call, **kwargs) -> tuple[str, str]:
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        call(**kwargs)
    error = raised.value.response["Error"]
    return error["Code"], error["Message"]


def test_each_nodes_story_is_in_its_events(aws):
    _, cluster, clients, nodes = aws
    events = all_events(clients["sagemaker"], ClusterName=cluster.name, SortOrder="Ascending")

    def story(key: str) -> list[tuple[str, str]]:
        return [(e["EventLevel"], e["Description"]) for e in events if e.get("InstanceId") == nodes[key].instance_id]

    failed, rebooting, healthy, pending = (nodes[key].instance_id for key in ("gpu/0", "gpu/1", "gpu/2", "cpu/1"))
    assert story("gpu/2") == [("Info", f"Instance {healthy} launched in InstanceGroup gpu"),
                              ("Info", f"Lifecycle scripts completed on instance {healthy}"),
                              ("Info", f"Deep health checks passed on instance {healthy}")]
    assert story("gpu/0")[-2:] == [
        ("Error", f"Instance {failed}: Instance failed deep health checks: GPU stress test failed"),
        ("Warn", f"Replacement of instance {failed} started (NodeRecovery Automatic)")]
    assert story("gpu/1")[-1] == ("Warn", f"Reboot of instance {rebooting} scheduled after a failed health check")
    assert story("cpu/1") == [("Info", f"Instance {pending} launched in InstanceGroup cpu"),
                              ("Error", "Instance creation in Cluster hp-history and InstanceGroup cpu failed")]
    assert story("cpu/0")[-1][1].startswith("Lifecycle scripts completed")  # a CPU node has no GPU health check
    assert [e["ResourceType"] for e in events[:3]] == ["Cluster", "InstanceGroup", "InstanceGroup"]
    times = [e["EventTime"] for e in events]
    assert times == sorted(times)


def test_filters_sort_order_and_pages(aws):
    _, cluster, clients, nodes = aws
    sagemaker = clients["sagemaker"]
    everything = all_events(sagemaker, ClusterName=cluster.arn)
    times = [e["EventTime"] for e in everything]
    assert times == sorted(times, reverse=True)  # newest first unless asked otherwise
    assert len({e["EventId"] for e in everything}) == len(everything)
    node = nodes["gpu/0"].instance_id
    assert {e["InstanceId"] for e in all_events(sagemaker, ClusterName=cluster.name, NodeId=node)} == {node}
    assert {e.get("InstanceGroupName") for e in all_events(sagemaker, ClusterName=cluster.name,
                                                           InstanceGroupName="cpu")} == {"cpu"}
    assert [e["ResourceType"] for e in all_events(sagemaker, ClusterName=cluster.name,
                                                  ResourceType="Cluster")] == ["Cluster"]
    # Strictly after; botocore sends a timestamp as whole epoch seconds.
    after = sorted(set(times))[-3].replace(microsecond=0)
    recent = all_events(sagemaker, ClusterName=cluster.name, EventTimeAfter=after)
    assert [e["EventId"] for e in recent] == [e["EventId"] for e in everything if e["EventTime"] > after]
    assert 0 < len(recent) < len(everything)
    page = sagemaker.list_cluster_events(ClusterName=cluster.name, MaxResults=1)
    assert len(page["Events"]) == 1 and page["NextToken"]
    # A token belongs to its query.
    code, _ = refusal(sagemaker.list_cluster_events, ClusterName=cluster.name, NodeId=node,
                      NextToken=page["NextToken"])
    assert code == "ValidationException"


@pytest.mark.parametrize("query, field", [
    ({"MaxResults": 101}, "maxResults"),
    ({"NodeId": "i-nothex"}, "nodeId"),
])
def test_values_outside_the_model_are_refused(aws, query, field):
    _, cluster, clients, _ = aws
    # botocore checks neither maxima nor patterns: the service does.
    code, message = refusal(clients["sagemaker"].list_cluster_events, ClusterName=cluster.name, **query)
    assert code == "ValidationException" and f"at '{field}' failed to satisfy constraint" in message


def test_event_details_and_unknown_events(aws):
    _, cluster, clients, nodes = aws
    sagemaker = clients["sagemaker"]
    pending = nodes["cpu/1"].instance_id
    events = all_events(sagemaker, ClusterName=cluster.name, NodeId=pending)
    (error,) = [e for e in events if e["EventLevel"] == "Error"]
    assert "EventDetails" not in error  # the listing gives summaries
    details = sagemaker.describe_cluster_event(ClusterName=cluster.name, EventId=error["EventId"])["EventDetails"]
    instance = details["EventDetails"]["EventMetadata"]["Instance"]
    assert instance["LcsExecutionState"] == "Failed"
    assert instance["FailureMessage"].startswith("Lifecycle scripts did not run successfully")
    code, _ = refusal(sagemaker.describe_cluster_event, ClusterName=cluster.name,
                      EventId="00000000-0000-4000-8000-000000000000")
    assert code == "ResourceNotFound"


def test_events_need_a_continuous_cluster(aws):
    sandbox, cluster, clients, _ = aws
    sagemaker = clients["sagemaker"]
    spec = SandboxSpec.from_scenario({**SCENARIO, "cluster": "hp-older", "nodes": {}})
    sagemaker.create_cluster(ClusterName="hp-older", InstanceGroups=[instance_group_request(spec, spec.groups[1])],
                             VpcConfig={"SecurityGroupIds": SECURITY_GROUP_IDS, "Subnets": SUBNET_IDS})
    assert "NodeProvisioningMode" not in sagemaker.describe_cluster(ClusterName="hp-older")
    code, message = refusal(sagemaker.list_cluster_events, ClusterName="hp-older")
    assert code == "ValidationException" and "NodeProvisioningMode is Continuous" in message
    assert refusal(sagemaker.list_cluster_events, ClusterName="hp-nowhere")[0] == "ResourceNotFound"


def test_lifecycle_logs_end_in_the_failure_and_read_back_to_their_start(aws):
    _, cluster, clients, nodes = aws
    logs = clients["logs"]
    group = log_group_name(cluster.name, cluster.arn)
    node = nodes["cpu/1"]
    name = stream_name(LIFECYCLE_STREAM, node.group, node.instance_id)
    streams = logs.describe_log_streams(logGroupName=group)["logStreams"]
    # Every node has its lifecycle stream; GPU nodes also the health agent's.
    assert len(streams) == 5 + 3 and name in {s["logStreamName"] for s in streams}
    newest = logs.get_log_events(logGroupName=group, logStreamName=name, startFromHead=False, limit=2)
    assert [e["message"] for e in newest["events"]] == [
        "subprocess.CalledProcessError: Command '['sudo', 'bash', './utils/install_docker.sh']' returned non-zero "
        "exit status 100.",
        "[on_create.sh] lifecycle_script.py exited with status 1"]
    token, messages = newest["nextBackwardToken"], []
    while True:
        page = logs.get_log_events(logGroupName=group, logStreamName=name, startFromHead=False, limit=2,
                                   nextToken=token)
        messages = [e["message"] for e in page["events"]] + messages
        if page["nextBackwardToken"] == token:  # the stream's start: the same token again
            break
        token = page["nextBackwardToken"]
    assert messages[0].startswith("[on_create.sh] Downloading lifecycle scripts from s3://sagemaker-hp-history-")
    assert "Traceback (most recent call last):" in messages


def test_denied_actions_answer_access_denied_with_iams_words(aws):
    sandbox, cluster, clients, _ = aws
    sandbox.set_faults(denied_actions=["sagemaker:ListClusterEvents", "logs:GetLogEvents"])
    try:
        code, message = refusal(clients["sagemaker"].list_cluster_events, ClusterName=cluster.name)
        assert code == "AccessDeniedException"
        assert message == (f"User: arn:aws:iam::123456789012:user/sandbox-operator is not authorized to perform: "
                           f"sagemaker:ListClusterEvents on resource: {cluster.arn} because no identity-based policy "
                           "allows the sagemaker:ListClusterEvents action")
        group = log_group_name(cluster.name, cluster.arn)
        code, message = refusal(clients["logs"].get_log_events, logGroupName=group, logStreamName="x")
        assert code == "AccessDeniedException" and f"log-group:{group}:log-stream:" in message
        clients["sagemaker"].describe_cluster(ClusterName=cluster.name)  # other actions go through
        clients["logs"].describe_log_streams(logGroupName=group)
    finally:
        sandbox.set_faults(denied_actions=None)
    clients["sagemaker"].list_cluster_events(ClusterName=cluster.name)
    with pytest.raises(SandboxError, match="must be an IAM action"):
        sandbox.set_faults(denied_actions=["ListClusterEvents"])
