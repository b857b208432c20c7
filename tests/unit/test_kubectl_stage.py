"""The kubectl stage's decisions, without a cluster: which context, which commands, what is written."""

from __future__ import annotations

import tarfile

import pytest

from collectors.stages import kubectl
from collectors.stages.kubectl import Command, Outcome, PreflightError

EKS_ARN = "arn:aws:eks:us-west-2:123456789012:cluster/hp-eks"
CLUSTER = {"name": "hp", "region": "us-west-2", "eks_cluster_arn": EKS_ARN, "eks_cluster_name": "hp-eks"}


def kubeconfig(current: str, *contexts: tuple[str, str]) -> dict:
    """contexts: (context name, cluster entry name)."""
    return {
        "current-context": current,
        "contexts": [{"name": name, "context": {"cluster": cluster, "user": name}} for name, cluster in contexts],
        "clusters": [{"name": cluster, "cluster": {"server": "https://ABC.gr7.us-west-2.eks.amazonaws.com"}}
                     for _, cluster in contexts],
        "users": [{"name": name, "user": {"exec": {"command": "aws"}}} for name, _ in contexts],
    }


def test_the_context_whose_cluster_is_the_eks_arn_is_chosen_even_when_not_current():
    config = kubeconfig("other", ("other", "arn:aws:eks:us-west-2:123456789012:cluster/other"), (EKS_ARN, EKS_ARN))
    assert kubectl.choose_context(config, CLUSTER, None) == EKS_ARN


def test_a_context_whose_cluster_is_the_eks_name_matches_too_and_the_current_one_wins():
    config = kubeconfig("mine", ("first", "hp-eks"), ("mine", EKS_ARN))
    assert kubectl.choose_context(config, CLUSTER, None) == "mine"


def test_a_name_that_only_contains_the_eks_name_is_not_a_match():
    # The earlier tool accepted any context containing the name: "hp-eks-staging" is another cluster.
    config = kubeconfig("staging", ("staging", "hp-eks-staging"))
    with pytest.raises(PreflightError) as error:
        kubectl.choose_context(config, CLUSTER, None)
    message = str(error.value)
    assert "aws eks update-kubeconfig --name hp-eks --region us-west-2" in message
    assert "'staging' points at cluster 'hp-eks-staging'" in message and "--kube-context" in message


def test_an_empty_kubeconfig_says_to_create_the_context():
    with pytest.raises(PreflightError, match="no current context.*update-kubeconfig --name hp-eks"):
        kubectl.choose_context({}, CLUSTER, None)


def test_kube_context_given_is_used_as_is_and_must_exist():
    config = kubeconfig("a", ("a", "somewhere"), ("b", "elsewhere"))
    assert kubectl.choose_context(config, CLUSTER, "b") == "b"
    with pytest.raises(PreflightError, match="'c' is not in your kubeconfig \\(contexts: a, b\\)"):
        kubectl.choose_context(config, CLUSTER, "c")


def test_sandbox_mode_refuses_a_context_off_loopback_or_with_a_credential_plugin():
    local = {"server": "http://127.0.0.1:6443"}
    with pytest.raises(PreflightError, match="not to loopback"):
        kubectl.check_sandbox_context("c", {"server": "https://ABC.gr7.us-west-2.eks.amazonaws.com"}, {})
    with pytest.raises(PreflightError, match="goes to http://proxy.example:3128, not to loopback"):
        kubectl.check_sandbox_context("c", {**local, "proxy-url": "http://proxy.example:3128"}, {})
    with pytest.raises(PreflightError, match="credential plugin"):
        kubectl.check_sandbox_context("c", local, {"exec": {"command": "aws"}})
    kubectl.check_sandbox_context("c", local, {})


def test_custom_resources_are_hyperpod_kubeflow_and_kueue_groups_only():
    names = ["pods", "pytorchjobs.kubeflow.org", "hyperpodpytorchjobs.sagemaker.amazonaws.com",
             "inferenceendpointconfigs.inference.sagemaker.aws.amazon.com", "workloads.kueue.x-k8s.io",
             "deployments.apps", "certificates.cert-manager.io", "fakekubeflow.org"]
    assert [n for n in names if kubectl.is_custom_resource(n)] == names[1:5]


def test_plan_has_three_forms_per_resource_but_only_the_table_for_secrets():
    commands = kubectl.plan(["pytorchjobs.kubeflow.org"])
    forms = {}
    for command in commands:
        forms.setdefault(command.resource, set()).add(command.form)
    for resource in [*kubectl.BUILTIN_RESOURCES, "pytorchjobs.kubeflow.org"]:
        expected = {"wide"} if resource == "secrets" else {"wide", "describe", "json"}
        if resource == "nodes":
            expected.add("labels")
        assert forms[resource] == expected, resource
    secret_args = [c.args for c in commands if c.resource == "secrets"]
    assert secret_args == [("get", "secrets", "--all-namespaces", "-o", "wide")]
    # Slowest first: describe pods starts before anything else.
    assert commands[0].args == ("describe", "pods", "--all-namespaces")
    events = next(c for c in commands if c.resource == "events" and c.form == "wide")
    assert "--sort-by=.lastTimestamp" in events.args
    labels = next(c for c in commands if c.form == "labels")
    assert labels.args.count("-L") == 4 and "sagemaker.amazonaws.com/node-health-status" in labels.args


def test_secrets_json_comes_from_the_table_alone(tmp_path):
    (tmp_path / "secrets.wide.txt").write_text(
        "NAMESPACE   NAME      TYPE                             DATA   AGE\n"
        "training    hf-token  Opaque                           1      3d\n"
        "training    ecr-pull  kubernetes.io/dockerconfigjson   1      3d\n")
    kubectl.write_secrets_json(tmp_path)
    text = (tmp_path / "secrets.json").read_text()
    assert '"name": "hf-token"' in text and '"type": "kubernetes.io/dockerconfigjson"' in text
    assert '"keys": 1' in text and "never requested" in text


def outcome(resource: str, form: str, rc: int | None, timed_out: bool = False, error: str = "") -> Outcome:
    return Outcome(Command(resource, form, ("get", resource)), rc, 1.5, 10, timed_out, error)


def test_manifest_has_a_row_per_command_with_rc_time_bytes_and_timeouts(tmp_path):
    kubectl.write_manifest(tmp_path, [outcome("pods", "wide", 0), outcome("configmaps", "describe", None, True)])
    rows = [line.split("\t") for line in (tmp_path / "manifest.tsv").read_text().splitlines()]
    assert rows[0] == ["file", "rc", "seconds", "bytes", "timed_out", "command"]
    assert rows[1] == ["pods.wide.txt", "0", "1.50", "10", "0", "kubectl get pods"]
    assert rows[2][:2] == ["configmaps.describe.txt", ""] and rows[2][4] == "1"


def test_pack_puts_everything_under_one_folder(tmp_path):
    folder = tmp_path / kubectl.TOP_FOLDER
    folder.mkdir()
    (folder / "pods.json").write_text("{}")
    kubectl.pack(folder, tmp_path / kubectl.TARBALL)
    with tarfile.open(tmp_path / kubectl.TARBALL) as tar:
        assert sorted(tar.getnames()) == ["kubectl_resources", "kubectl_resources/pods.json"]
    assert not list(tmp_path.glob("*.partial"))


class FakeContext:
    class settings:  # noqa: N801 - stands in for Settings
        timeouts = type("Timeouts", (), {"kubectl": 30})

    class state:  # noqa: N801 - stands in for RunState
        cluster = CLUSTER
        run_id = "20260101_000000"


def test_failure_advice_says_what_to_do_for_timeouts_and_forbidden():
    failed = [outcome("configmaps", "describe", None, True, "timed out after 30 s"),
              outcome("secrets", "wide", 1, error='secrets is forbidden: User "x" cannot list resource "secrets"')]
    advice = kubectl.failure_advice(FakeContext, failed)
    assert "configmaps.describe.txt" in advice and "INVOKE_HYPERPOD_TIMEOUTS_KUBECTL" in advice
    assert "RBAC" in advice and "invoke kubectl --cluster hp --run-id 20260101_000000" in advice


@pytest.mark.parametrize("stderr, expected", [
    ("Unable to connect to the server: dial tcp 127.0.0.1:1: connect: connection refused", "does not answer"),
    ("error: You must be logged in to the server (Unauthorized)", "refused your credentials"),
    ('Error from server (Forbidden): User "x" cannot list resource', "may not list API resources"),
])
def test_api_errors_are_told_apart(stderr, expected):
    target = kubectl.Target("kubectl", "ctx", "https://x", None, [])
    assert expected in kubectl.api_error_message(FakeContext, target, stderr)
