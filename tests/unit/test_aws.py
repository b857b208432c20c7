"""The boto3 session's region: the flag, then AWS_DEFAULT_REGION or AWS_REGION, then the profile."""

import pytest

from collectors.aws import Aws
from collectors.errors import UsageError
from collectors.settings import Settings


@pytest.fixture
def no_aws_environment(monkeypatch, tmp_path):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    return monkeypatch


def test_aws_region_is_read_as_the_cli_v2_reads_it(no_aws_environment):
    no_aws_environment.setenv("AWS_REGION", "eu-west-1")
    assert Aws(Settings()).region == "eu-west-1"
    assert Aws(Settings(region="us-east-2")).region == "us-east-2"  # the flag wins


def test_no_region_anywhere_is_one_clear_line(no_aws_environment):
    with pytest.raises(UsageError, match="no AWS region: pass --region"):
        Aws(Settings())
