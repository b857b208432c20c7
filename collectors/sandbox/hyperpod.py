"""The sandbox's HyperPod cluster, created through the (emulated) API as an operator creates one: the
reports bucket, the EKS cluster or Slurm orchestrator, the instance groups; then its nodes as listed."""

from collectors.sandbox.content import ClusterFacts, Node
from collectors.sandbox.spec import GroupSpec, SandboxSpec

ACCOUNT_ID = "123456789012"  # moto's default account


def execution_role_name(spec: SandboxSpec) -> str:
    """The instance groups' IAM role: what the nodes' instance metadata hands out credentials for."""
    return f"{spec.cluster}-execution-role"


def instance_group_request(spec: SandboxSpec, group: GroupSpec) -> dict:
    return {
        "InstanceGroupName": group.name,
        "InstanceType": group.instance_type,
        "InstanceCount": group.count,
        "ExecutionRole": f"arn:aws:iam::{ACCOUNT_ID}:role/{execution_role_name(spec)}",
        "ThreadsPerCore": 1,
        # moto insists on the `s3://sagemaker-` prefix, as the real service's IAM policies do.
        "LifeCycleConfig": {
            "SourceS3Uri": f"s3://sagemaker-{spec.cluster}-lifecycle/config/",
            "OnCreate": "on_create.sh",
        },
    }


SECURITY_GROUP_IDS = ["sg-0a1b2c3d4e5f60718"]
SUBNET_IDS = ["subnet-0a1b2c3d4e5f60718"]


def create_orchestrator(spec: SandboxSpec, clients: dict) -> dict:
    if spec.type == "slurm":
        return {"Slurm": {"SlurmConfigStrategy": "Managed"}}
    eks_cluster = clients["eks"].create_cluster(
        name=f"{spec.cluster}-eks",
        roleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/{spec.cluster}-eks-role",
        resourcesVpcConfig={"subnetIds": SUBNET_IDS, "securityGroupIds": SECURITY_GROUP_IDS},
    )
    return {"Eks": {"ClusterArn": eks_cluster["cluster"]["arn"]}}


def create_bucket(s3, name: str, region: str) -> None:
    """A bucket in `region`, through a client for that region (S3 wants the request sent there)."""
    if region == "us-east-1":  # the one region that refuses a LocationConstraint
        s3.create_bucket(Bucket=name)
    else:
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})


def ip_from_hostname(fqdn: str) -> str:
    """ip-127-10-0-10.us-west-2.compute.internal -> 127.10.0.10, as tools read EC2 hostnames."""
    return fqdn.split(".", 1)[0].removeprefix("ip-").replace("-", ".")


def list_all_nodes(sagemaker, cluster_name: str) -> list[dict]:
    pages = sagemaker.get_paginator("list_cluster_nodes").paginate(
        ClusterName=cluster_name, PaginationConfig={"PageSize": 100}
    )
    return [summary for page in pages for summary in page["ClusterNodeSummaries"]]


def create_cluster(spec: SandboxSpec, clients: dict) -> tuple[ClusterFacts, dict[str, dict]]:
    """The cluster, and each node's scenario settings by instance id."""
    create_bucket(clients["s3"], spec.bucket, spec.region)
    arn = clients["sagemaker"].create_cluster(
        ClusterName=spec.cluster,
        InstanceGroups=[instance_group_request(spec, group) for group in spec.groups],
        VpcConfig={"SecurityGroupIds": SECURITY_GROUP_IDS, "Subnets": SUBNET_IDS},
        Orchestrator=create_orchestrator(spec, clients),
        NodeRecovery="Automatic",
        # Clusters created now provision continuously, which cluster events need.
        NodeProvisioningMode="Continuous",
    )["ClusterArn"]
    nodes, settings = [], {}
    index_in_group: dict[str, int] = {}
    # Listed in creation order, so the n-th node of a group is the scenario's "<group>/<n>".
    for summary in list_all_nodes(clients["sagemaker"], spec.cluster):
        group = summary["InstanceGroupName"]
        index = index_in_group[group] = index_in_group.get(group, -1) + 1
        settings[summary["InstanceId"]] = spec.node_settings_for(group, index)
        nodes.append(Node(
            instance_id=summary["InstanceId"],
            group=group,
            instance_type=summary["InstanceType"],
            ip=ip_from_hostname(summary["PrivateDnsHostname"]),
            fqdn=summary["PrivateDnsHostname"],
            pack=settings[summary["InstanceId"]]["fixture"],
            os=settings[summary["InstanceId"]]["os"],
            rsyslog=settings[summary["InstanceId"]]["rsyslog"],
        ))
    return ClusterFacts(name=spec.cluster, arn=arn, region=spec.region, type=spec.type, nodes=nodes), settings
