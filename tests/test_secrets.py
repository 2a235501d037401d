"""No secrets at rest: credentials given in the config, in URIs or in signed URLs never reach a
file the job writes (run reports, markers, captions, sidecars) or a log line."""

from __future__ import annotations

import functools
import io
import json
import logging
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from _corpus import write_good_images
from unsafe2safe_ray import open_output
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.job import run_job
from unsafe2safe_ray.plan.listing import InputError, list_input
from unsafe2safe_ray.storage.redact import is_secret_key, redact_text, redact_uri, redact_value

ACCESS_KEY = "AKIAU2SLEAKCANARY01"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+U2sLeakCanarySecret"
SIGNATURE = "f00dfacecafe0123456789abcdefSIGNATURE"
CREDENTIAL = "AKIAU2SCREDENTIALCANARY"


# --- the redaction itself -------------------------------------------------------------------

def test_credential_keys_are_recognized_at_any_spelling():
    for k in ("key", "secret", "token", "password", "session_token", "aws_secret_access_key",
              "aws_access_key_id", "SecretAccessKey", "sessionToken", "api-key", "hf_token", "Authorization"):
        assert is_secret_key(k), k
    for k in ("max_new_tokens", "endpoint_url", "region_name", "client_kwargs", "shard_size", "keys_dir"):
        assert not is_secret_key(k), k


def test_uris_lose_userinfo_and_signed_queries():
    assert redact_uri(f"https://user:pw@host.example/a/b.jpg?X-Amz-Signature={SIGNATURE}&X-Amz-Credential={CREDENTIAL}#f") \
        == "https://host.example/a/b.jpg"
    assert redact_uri("http://host:8080/x.png?sig=abc&token=def") == "http://host:8080/x.png"
    assert redact_uri(f"s3://{ACCESS_KEY}:{SECRET_KEY.replace('/', '_')}@bucket/k.jpg") == "s3://bucket/k.jpg"
    assert redact_uri("s3://bucket/k.jpg?versionId=7&X-Amz-Signature=x") == "s3://bucket/k.jpg?versionId=7"
    # Local paths keep '?' and '#', which are ordinary file name characters there.
    assert redact_uri("/data/img#1?.jpg") == "/data/img#1?.jpg"
    assert redact_uri("file:///data/img#1.jpg") == "file:///data/img#1.jpg"


def test_free_text_and_payloads_are_redacted():
    text = (f"GET https://h/x.jpg?X-Amz-Signature={SIGNATURE} failed; options "
            f"{{'key': '{ACCESS_KEY}', 'secret': '{SECRET_KEY}'}} password={SECRET_KEY} max_new_tokens=5")
    out = redact_text(text)
    assert ACCESS_KEY not in out and SECRET_KEY not in out and SIGNATURE not in out
    assert "max_new_tokens=5" in out and "https://h/x.jpg" in out
    payload = {"io": {"storage_options": {"key": ACCESS_KEY, "client_kwargs": {
        "endpoint_url": "http://u:pw@127.0.0.1:9", "aws_session_token": SECRET_KEY}}},
        "caption": {"max_new_tokens": 12}, "uris": [f"https://h/a.jpg?sig={SIGNATURE}"]}
    red = json.dumps(redact_value(payload))
    for secret in (ACCESS_KEY, SECRET_KEY, SIGNATURE, "u:pw@"):
        assert secret not in red
    assert '"max_new_tokens": 12' in red and "127.0.0.1:9" in red


def test_package_log_records_are_redacted(caplog):
    log = logging.getLogger("unsafe2safe_ray.some.module")
    with caplog.at_level(logging.INFO, logger="unsafe2safe_ray"):
        log.warning("reading %s with %s", f"https://h/x.jpg?X-Amz-Signature={SIGNATURE}", {"secret": SECRET_KEY})
    assert caplog.records
    text = caplog.text + " ".join(r.getMessage() for r in caplog.records)
    assert SIGNATURE not in text and SECRET_KEY not in text and "https://h/x.jpg" in text


# --- everything a run writes ----------------------------------------------------------------

def _readable(name: str, data: bytes) -> str:
    """A file's bytes plus, for compressed containers, what they hold, as text."""
    parts = [data.decode("latin-1")]
    if name.endswith(".parquet"):
        parts.append(json.dumps(pq.read_table(io.BytesIO(data)).to_pylist(), default=str))
    elif name.endswith(".tar"):
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            parts.extend(tar.extractfile(m).read().decode("latin-1") for m in tar if m.isfile())
    return "\n".join(parts)


def _local_files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): _readable(p.name, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


@pytest.mark.usefixtures("ray_local")
def test_storage_option_credentials_never_reach_the_output(s3_server, s3_bucket, tmp_path, caplog):
    bucket, fs = s3_bucket
    write_good_images(tmp_path / "in", 3, classes=1)
    for p in sorted((tmp_path / "in").rglob("*.jpg")):
        fs.put_file(str(p), f"{bucket}/data/{p.parent.name}/{p.name}")
    options = {"key": ACCESS_KEY, "secret": SECRET_KEY,
               "client_kwargs": {"endpoint_url": s3_server, "region_name": "us-east-1"}}
    cfg = load_config("none", overrides=["io.shard_size=2", f"io.storage_options={json.dumps(options)}"])
    with caplog.at_level(logging.DEBUG, logger="unsafe2safe_ray"):
        result = run_job(f"s3://{bucket}/data", f"s3://{bucket}/out", cfg, run_id="secrets")
    assert result.counts["passed"] == 3
    files = {p: _readable(p, fs.cat_file(p)) for p in fs.find(f"{bucket}/out")}
    assert any(p.endswith("_runs/secrets.json") for p in files) and any("_commits/" in p for p in files)
    for path, text in files.items():
        assert ACCESS_KEY not in text and SECRET_KEY not in text, path
    report = json.loads(next(t for p, t in files.items() if p.endswith("_runs/secrets.json")))
    assert report["config"]["io"]["storage_options"]["key"] == "***"
    assert ACCESS_KEY not in caplog.text and SECRET_KEY not in caplog.text


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args, **kwargs) -> None:
        pass


@pytest.fixture()
def http_images(tmp_path):
    """A local HTTP server (127.0.0.1) serving a folder of images; yields (folder, base URL)."""
    root = tmp_path / "web"
    write_good_images(root, 3, classes=1)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.usefixtures("ray_local")
def test_signed_urls_in_a_manifest_are_published_without_their_query(http_images, tmp_path):
    root, base = http_images
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"uri": f"{base}/class0/img{i:05d}.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                                                   f"&X-Amz-Credential={CREDENTIAL}%2F20261130&X-Amz-Signature={SIGNATURE}{i}"})
                                    + "\n" for i in range(3)))
    cfg = load_config("none", overrides=["io.shard_size=2", f"io.allow_input_prefixes=['{base}/']"])
    out = tmp_path / "out"
    result = run_job(str(manifest), str(out), cfg, run_id="signed")
    assert result.counts["passed"] == 3, open_output(str(out)).captions().column("error").to_pylist()
    rows = open_output(str(out)).captions().to_pylist()
    assert sorted(r["source_uri"] for r in rows) == [f"{base}/class0/img{i:05d}.jpg" for i in range(3)]
    files = _local_files(out)
    for path, text in files.items():
        if path.startswith("_plan/"):
            continue  # the plan keeps what reruns must read (see the README); nothing else does
        assert SIGNATURE not in text and CREDENTIAL not in text, path


def test_credentials_inside_manifest_uris_are_refused(http_images, tmp_path):
    root, base = http_images
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"uri\n{base.replace('http://', 'http://user:' + 'pw@')}/class0/img00000.jpg\n")
    with pytest.raises(InputError, match=r"row 1: .*credentials") as err:
        list_input(str(manifest), allow_prefixes=[f"{base}/"])
    assert "pw@" not in str(err.value)
