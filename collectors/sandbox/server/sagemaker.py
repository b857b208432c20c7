"""moto's SageMaker, patched for what HyperPod has and moto lacks, and read by the middleware's handlers.

moto lacks parts of the HyperPod API: Orchestrator, node addresses and placement, working pagination,
random-looking cluster ids, a cluster named by its ARN. The patches add them; they touch moto
internals, so `check_moto_internals()` runs first and stops the server loudly when those internals
have moved. app.serve() applies them, once, before it listens.
"""

import functools
import hashlib
import inspect
from collections.abc import Callable

import moto
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.sagemaker import models as sagemaker_models
from moto.sagemaker.exceptions import ValidationError
from moto.sagemaker.responses import SageMakerResponse

MAX_RESULTS_RANGE = range(1, 101)  # the real ListClusterNodes accepts 1..100

# ---------------------------------------------------------------------------------------------
# Deterministic stand-ins for what AWS assigns at random, so a sandbox is reproducible.


def cluster_id_for(cluster_name: str) -> str:
    """12 characters of [a-z0-9], like the last segment of a real cluster ARN."""
    number = int.from_bytes(hashlib.sha256(cluster_name.encode()).digest(), "big")
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    digits = []
    for _ in range(12):
        number, digit = divmod(number, 36)
        digits.append(alphabet[digit])
    return "".join(digits)


def instance_id_for(cluster_name: str, group: str, index: int) -> str:
    return "i-0" + hashlib.sha256(f"{cluster_name}/{group}/{index}".encode()).hexdigest()[:16]


def node_ip(node_index: int) -> str:
    """Loopback addresses only, so nothing ever tries to reach a private-range address."""
    return f"127.10.{node_index // 250}.{10 + node_index % 250}"


def private_dns_hostname(ip: str, region: str) -> str:
    return f"ip-{ip.replace('.', '-')}.{region}.compute.internal"


def availability_zone_id(region: str) -> str:
    """us-west-2 -> usw2-az1: the shape of a real AZ id."""
    area, direction, number = region.split("-")
    return f"{area}{direction[0]}{number}-az1"


# ---------------------------------------------------------------------------------------------
# moto patches


def check_moto_internals() -> None:
    """Fail loudly when the moto code these patches rely on has moved (moto is pinned to 5.2.*)."""
    problems = []
    if not moto.__version__.startswith("5.2."):
        problems.append(f"moto {moto.__version__} is not 5.2.*")
    expected_methods = {
        sagemaker_models.Cluster: ["__init__", "describe"],
        sagemaker_models.ClusterNode: ["__init__", "describe", "summary"],
        sagemaker_models.SageMakerModelBackend: [
            "create_cluster", "describe_cluster", "describe_cluster_node", "list_cluster_nodes", "delete_cluster",
        ],
        SageMakerResponse: ["create_cluster", "list_cluster_nodes"],
    }
    for owner, names in expected_methods.items():
        problems += [f"{owner.__name__}.{name} is missing" for name in names if not hasattr(owner, name)]
    cluster_params = list(inspect.signature(sagemaker_models.Cluster.__init__).parameters)
    if cluster_params[:4] != ["self", "cluster_name", "region_name", "account_id"]:
        problems.append(f"Cluster.__init__ parameters changed: {cluster_params}")
    node_source = inspect.getsource(sagemaker_models.ClusterNode.__init__)
    for attribute in ("self.instance_id", "self.status"):
        if attribute not in node_source:
            problems.append(f"ClusterNode.__init__ no longer sets {attribute}")
    pagination = sagemaker_models.PAGINATION_MODEL.get("list_cluster_nodes", {})
    if pagination.get("unique_attribute") != "arn":
        problems.append(f"list_cluster_nodes pagination changed: {pagination}")
    if problems:
        raise RuntimeError("sandbox server: moto internals moved, patches would be wrong: " + "; ".join(problems))


def resolve_cluster_name(backend, name_or_arn: str) -> str:
    """Real APIs take the cluster name or its ARN; moto's ARN handling assumes the ARN ends in the name."""
    for cluster in backend.clusters.values():
        if cluster.arn == name_or_arn:
            return cluster.cluster_name
    return name_or_arn


def accepting_cluster_arn(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if "cluster_name" in kwargs:
            kwargs["cluster_name"] = resolve_cluster_name(self, kwargs["cluster_name"])
        else:
            args = (resolve_cluster_name(self, args[0]), *args[1:])
        return method(self, *args, **kwargs)

    return wrapper


def with_cluster_id_arn(original_init: Callable) -> Callable:
    @functools.wraps(original_init)
    def init(self, cluster_name, region_name, account_id, *args, **kwargs):
        original_init(self, cluster_name, region_name, account_id, *args, **kwargs)
        # Real ARNs end in a random cluster id, not the name; SSM targets use that id.
        self.arn = f"{self.arn.rsplit('/', 1)[0]}/{cluster_id_for(cluster_name)}"
        self.orchestrator = None
        self.node_recovery = "Automatic"
        self.node_provisioning_mode = None

    return init


def give_nodes_real_identities(cluster) -> None:
    """Replace moto's `<group>-<i>` node ids with instance ids, and add addresses and placement."""
    nodes = list(cluster.nodes.values())
    cluster.nodes = {}
    for node_index, node in enumerate(nodes):
        _, _, index_in_group = node.instance_id.rpartition("-")
        node.instance_id = instance_id_for(cluster.cluster_name, node.instance_group_name, int(index_in_group))
        node.private_primary_ip = node_ip(node_index)
        node.private_dns_hostname = private_dns_hostname(node.private_primary_ip, cluster.region_name)
        node.placement = {
            "AvailabilityZone": f"{cluster.region_name}a",
            "AvailabilityZoneId": availability_zone_id(cluster.region_name),
        }
        node.status_message = ""
        cluster.nodes[node.instance_id] = node


def create_cluster_with_orchestrator(original: Callable) -> Callable:
    @functools.wraps(original)
    def create_cluster(self):
        result = original(self)
        cluster = self.sagemaker_backend.clusters[self._get_param("ClusterName")]
        cluster.orchestrator = self._get_param("Orchestrator")
        cluster.node_recovery = self._get_param("NodeRecovery") or "Automatic"
        # Continuous: what ListClusterEvents and DescribeClusterEvent need (ClusterEventStore).
        cluster.node_provisioning_mode = self._get_param("NodeProvisioningMode")
        give_nodes_real_identities(cluster)
        return result

    return create_cluster


def list_cluster_nodes_with_limit_check(original: Callable) -> Callable:
    @functools.wraps(original)
    def list_cluster_nodes(self):
        max_results = self._get_param("MaxResults")
        if max_results is not None and max_results not in MAX_RESULTS_RANGE:
            raise ValidationError(
                message=f"1 validation error detected: Value '{max_results}' at 'maxResults' failed to satisfy "
                f"constraint: Member must have value between 1 and {MAX_RESULTS_RANGE[-1]}"
            )
        return original(self)

    return list_cluster_nodes


def cluster_describe_with_orchestrator(original: Callable) -> Callable:
    @functools.wraps(original)
    def describe(self):
        description = original(self)
        if self.orchestrator:
            description["Orchestrator"] = self.orchestrator
        description["NodeRecovery"] = self.node_recovery
        if self.node_provisioning_mode:
            description["NodeProvisioningMode"] = self.node_provisioning_mode
        description["InstanceGroups"] = [{**group, "Status": "InService"} for group in self.instance_groups]
        return description

    return describe


def node_instance_status(node) -> dict:
    return {"Status": node.status, "Message": node.status_message}


def node_describe_with_addresses(original: Callable) -> Callable:
    @functools.wraps(original)
    def describe(self):
        details = original(self)
        details["InstanceStatus"] = node_instance_status(self)
        details["PrivatePrimaryIp"] = self.private_primary_ip
        details["PrivateDnsHostname"] = self.private_dns_hostname
        details["Placement"] = self.placement
        return details

    return describe


def node_summary_with_hostname(original: Callable) -> Callable:
    @functools.wraps(original)
    def summary(self):
        node_summary = original(self)
        node_summary["InstanceStatus"] = node_instance_status(self)
        node_summary["PrivateDnsHostname"] = self.private_dns_hostname
        return node_summary

    return summary


def apply_moto_patches() -> None:
    check_moto_internals()
    # moto's paginator keys pages on `arn`, which ClusterNode lacks (HTTP 500 with MaxResults).
    sagemaker_models.ClusterNode.arn = property(lambda node: node.instance_id)
    cluster_class = sagemaker_models.Cluster
    cluster_class.__init__ = with_cluster_id_arn(cluster_class.__init__)
    cluster_class.describe = cluster_describe_with_orchestrator(cluster_class.describe)
    node_class = sagemaker_models.ClusterNode
    node_class.describe = node_describe_with_addresses(node_class.describe)
    node_class.summary = node_summary_with_hostname(node_class.summary)
    backend = sagemaker_models.SageMakerModelBackend
    for name in ("describe_cluster", "describe_cluster_node", "list_cluster_nodes", "delete_cluster"):
        setattr(backend, name, accepting_cluster_arn(getattr(backend, name)))
    SageMakerResponse.create_cluster = create_cluster_with_orchestrator(SageMakerResponse.create_cluster)
    SageMakerResponse.list_cluster_nodes = list_cluster_nodes_with_limit_check(
        SageMakerResponse.list_cluster_nodes
    )


# ---------------------------------------------------------------------------------------------
# Reading moto's state


def sagemaker_clusters(region: str | None = None) -> list:
    """Clusters of the default account, in one region or in every region moto has created."""
    account_backends = sagemaker_models.sagemaker_backends[DEFAULT_ACCOUNT_ID]
    # dict.values() lists only the regions already created; the subscript would create one.
    backends = [account_backends[region]] if region else list(dict.values(account_backends))
    return [cluster for backend in backends for cluster in list(backend.clusters.values())]


def find_cluster(name_or_arn: str, region: str | None = None):
    for cluster in sagemaker_clusters(region):
        if name_or_arn in (cluster.cluster_name, cluster.arn):
            return cluster
    return None
