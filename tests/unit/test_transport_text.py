"""The text handling of the SSM transport: redaction, output cleaning, outcome classification."""

from collectors.transports.base import SESSION_START_FAILED, SESSION_THROTTLED, SESSION_UNREACHABLE, RedactingLog, redact
from collectors.transports.protocol import classify_start_error, parse_result_line
from collectors.transports.ssm import clean_output

URL = ("http://127.0.0.1:5000/b/k.tar.gz?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20260101"
       "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=abc123")


def test_redact_known_secrets_and_any_presigned_query():
    other = "https://b.s3.amazonaws.com/k?AWSAccessKeyId=AKIA&Signature=xyz%3D&Expires=1"
    text = redact(f"put {URL} then {other}", [URL])
    assert "abc123" not in text and "xyz" not in text and "AKIA" not in text
    assert "<redacted>" in text


def test_transcript_never_holds_a_secret_split_across_writes(tmp_path):
    path = tmp_path / "t.log"
    log = RedactingLog(path, [URL])
    half = len(URL) // 2
    log.write("line one\nexport X='" + URL[:half])
    log.write(URL[half:] + "'\nlast line without newline " + URL)
    log.close()
    content = path.read_text()
    assert URL not in content and URL[:half] not in content and "abc123" not in content
    assert content.startswith("line one\nexport X='<redacted>'\nlast line without newline <redacted>")


def test_clean_output_normalises_crs_prompts_and_secrets():
    raw = f"# # [hpc] hostname rc=0\r\r\n\r\nprogress 50%\rprogress 100%\r\n#\r\nupload to {URL}\r\nHPC_RESULT status=ok"
    assert clean_output(raw, [URL]) == ("[hpc] hostname rc=0\nprogress 50%\nprogress 100%\n"
                                        "upload to <redacted>\nHPC_RESULT status=ok")


def test_result_line_uses_the_last_one():
    output = "HPC_RESULT status=failed\n[hpc] x\nHPC_RESULT status=ok items=3 failed_items=0 bytes=10 sha256=ab"
    assert parse_result_line(output) == {"status": "ok", "items": "3", "failed_items": "0", "bytes": "10",
                                         "sha256": "ab"}
    assert parse_result_line("no result here") == {}


def test_start_errors_are_classified():
    not_connected = ("\nAn error occurred (TargetNotConnected) when calling the StartSession operation: "
                     "sagemaker-cluster:abc_g-i-0 is not connected.\n")
    assert classify_start_error(not_connected).kind == SESSION_UNREACHABLE
    throttled = "An error occurred (ThrottlingException) when calling the StartSession operation: Rate exceeded"
    assert classify_start_error(throttled).kind == SESSION_THROTTLED
    other = classify_start_error("SessionManagerPlugin is not found. Please refer to SessionManager Documentation")
    assert other.kind == SESSION_START_FAILED and "SessionManagerPlugin is not found" in other.error


def test_env_file_lines_round_trip_through_a_real_shell(tmp_path):
    import subprocess

    from collectors.transports.ssm import MAX_TYPED_LINE, env_file_lines

    values = {"INSTANCE_GROUP": "odd 'group' \"name\" $HOME `id`\nline2", "HPC_UPLOAD_URL": URL,
              **{f"HPC_X{i}": "v" * 900 for i in range(8)}}
    lines = env_file_lines(values)
    assert len(lines) > 1 and all(len(line.encode()) <= MAX_TYPED_LINE for line in lines)
    script = "\n".join([f"d={tmp_path}"] + lines + ['. "$d/env"', 'printf "%s\\0" "$INSTANCE_GROUP" "$HPC_UPLOAD_URL" "$HPC_X7"'])
    out = subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout.split(b"\0")
    assert out[:3] == [values["INSTANCE_GROUP"].encode(), URL.encode(), b"v" * 900]
    assert (tmp_path / "env").stat().st_size > 0
