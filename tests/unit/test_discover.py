"""discover against botocore's Stubber: the real client, request validation included, with canned answers."""

import datetime as dt

import boto3
import pytest
from botocore.stub import Stubber

from collectors.errors import UsageError
from collectors.sources import sagemaker_api
from collectors.stages import discover

ARN = "arn:aws:sagemaker:us-west-2:123456789012:cluster/abcdef123456"
EKS_ARN = "arn:aws:eks:us-west-2:123456789012:cluster/my-eks"
LAUNCH = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def summary(iid, group, status="Running", hostname=None):
    item = {"InstanceGroupName": group, "InstanceId": iid, "InstanceType": "ml.p5.48xlarge",
            "LaunchTime": LAUNCH, "InstanceStatus": {"Status": status, "Message": ""}}
    if hostname:
        item["PrivateDnsHostname"] = hostname
    return item


@pytest.fixture
def sagemaker():
    client = boto3.client("sagemaker", region_name="us-west-2", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def describe_response(orchestrator):
    response = {"ClusterArn": ARN, "ClusterName": "hp", "ClusterStatus": "InService", "InstanceGroups": [],
                "CreationTime": LAUNCH, "VpcConfig": {"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1"]}}
    if orchestrator:
        response["Orchestrator"] = orchestrator
    return response


@pytest.mark.parametrize("orchestrator, kind, eks_name", [
    ({"Eks": {"ClusterArn": EKS_ARN}}, "eks", "my-eks"),
    ({"Slurm": {"SlurmConfigStrategy": "Managed"}}, "slurm", None),
    (None, "slurm", None),  # older Slurm clusters have no Orchestrator at all
])
def test_cluster_type_and_id_come_from_the_api(sagemaker, orchestrator, kind, eks_name):
    client, stubber = sagemaker
    stubber.add_response("describe_cluster", describe_response(orchestrator), {"ClusterName": "hp"})
    cluster = sagemaker_api.describe_cluster(client, "hp", "us-west-2")
    assert (cluster["type"], cluster["eks_cluster_name"], cluster["id"]) == (kind, eks_name, "abcdef123456")


def test_unknown_cluster_is_usage_error(sagemaker):
    client, stubber = sagemaker
    stubber.add_client_error("describe_cluster", "ValidationException", "Could not find cluster 'nope'")
    with pytest.raises(UsageError, match="cluster 'nope' not found in region us-west-2"):
        sagemaker_api.describe_cluster(client, "nope", "us-west-2")


def test_all_pages_are_listed(sagemaker):
    client, stubber = sagemaker
    stubber.add_response("list_cluster_nodes", {"ClusterNodeSummaries": [summary("i-01", "a")], "NextToken": "t1"},
                         {"ClusterName": ARN, "MaxResults": 100})
    stubber.add_response("list_cluster_nodes", {"ClusterNodeSummaries": [summary("i-02", "b")]},
                         {"ClusterName": ARN, "MaxResults": 100, "NextToken": "t1"})
    assert [s["InstanceId"] for s in sagemaker_api.list_cluster_nodes(client, ARN)] == ["i-01", "i-02"]


def test_missing_hostnames_are_described_only_for_those_nodes(sagemaker):
    client, stubber = sagemaker
    nodes = [sagemaker_api.node_from_summary(summary("i-01", "a", hostname="ip-10-0-0-1.ec2.internal")),
             sagemaker_api.node_from_summary(summary("i-02", "a"))]
    stubber.add_response("describe_cluster_node", {"NodeDetails": {
        "InstanceId": "i-02", "InstanceGroupName": "a", "PrivateDnsHostname": "ip-10-0-0-2.ec2.internal",
        "PrivatePrimaryIp": "10.0.0.2"}}, {"ClusterName": ARN, "NodeId": "i-02"})
    sagemaker_api.fill_missing_hostnames(client, ARN, nodes, workers=4)
    assert [(n["hostname"], n["ip"]) for n in nodes] == [("ip-10-0-0-1", "10.0.0.1"), ("ip-10-0-0-2", "10.0.0.2")]


NODES = [sagemaker_api.node_from_summary(s) for s in (
    summary("i-0a1", "Workers", hostname="ip-10-0-0-1.x"), summary("i-0a2", "workers", hostname="ip-10-0-0-2.x"),
    summary("i-0b1", "controller", hostname="ip-10-0-1-1.x"))]


def test_groups_match_case_insensitively():
    chosen = discover.select_nodes(NODES, ["WORKERS"], [], "hp")
    assert [n["instance_id"] for n in chosen] == ["i-0a1", "i-0a2"]


@pytest.mark.parametrize("groups, names, message", [
    (["gpu"], [], "no instance group gpu in cluster hp"),
    ([], ["ip-10-9-9-9"], "no node in cluster hp matches ip-10-9-9-9"),
    (["workers"], ["i-0a1"], "cannot be used together"),
])
def test_selection_errors_are_usage_errors(groups, names, message):
    with pytest.raises(UsageError, match=message):
        discover.select_nodes(NODES, groups, names, "hp")


def test_rediscovery_keeps_outcomes():
    fresh = dict(NODES[0])
    merged = discover.merge_outcome(fresh, {"status": "ok", "bytes": 10, "hyperpod_status": "Failure"})
    assert merged["status"] == "ok" and merged["bytes"] == 10 and merged["hyperpod_status"] == "Running"
    assert discover.merge_outcome(fresh, None)["status"] == "pending"

