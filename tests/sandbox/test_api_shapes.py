"""Every response the sandbox gives to the calls the tool makes matches botocore's service model.

The raw JSON (SageMaker, SSM, CloudWatch Logs) and XML and headers (S3) are walked against each operation's output
shape in botocore's service-2.json (tests/sandbox/api_shapes.py): a member the model does not
have, a value of the wrong type or outside an enum, a missing required member all fail. The sandbox's
AWS alone is started (no nodes: no root needed).
"""

from __future__ import annotations

import json

import pytest

from collectors.cluster_api import log_group_name
from collectors.sandbox import Sandbox, SandboxSpec, sandbox_client
from tests.sandbox.api_shapes import capture_raw_responses, missing, problems

PART_SIZE = 5 * 1024 * 1024  # S3's smallest part but the last
# What the real services send for a running cluster and what the tool reads (DESIGN.md, discover):
# the node addresses the sandbox adds to moto's answers among them.
EXPECTED_MEMBERS = {
    "DescribeCluster": ["ClusterArn", "ClusterName", "ClusterStatus", "CreationTime", "InstanceGroups[].Status",
                        "InstanceGroups[].InstanceGroupName", "InstanceGroups[].CurrentCount", "Orchestrator",
                        "NodeRecovery", "NodeProvisioningMode", "VpcConfig.Subnets"],
    "ListClusterNodes": ["ClusterNodeSummaries[].InstanceId", "ClusterNodeSummaries[].InstanceGroupName",
                         "ClusterNodeSummaries[].InstanceType", "ClusterNodeSummaries[].LaunchTime",
                         "ClusterNodeSummaries[].InstanceStatus.Status", "ClusterNodeSummaries[].PrivateDnsHostname"],
    "DescribeClusterNode": ["NodeDetails.InstanceId", "NodeDetails.InstanceGroupName", "NodeDetails.InstanceType",
                            "NodeDetails.InstanceStatus.Status", "NodeDetails.LaunchTime",
                            "NodeDetails.PrivatePrimaryIp", "NodeDetails.PrivateDnsHostname",
                            "NodeDetails.Placement.AvailabilityZone"],
    # What the cluster stage and the report read of HyperPod's events (its cluster events reference).
    "ListClusterEvents": ["Events[].EventId", "Events[].ClusterArn", "Events[].ClusterName", "Events[].ResourceType",
                          "Events[].EventTime", "Events[].EventLevel", "Events[].Description"],
    "DescribeClusterEvent": ["EventDetails.EventId", "EventDetails.InstanceId", "EventDetails.InstanceGroupName",
                             "EventDetails.EventTime", "EventDetails.EventLevel", "EventDetails.Description",
                             "EventDetails.EventDetails.EventMetadata.Instance"],
    "DescribeLogStreams": ["logStreams[].logStreamName", "logStreams[].lastEventTimestamp"],
    "GetLogEvents": ["events[].timestamp", "events[].message", "nextForwardToken", "nextBackwardToken"],
    "FilterLogEvents": ["events[].logStreamName", "events[].timestamp", "events[].message"],
    "StartSession": ["SessionId", "TokenValue", "StreamUrl"],
    "TerminateSession": ["SessionId"],
}


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    sandbox = Sandbox(tmp_path_factory.mktemp("shapes") / "root")
    spec = SandboxSpec.simple(type="eks", nodes=3)
    try:
        endpoint, cluster, _ = sandbox.start_aws(spec)
        sandbox.create_bucket("hyperpod-sandbox-eu", "eu-west-1")
        sandbox.create_bucket("hyperpod-sandbox-use1", "us-east-1")
        yield endpoint, cluster, sandbox.root
    finally:
        sandbox.down()


def recording(aws, service: str, region: str = "us-west-2"):
    endpoint, _, root = aws
    client = sandbox_client(service, endpoint, region, root)
    return client, capture_raw_responses(client)


def assert_match(service: str, responses: list[dict], operations: set[str]) -> None:
    assert {response["operation"] for response in responses} >= operations  # every call was made and seen
    found = [problem for response in responses for problem in problems(service, response)]
    found += [gap for response in responses if response["operation"] in EXPECTED_MEMBERS
              for gap in missing(response, EXPECTED_MEMBERS[response["operation"]])]
    assert found == []


def test_sagemaker_describe_and_list_calls_match_the_model(aws):
    _, cluster, _ = aws
    sagemaker, responses = recording(aws, "sagemaker")
    sagemaker.describe_cluster(ClusterName=cluster.name)
    sagemaker.describe_cluster(ClusterName=cluster.arn)
    first = sagemaker.list_cluster_nodes(ClusterName=cluster.name, MaxResults=2)
    assert "NextToken" in first
    last = sagemaker.list_cluster_nodes(ClusterName=cluster.name, MaxResults=2, NextToken=first["NextToken"])
    assert "NextToken" not in last and len(first["ClusterNodeSummaries"] + last["ClusterNodeSummaries"]) == 3
    for node in cluster.nodes:
        sagemaker.describe_cluster_node(ClusterName=cluster.name, NodeId=node.instance_id)
    assert_match("sagemaker", responses, {"DescribeCluster", "ListClusterNodes", "DescribeClusterNode"})


def test_sagemaker_cluster_event_calls_match_the_model(aws):
    _, cluster, _ = aws
    sagemaker, responses = recording(aws, "sagemaker")
    first = sagemaker.list_cluster_events(ClusterName=cluster.name, MaxResults=2)
    assert "NextToken" in first
    sagemaker.list_cluster_events(ClusterName=cluster.arn, MaxResults=2, NextToken=first["NextToken"])
    node = cluster.nodes[0].instance_id
    mine = sagemaker.list_cluster_events(ClusterName=cluster.name, NodeId=node, SortOrder="Ascending")["Events"]
    sagemaker.describe_cluster_event(ClusterName=cluster.name, EventId=mine[0]["EventId"])
    assert_match("sagemaker", responses, {"ListClusterEvents", "DescribeClusterEvent"})


def test_cloudwatch_logs_calls_match_the_model(aws):
    _, cluster, _ = aws
    logs, responses = recording(aws, "logs")
    group = log_group_name(cluster.name, cluster.arn)
    streams = logs.describe_log_streams(logGroupName=group, limit=2)["logStreams"]
    name = streams[0]["logStreamName"]
    newest = logs.get_log_events(logGroupName=group, logStreamName=name, startFromHead=False, limit=2)
    logs.get_log_events(logGroupName=group, logStreamName=name, startFromHead=False, limit=2,
                        nextToken=newest["nextBackwardToken"])
    logs.filter_log_events(logGroupName=group, logStreamNames=[name])
    assert_match("logs", responses, {"DescribeLogStreams", "GetLogEvents", "FilterLogEvents"})


def test_ssm_session_calls_match_the_model(aws):
    _, cluster, _ = aws
    ssm, responses = recording(aws, "ssm")
    node = cluster.nodes[0]
    target = f"sagemaker-cluster:{cluster.arn.rsplit('/', 1)[-1]}_{node.group}-{node.instance_id}"
    session = ssm.start_session(Target=target)
    ssm.terminate_session(SessionId=session["SessionId"])
    assert_match("ssm", responses, {"StartSession", "TerminateSession"})


def test_s3_calls_match_the_model(aws):
    s3, responses = recording(aws, "s3")
    bucket = "hyperpod-sandbox-reports"
    s3.head_bucket(Bucket=bucket)
    for name in (bucket, "hyperpod-sandbox-eu", "hyperpod-sandbox-use1"):
        s3.get_bucket_location(Bucket=name)
    for key in ("runs/r1/status/a.json", "runs/r1/status/b.json", "runs/r1/instances/a.tar.gz"):
        s3.put_object(Bucket=bucket, Key=key, Body=b'{"state":"done"}')
    s3.head_object(Bucket=bucket, Key="runs/r1/status/a.json")
    s3.get_object(Bucket=bucket, Key="runs/r1/status/a.json")["Body"].read()
    page = s3.list_objects_v2(Bucket=bucket, Prefix="runs/r1/status/", MaxKeys=1)
    s3.list_objects_v2(Bucket=bucket, Prefix="runs/r1/status/", MaxKeys=1,
                       ContinuationToken=page["NextContinuationToken"])
    s3.list_objects_v2(Bucket=bucket, Prefix="runs/r1/", Delimiter="/")
    s3.list_objects_v2(Bucket=bucket, Prefix="nothing-here/")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="runs/r1/big.tar.gz")
    parts = [s3.upload_part(Bucket=bucket, Key="runs/r1/big.tar.gz", UploadId=upload["UploadId"], PartNumber=number,
                            Body=b"x" * size)["ETag"] for number, size in ((1, PART_SIZE), (2, 10))]
    s3.complete_multipart_upload(Bucket=bucket, Key="runs/r1/big.tar.gz", UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": [{"ETag": etag, "PartNumber": number}
                                                            for number, etag in enumerate(parts, 1)]})
    s3.delete_object(Bucket=bucket, Key="runs/r1/status/b.json")
    assert_match("s3", responses, {
        "HeadBucket", "GetBucketLocation", "PutObject", "HeadObject", "GetObject", "ListObjectsV2",
        "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "DeleteObject"})


# The check itself: a field spelled differently, or one the model does not have, fails.


def test_a_renamed_or_invented_json_field_is_caught(aws):
    _, cluster, _ = aws
    sagemaker, responses = recording(aws, "sagemaker")
    sagemaker.describe_cluster_node(ClusterName=cluster.name, NodeId=cluster.nodes[0].instance_id)
    details = json.loads(responses[0]["body"])
    details["NodeDetails"]["PrivateDNSHostname"] = details["NodeDetails"].pop("PrivateDnsHostname")
    details["NodeDetails"]["InstanceStatus"]["Status"] = "Healthy"
    renamed = dict(responses[0], body=json.dumps(details).encode())
    found = problems("sagemaker", renamed)
    assert found[0] == "DescribeClusterNode.NodeDetails.PrivateDNSHostname: not a member of the model's shape"
    assert found[1].startswith("DescribeClusterNode.NodeDetails.InstanceStatus.Status: 'Healthy' is not one of "
                               "the model's values ['Running', ")
    assert len(found) == 2


def test_a_renamed_xml_element_or_unmodelled_header_is_caught(aws):
    s3, responses = recording(aws, "s3")
    s3.put_object(Bucket="hyperpod-sandbox-reports", Key="k", Body=b"x")
    s3.list_objects_v2(Bucket="hyperpod-sandbox-reports", Prefix="k")
    listed = responses[-1]
    renamed = dict(listed, body=listed["body"].replace(b"KeyCount>", b"Keycount>"))  # opening and closing tags
    assert problems("s3", renamed) == ["ListObjectsV2.Keycount: not a member of the model's shape"]
    invented = dict(responses[0], headers={**responses[0]["headers"], "x-amz-sandbox-only": "1"})  # PutObject
    assert problems("s3", invented) == ["PutObject header x-amz-sandbox-only: not a member of the model's shape"]
