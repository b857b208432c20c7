"""Reading a Slurm cluster's nodes on its head node: what sinfo and resource_config.json say, merged;
and when discovery falls back to it. The SSH part runs against a real sshd in
tests/integration/test_ssh_transport.py."""

import json

import botocore.exceptions
import pytest

from collectors.errors import UsageError
from collectors.settings import Settings, Ssh
from collectors.sources import head_node
from collectors.stages import discover

ARN = "arn:aws:sagemaker:us-west-2:123456789012:cluster/abcdef123456"
# A node in two partitions, a drained one, and one that resource_config.json does not list.
SINFO = """ip-10-1-0-11 ip-10-1-0-11 10.1.0.11 idle
ip-10-1-0-11 ip-10-1-0-11 10.1.0.11 idle
ip-10-1-0-12 ip-10-1-0-12 10.1.0.12 drained
gpu-spare gpu-spare 10.1.0.99 down*
"""
CONFIG = {
    "ClusterConfig": {"ClusterArn": ARN, "ClusterName": "hp"},
    "InstanceGroups": [
        {"InstanceGroupName": "controller-machine", "InstanceType": "ml.m5.xlarge",
         "Instances": [{"InstanceName": "controller-machine-1", "CustomerIpAddress": "10.1.0.10",
                        "InstanceId": "i-0000000000000000a"}]},
        {"Name": "workers", "InstanceType": "ml.p5.48xlarge",
         "Instances": [
             {"InstanceName": "workers-1", "CustomerIpAddress": "10.1.0.11", "InstanceId": "i-0000000000000000b"},
             {"InstanceName": "workers-2", "CustomerIpAddress": "10.1.0.12", "InstanceId": "i-0000000000000000c"}]},
    ],
}


def test_sinfo_lines_become_one_entry_per_node():
    nodes = head_node.parse_sinfo(SINFO + "garbage line\n")
    assert list(nodes) == ["ip-10-1-0-11", "ip-10-1-0-12", "gpu-spare"]
    assert nodes["ip-10-1-0-12"] == {"host": "ip-10-1-0-12", "address": "10.1.0.12", "state": "drained"}


def test_resource_config_names_every_instance_and_sinfo_adds_slurm_names_and_states():
    nodes = {node["instance_id"]: node for node in
             head_node.merge_nodes(head_node.parse_sinfo(SINFO), head_node.parse_resource_config(json.dumps(CONFIG)))}
    assert list(nodes) == ["i-0000000000000000a", "i-0000000000000000b", "i-0000000000000000c", "gpu-spare"]
    head, drained, spare = nodes["i-0000000000000000a"], nodes["i-0000000000000000c"], nodes["gpu-spare"]
    assert (head["group"], head["hostname"], head["ip"], head["slurm_state"]) == (
        "controller-machine", "ip-10-1-0-10", "10.1.0.10", None)
    assert (drained["group"], drained["hostname"], drained["slurm_state"]) == ("workers", "ip-10-1-0-12", "drained")
    assert (spare["group"], spare["ip"], spare["slurm_state"]) == ("unknown", "10.1.0.99", "down*")
    # Not known without the API, and never a reason to skip the node.
    assert all(node["hyperpod_status"] is None for node in nodes.values())


def test_an_instance_without_an_id_is_known_by_its_slurm_name():
    config = {"InstanceGroups": [{"Name": "workers", "Instances": [{"CustomerIpAddress": "10.1.0.12"}]}]}
    nodes = head_node.merge_nodes(head_node.parse_sinfo(SINFO), config)
    assert nodes[0]["instance_id"] == "ip-10-1-0-12" and nodes[0]["group"] == "workers"


def test_without_resource_config_the_slurm_names_stand_for_instance_ids():
    for text in ("", "not json", "[]"):
        nodes = head_node.merge_nodes(head_node.parse_sinfo(SINFO), head_node.parse_resource_config(text))
        assert [node["instance_id"] for node in nodes] == ["gpu-spare", "ip-10-1-0-11", "ip-10-1-0-12"]


def test_the_cluster_record_comes_from_resource_config_or_the_flag():
    settings = Settings(cluster="given")
    cluster = head_node.cluster_record(settings, "us-west-2", CONFIG, "10.1.0.10")
    assert (cluster["name"], cluster["id"], cluster["type"]) == ("hp", "abcdef123456", "slurm")
    assert cluster["instance_groups"] == ["controller-machine", "workers"]
    assert head_node.cluster_record(settings, "us-west-2", {}, "10.1.0.10")["name"] == "given"


@pytest.mark.parametrize("gateway, via, message", [
    (None, "ssh", "needs --gateway"),
    ("ubuntu@controller", "ssh", "--gateway controller is found through the SageMaker API"),
    ("ubuntu@10.1.0.10", "ssm", "needs a gateway reached by SSH"),
])
def test_the_head_node_must_be_named_and_reached_by_ssh(gateway, via, message):
    settings = Settings(cluster="hp", transport="ssh", ssh=Ssh(gateway=gateway, gateway_via=via),
                        discovery="head-node")
    with pytest.raises(UsageError, match=message):
        head_node.head_node_address(settings)
    assert not discover.head_node_configured(settings)


def test_auto_discovery_falls_back_only_for_an_unreachable_api_and_a_named_head_node():
    unreachable = botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    denied = botocore.exceptions.ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}},
                                             "DescribeCluster")
    throttled = botocore.exceptions.ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow"}},
                                                "DescribeCluster")
    assert discover.api_unreachable(unreachable) and discover.api_unreachable(denied)
    assert not discover.api_unreachable(throttled)
    head = dict(cluster="hp", transport="ssh", ssh=Ssh(gateway="ubuntu@10.1.0.10"))
    assert discover.head_node_configured(Settings(**head))
    assert not discover.head_node_configured(Settings(**head, discovery="api"))
    assert not discover.head_node_configured(Settings(**dict(head, transport="ssm")))
