"""Recipe 11.1's calls, rewritten to this client, against `python -m apps.rest` as a user runs it.

The recipe talks to httpbin.org and python.org with urllib and requests; here every call is
the recipe's own line with `requests.` (or urllib) replaced by this client's module functions,
and the host replaced by the local apps.rest, whose endpoints have httpbin's shapes."""
from __future__ import annotations

import contextlib
import http.server
import threading

import pytest

from protocols import client
from protocols.client import get, head, post
from tests.apps import _proc


@pytest.fixture(scope="module")
def base():
    with _proc.running("rest") as (proc, [endpoint]):
        yield f"http://{endpoint.host}:{endpoint.port}"
    assert proc.returncode == 0 and "Traceback" not in proc.stderr_text, proc.stderr_text


def test_get_with_a_query_string(base):
    url = base + "/get"
    parms = {"name1": "value1", "name2": "value2"}
    resp = get(url, params=parms)                              # request.urlopen(url + '?' + qs)
    assert resp.status_code == 200
    assert resp.json()["args"] == parms


def test_post_a_form(base):
    url = base + "/post"
    parms = {"name1": "value1", "name2": "value2"}
    resp = post(url, data=parms)                               # request.urlopen(url, qs.encode())
    assert resp.json()["form"] == parms


def test_post_with_custom_headers(base):
    url = base + "/post"
    parms = {"name1": "value1", "name2": "value2"}
    headers = {"User-agent": "none/ofyourbusiness", "Spam": "Eggs"}
    resp = post(url, data=parms, headers=headers)              # requests.post(url, data=..., headers=...)
    text = resp.text
    assert '"Spam": "Eggs"' in text and '"User-Agent": "none/ofyourbusiness"' in text
    assert resp.json()["form"] == parms


def test_head_reads_status_and_headers(base):
    resp = head(base + "/get")                                 # requests.head('http://www.python.org/...')
    status = resp.status_code
    last_modified = resp.headers.get("last-modified")          # apps.rest sends none
    content_type = resp.headers["content-type"]
    content_length = resp.headers["content-length"]
    assert (status, last_modified, content_type) == (200, None, "application/json")
    assert int(content_length) > 0 and resp.content == b""


@contextlib.contextmanager
def file_server(directory):
    """The stdlib's file server, which does send Last-Modified, for the recipe's HEAD line."""
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=directory, **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_head_reads_last_modified_from_a_file_server(tmp_path, monkeypatch):
    monkeypatch.setattr(http.server.SimpleHTTPRequestHandler, "log_message", lambda *a: None)
    (tmp_path / "index.html").write_bytes(b"<html></html>")
    with file_server(str(tmp_path)) as url:
        resp = head(url + "/index.html")
        assert resp.status_code == 200
        assert resp.headers["last-modified"].endswith(" GMT")
        assert resp.headers["content-type"] == "text/html"
        assert resp.headers["content-length"] == "13"


def test_get_with_basic_auth(base):
    resp = get(base + "/basic-auth/user/password", auth=("user", "password"))
    assert resp.status_code == 200 and resp.json()["authenticated"] is True


def test_cookies_from_one_response_to_the_next_request(base):
    # First request (the server sets a cookie, as pypi's login page did)
    resp1 = get(base + "/cookies/set?session=abc123", allow_redirects=False)
    # Second request with cookies received on first request
    resp2 = get(base + "/cookies", cookies=resp1.cookies)
    assert resp2.json() == {"cookies": {"session": "abc123"}}


def test_post_with_files(base, tmp_path):
    (tmp_path / "data.csv").write_text("a,b,c\n1,2,3\n")
    url = base + "/post"
    with open(tmp_path / "data.csv", "rb") as f:
        files = {"file": ("data.csv", f)}
        r = post(url, files=files)
    assert r.json()["files"] == {"file": "a,b,c\n1,2,3\n"}


def test_session_runs_many_calls_on_one_connection(base):
    with client.Session() as s:
        for i in range(5):
            assert s.get(base + "/get", params={"i": i}).json()["args"] == {"i": str(i)}
        assert s.client.connections == 1
