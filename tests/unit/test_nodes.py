import io

from collectors.nodes import ip_from_hostname, match_names, split_names

NODES = [
    {"instance_id": "i-0aaa", "hostname": "ip-10-1-2-3"},
    {"instance_id": "i-0bbb", "hostname": "ip-10-1-2-4"},
]


def test_split_names_takes_repeats_commas_and_stdin():
    stdin = io.StringIO("i-0bbb\n# a comment\nip-10-1-2-3, hyperpod-i-0aaa\n\n")
    assert split_names(["i-0aaa,i-0bbb", "-"], stdin) == ["i-0aaa", "i-0bbb", "ip-10-1-2-3", "hyperpod-i-0aaa"]


def test_match_names_resolves_every_form_once():
    chosen, unmatched = match_names(NODES, ["hyperpod-i-0aaa", "ip-10-1-2-4.us-west-2.compute.internal", "i-0aaa",
                                            "ip-9-9-9-9", "i-0zzz", "hyperpod-i-0zzz"])
    assert [n["instance_id"] for n in chosen] == ["i-0aaa", "i-0bbb"]
    assert unmatched == ["ip-9-9-9-9", "i-0zzz", "hyperpod-i-0zzz"]


def test_ip_from_aws_hostnames():
    assert ip_from_hostname("ip-10-1-2-3") == "10.1.2.3"
    assert ip_from_hostname("gpu-node-7") is None
    assert ip_from_hostname(None) is None
