"""Each node's `aws`: the real AWS CLI, pointed at the sandbox's S3 and instance metadata."""

import os
import shlex
import sys
from pathlib import Path

from collectors.sandbox.content import ClusterFacts, stand_in_kind
from collectors.sandbox.nodes import node_dir

# In each node (its own /opt): where the sandbox's S3 and instance metadata are, for the node's `aws`.
NODE_AWS_CONFIG = "/opt/sandbox-aws/config"


def node_aws_cli() -> str:
    """The node's `aws`: the real AWS CLI (the host's awscli), where a HyperPod node has it.

    Whatever shell runs it (an SSM session, sshd, sudo's reset environment), it reads the node's
    config: the sandbox's S3 and instance metadata, both on loopback. Node shells disable the
    instance metadata for every other SDK (entry.node_shell_env); this one's is not 169.254.169.254.
    Without the config it refuses to run, so it can never send a request to AWS itself.
    """
    return (
        "#!/bin/sh\n"
        "# The real AWS CLI, pointed at the sandbox (collectors/sandbox/node_aws.py).\n"
        f"config={NODE_AWS_CONFIG}\n"
        '[ -r "$config" ] || { echo "aws: $config is missing: this sandbox node cannot reach S3" >&2; exit 255; }\n'
        "AWS_CONFIG_FILE=$config AWS_SHARED_CREDENTIALS_FILE=/dev/null\n"
        "export AWS_CONFIG_FILE AWS_SHARED_CREDENTIALS_FILE\n"
        "unset AWS_EC2_METADATA_DISABLED\n"
        f"exec {shlex.quote(sys.executable)} -m awscli \"$@\"\n"
    )


def node_aws_config(server: dict) -> str:
    """The nodes' AWS config: only where the sandbox's S3 and instance metadata listen (both loopback).
    No keys and no region: the CLI gets its credentials from the instance metadata, as on a real node."""
    return (
        "[default]\n"
        f"endpoint_url = {server['endpoint']}\n"
        f"ec2_metadata_service_endpoint = {server['imds_endpoint']}\n"
    )


def give_nodes_aws(root: Path, cluster: ClusterFacts, server: dict) -> None:
    """`aws` on every node's PATH (in the stand-ins' /usr/local/bin) and the config node shells point it at."""
    for kind in {stand_in_kind(node) for node in cluster.nodes}:
        cli = root / "shared" / kind / "aws"
        cli.write_text(node_aws_cli())
        cli.chmod(0o755)
    config = root / "shared" / "node-aws-config"
    config.write_text(node_aws_config(server))
    config.chmod(0o644)
    in_node = Path(NODE_AWS_CONFIG)
    for node in cluster.nodes:  # the same file for every node, linked into each node's own /opt
        folder = node_dir(root, node.instance_id) / "opt" / in_node.parent.relative_to("/opt")
        folder.mkdir(mode=0o755)
        os.link(config, folder / in_node.name)
