"""apps.fetch as a user runs it (`python -m apps.fetch ...`), against `python -m apps.rest`, a
listener that never answers, nothing at all, and a stdlib HTTPS server with the test CA."""
from __future__ import annotations

import email.parser
import email.policy
import json
import socket
import subprocess
import sys

import pytest

from . import _proc

TIMEOUT = 30


@pytest.fixture(scope="module")
def base():
    with _proc.running("rest") as (proc, [endpoint]):
        yield f"http://{endpoint.host}:{endpoint.port}"
    assert proc.returncode == 0 and "Traceback" not in proc.stderr_text, proc.stderr_text


def fetch(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apps.fetch", *args], cwd=_proc.REPO, input=stdin,
                          capture_output=True, timeout=TIMEOUT)


def test_get_prints_the_body(base):
    done = fetch(base + "/get?a=1", "-H", "X-Test: yes")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["args"] == {"a": "1"} and body["headers"]["X-Test"] == "yes"
    assert done.stderr == b""


def test_head_prints_status_line_and_headers(base):
    done = fetch("-I", base + "/get")
    assert done.returncode == 0
    lines = done.stdout.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    assert "content-type: application/json" in lines and lines[-2:] == ["", ""]
    done = fetch("-i", base + "/get")
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and json.loads(body)["url"] == base + "/get"


def test_bodies_form_json_and_files(base, tmp_path):
    assert json.loads(fetch("-X", "PUT", "-d", "a=1", "-d", "b=2", base + "/put").stdout)["form"] == {
        "a": "1", "b": "2"}
    (tmp_path / "form.txt").write_bytes(b"k=from+file")
    assert json.loads(fetch("-d", f"@{tmp_path / 'form.txt'}", base + "/post").stdout)["form"] == {
        "k": "from file"}
    assert json.loads(fetch("--json", '{"x": [1, 2]}', base + "/post").stdout)["json"] == {"x": [1, 2]}
    (tmp_path / "data.csv").write_bytes(b"a,b\n1,2\n")
    out = json.loads(fetch("-F", f"file=@{tmp_path / 'data.csv'}", "-F", "note=hi", base + "/post").stdout)
    assert out["files"] == {"file": "a,b\n1,2\n"} and out["form"] == {"note": "hi"}
    assert out["headers"]["Content-Type"].startswith("multipart/form-data; boundary=")
    assert json.loads(fetch("-X", "DELETE", base + "/delete").stdout)["url"] == base + "/delete"



def test_form_file_type_reaches_the_server(tmp_path):
    """-F name=@path;type=T: the file's part carries Content-Type T (not one guessed from the
    name) and the file's own name; read by the stdlib's MIME parser off what a stdlib server got."""
    from tests.protocols.test_client import stdlib_server
    (tmp_path / "data.txt").write_bytes(b"a,b\n1,2\n")               # .txt: a guess says text/plain
    with stdlib_server() as server:
        done = fetch("-F", f"file=@{tmp_path / 'data.txt'};type=text/csv", "-F", "note=hi",
                     server.url + "/echo")
        assert done.returncode == 0, done.stderr
        method, _, headers, body = server.last()
    assert method == "POST"
    [ctype] = headers["content-type"]
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
    assert message.get_content_type() == "multipart/form-data" and not message.defects
    parts = {part.get_param("name", header="content-disposition"): part
             for part in message.iter_parts()}
    assert parts.keys() == {"file", "note"}
    assert parts["file"].get_content_type() == "text/csv"
    assert parts["file"].get_filename() == "data.txt"
    assert parts["file"].get_payload(decode=True) == b"a,b\n1,2\n"
    assert parts["note"].get_payload(decode=True) == b"hi"


def test_auth_redirects_output_file_and_fail(base, tmp_path):
    assert json.loads(fetch("-u", "me:pw", base + "/basic-auth/me/pw").stdout)["authenticated"]
    wrong = fetch("-u", "me:no", base + "/basic-auth/me/pw")
    assert wrong.returncode == 0 and wrong.stdout == b"Unauthorized\n"
    failed = fetch("--fail", "-u", "me:no", base + "/basic-auth/me/pw")
    assert failed.returncode == 22 and failed.stdout == b"" and b"401" in failed.stderr
    assert fetch(base + "/redirect/2").stdout == b"Redirecting to /redirect/1\n"
    assert json.loads(fetch("-L", base + "/redirect/2").stdout)["url"] == base + "/get"
    assert fetch("-L", "--max-redirs", "1", base + "/redirect/2").returncode == 47
    target = tmp_path / "out.bin"
    done = fetch("-o", str(target), base + "/bytes/5000?seed=1")
    assert done.returncode == 0 and done.stdout == b"" and len(target.read_bytes()) == 5000


def test_connection_errors_exit_non_zero():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    refused = fetch(f"http://127.0.0.1:{port}/")
    assert refused.returncode == 7 and b"refused" in refused.stderr and refused.stdout == b""
    with socket.create_server(("127.0.0.1", 0)) as silent:            # accepts, never answers
        timed_out = fetch("--timeout", "0.3", f"http://127.0.0.1:{silent.getsockname()[1]}/")
    assert timed_out.returncode == 28 and b"within 0.3 s" in timed_out.stderr
    assert fetch("http://127.0.0.1:1/\r\nX: y").returncode == 3
    assert fetch("-H", "X: a\x7fb", f"http://127.0.0.1:{port}/").returncode == 3
    assert fetch("not a url").returncode == 3


def test_https_with_cacert_or_insecure():
    from tests.protocols.test_client_tls import CA, https_server
    with https_server() as server:
        ok = fetch("--cacert", CA, server.url + "/echo")
        assert ok.returncode == 0 and json.loads(ok.stdout)["path"] == "/echo"
        unverified = fetch(server.url + "/echo")
        assert unverified.returncode == 35 and b"CERTIFICATE_VERIFY_FAILED" in unverified.stderr
        assert fetch("-k", server.url + "/echo").returncode == 0
