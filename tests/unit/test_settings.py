from pathlib import Path

import pytest

from collectors.errors import UsageError
from collectors.settings import S3Path, Settings, check_environment, config_tree


def test_defaults_match_the_earlier_tool():
    settings = Settings.from_config(None)
    assert settings.max_workers == 16
    assert (settings.timeouts.session_prompt, settings.timeouts.node_script, settings.timeouts.kubectl) == (60, 900, 600)


def test_config_values_then_flags_override():
    settings = Settings.from_config({"region": "eu-west-1", "max_workers": 8, "timeouts": {"node_script": 1200}},
                                    region="us-east-1", max_workers=None)
    assert settings.region == "us-east-1"
    assert settings.max_workers == 8
    assert settings.timeouts.node_script == 1200


def test_env_strings_are_typed():
    # Invoke hands INVOKE_HYPERPOD_* values over as strings because config_tree() leaves are None.
    settings = Settings.from_config({"max_workers": "32", "sandbox": "true", "timeouts": {"kubectl": "30"}})
    assert settings.max_workers == 32 and settings.sandbox is True and settings.timeouts.kubectl == 30
    tree = config_tree()
    assert all(value is None for key, value in tree.items() if key not in ("timeouts", "session", "ssh"))
    assert all(value is None for group in ("timeouts", "session", "ssh") for value in tree[group].values())


@pytest.mark.parametrize("config, message", [
    ({"max_wokers": 4}, "unknown config key(s) under 'hyperpod': max_wokers"),
    ({"max_workers": "many"}, "hyperpod.max_workers must be a positive integer"),
    ({"max_workers": 0}, "hyperpod.max_workers must be a positive integer"),
    ({"timeouts": {"node_script": -5}}, "hyperpod.timeouts.node_script must be a positive integer"),
    ({"timeouts": {"prompt": 5}}, "unknown config key(s) under hyperpod.timeouts: prompt"),
    ({"sandbox": "perhaps"}, "hyperpod.sandbox must be true or false"),
    ({"region": 5}, "hyperpod.region must be a string"),
])
def test_bad_config_is_a_clear_usage_error(config, message):
    with pytest.raises(UsageError) as caught:
        Settings.from_config(config)
    assert message in str(caught.value)


def test_environment_is_checked_before_invoke_casts_it():
    check_environment({"INVOKE_HYPERPOD_MAX_WORKERS": "4", "INVOKE_HYPERPOD_TIMEOUTS_KUBECTL": "9", "PATH": "/bin"})
    with pytest.raises(UsageError, match="INVOKE_HYPERPOD_MAX_WORKERS|positive integer"):
        check_environment({"INVOKE_HYPERPOD_MAX_WORKERS": "lots"})
    with pytest.raises(UsageError, match="INVOKE_HYPERPOD_COLOUR"):
        check_environment({"INVOKE_HYPERPOD_COLOUR": "blue"})


@pytest.mark.parametrize("text, bucket, prefix", [
    ("s3://my-bucket", "my-bucket", "hyperpod-issue-reports"),
    ("s3://my-bucket/", "my-bucket", "hyperpod-issue-reports"),
    ("s3://my-bucket/a/b/", "my-bucket", "a/b"),
    # What S3 allows is carried as it is: S3 keys are plain strings.
    ("s3://my.bucket/night shift/+1=é", "my.bucket", "night shift/+1=é"),
    ("s3://my-bucket/a..b/.c", "my-bucket", "a..b/.c"),
])
def test_s3_path_parsing(text, bucket, prefix):
    assert S3Path.parse(text) == S3Path(bucket, prefix)


@pytest.mark.parametrize("text", ["my-bucket/x", "s3:/x", "s3://", "s3://UPPER/x", "s3://a/x", "s3://b..c/x",
                                  "https://bucket/x", "s3://bucket/a\nb"])
def test_malformed_s3_paths_are_rejected(text):
    with pytest.raises(UsageError):
        S3Path.parse(text)


@pytest.mark.parametrize("text", ["s3://my-bucket/a//b", "s3://my-bucket//a", "s3://my-bucket/a/../b",
                                  "s3://my-bucket/..", "s3://my-bucket/./a", "s3://my-bucket/a//"])
def test_prefixes_s3_would_store_other_than_written_are_refused(text):
    # Before: `..` was stored verbatim (then 404 on the node) and `//` silently collapsed.
    with pytest.raises(UsageError, match="empty, '.' or '..' segment"):
        S3Path.parse(text)


def test_a_prefix_that_leaves_no_room_for_the_runs_keys_is_refused():
    with pytest.raises(UsageError, match="S3 keys are at most 1024 bytes"):
        S3Path.parse("s3://my-bucket/" + "é" * 400)


@pytest.mark.parametrize("config, message", [
    # SigV4 allows 7 days at most; S3 refuses a URL that claims more.
    ({"presign_expiry": 604801}, "SigV4 presigned URLs last at most 7 days (604800s)"),
    # The node would still be uploading after its URLs expired: S3 would refuse the tarball.
    ({"presign_expiry": 900}, "a node may still upload 960s after its URLs are signed"),
    ({"presign_expiry": 3000, "timeouts": {"node_script": 3000}}, "S3 would refuse its tarball"),
    # Below this the node's own deadline cannot end before the orchestrator stops waiting.
    ({"timeouts": {"node_script": 119}}, "timeouts.node_script is 119s; it must be at least 180s"),
    ({"timeouts": {"node_script": 179}}, "must be at least 180s"),
])
def test_time_budgets_that_cannot_all_hold_are_bad_input(config, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_config(config)


def test_time_budgets_are_checked_on_flags_too():
    with pytest.raises(UsageError, match="at most 7 days"):
        Settings.from_config(None).with_flags(presign_expiry=8 * 86400)
    assert Settings.from_config({"presign_expiry": 604800, "timeouts": {"node_script": 180}}).presign_expiry == 604800


def test_missing_cluster_and_s3_path_say_which_flag():
    settings = Settings.from_config(None)
    with pytest.raises(UsageError, match="--cluster"):
        settings.require_cluster()
    with pytest.raises(UsageError, match="--s3-path"):
        settings.require_s3_path()


def test_the_readme_table_is_the_one_the_declarations_make():
    from pathlib import Path

    from collectors.settings import markdown_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("<!-- settings table: generated from collectors/settings.py KEYS -->\n")
    end = readme.index("\n<!-- end of settings table -->")
    assert readme[start:end].split("\n", 1)[1] == markdown_table()


def test_every_setting_has_one_default_and_one_home():
    from dataclasses import fields

    from collectors.settings import GROUP_CLASSES, KEYS

    settings = Settings()
    for key in KEYS:
        holder = getattr(settings, key.group) if key.group else settings
        value = getattr(holder, key.name)
        assert value == (Path(key.default) if key.path == "runs_dir" else key.default), key.path
    declared = {key.path for key in KEYS}
    made = {f.name for f in fields(Settings) if f.name not in GROUP_CLASSES}
    made |= {f"{group}.{f.name}" for group, cls in GROUP_CLASSES.items() for f in fields(cls)}
    assert made == declared


def test_the_transport_setting_names_exactly_the_registered_transports():
    from collectors import transports
    from collectors.settings import KEYS_BY_PATH

    assert set(KEYS_BY_PATH["transport"].choices) == set(transports.REGISTRY)
    assert all(path in KEYS_BY_PATH for path in transports.flag_keys())
