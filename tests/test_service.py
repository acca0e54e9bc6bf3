"""`metatune serve`: the real server (uvicorn) on 127.0.0.1, spoken to over HTTP with httpx."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from metatune.formats import document_record
from metatune.objectives.generate.extractor import Extractor
from metatune.service import create_app

TOKEN = "s3cret-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_texts() -> list[str]:
    from conftest import SAMPLE

    data = json.loads(SAMPLE.read_text(encoding="utf-8"))
    return [r["original_text"] for r in data["test"] + data["validation"]]


def pdf_bytes(text: str | None) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    if text:
        pdf.set_font("Helvetica", size=11)
        pdf.multi_cell(0, 6, text.encode("latin-1", "replace").decode("latin-1"))
    return bytes(pdf.output())


@pytest.fixture(scope="module")
def extractor(tiny_run):
    return Extractor.from_run(tiny_run)


@pytest.fixture(scope="module")
def url(extractor):
    """The app served by uvicorn in a thread of this process (so a test can make the model fail)."""
    from conftest import serving

    with serving(create_app(extractor, token=TOKEN, max_bytes=4096, batch_size=8, batch_wait_ms=200)) as address:
        yield address


def expected(extractor, text: str, doc_type: str | None = None) -> dict:
    """What /extract must answer: the Extractor's own result, schema-checked."""
    record = document_record("text", extractor.extract([text], [doc_type])[0], extractor)
    record.pop("source")
    return record


def test_health_needs_no_token(url, extractor):
    r = httpx.get(f"{url}/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["types"] == list(extractor.registry.types)
    assert body["default_type"] == "general" and body["run"] == extractor.run_dir.name


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}])
def test_token_is_required(url, headers):
    r = httpx.post(f"{url}/extract", json={"text": "Una tesis"}, headers=headers)
    assert r.status_code == 401
    assert r.json() == {"error": "missing or invalid bearer token"}
    assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(f"{url}/consume-llm", json={"text": "Una tesis"}, headers=headers)
    assert r.status_code == 401
    assert r.json() == {
        "success": False,
        "data": None,
        "error": {"code": 401, "message": "missing or invalid bearer token"},
    }


def test_extract_answers_what_the_extractor_gives(url, extractor):
    text = sample_texts()[0]
    r = httpx.post(f"{url}/extract", json={"text": text, "type": "tesis"}, headers=AUTH, timeout=120)
    assert r.status_code == 200
    body = r.json()
    want = expected(extractor, text, "tesis")
    assert body["type"] == "Tesis" == want["type"]
    assert body["metadata"] == want["metadata"]
    assert body["error"] == want.get("error")


def test_extract_pdf(url, extractor):
    text = sample_texts()[1]
    files = {"file": ("doc.pdf", pdf_bytes(text), "application/pdf")}
    r = httpx.post(f"{url}/extract/pdf", files=files, headers=AUTH, timeout=120)
    assert r.status_code == 200
    assert r.json()["type"] == extractor.type_classifier.predict(text)[0] != "general"  # no type given
    r = httpx.post(f"{url}/extract/pdf", files={"file": ("scan.pdf", pdf_bytes(None), "application/pdf")}, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["error"].startswith("scan.pdf: has no text layer (scanned or image-only PDF)")
    r = httpx.post(f"{url}/extract/pdf", files={"file": ("notes.pdf", b"plain text", "application/pdf")}, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"].startswith("notes.pdf: cannot read the PDF")


def test_consume_llm_keeps_the_original_contract(url, extractor):
    text = sample_texts()[2]
    r = httpx.post(f"{url}/consume-llm", json={"text": text}, headers=AUTH, timeout=120)
    body = r.json()
    assert set(body) == {"success", "data", "error"}
    want = expected(extractor, text)
    assert body["success"] is (want["metadata"] is not None)
    if want["metadata"] is None:  # the original service's answer to output it cannot parse
        assert r.status_code == 500
        assert body["error"] == {"code": 500, "message": f"cannot parse json output: {want['error']}"}
    else:
        assert r.status_code == 200 and body["data"] == want["metadata"] and body["error"] is None


def test_too_large_requests_get_413(url):
    r = httpx.post(f"{url}/extract", json={"text": "x" * 5000}, headers=AUTH)
    assert r.status_code == 413
    assert r.json() == {"error": "request body larger than 4096 bytes (the server's --max-bytes)"}

    def chunks():  # no Content-Length: the body arrives chunked and is counted
        for _ in range(10):
            yield b"x" * 1000

    r = httpx.post(f"{url}/extract", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "invalid request: text: Field required"),
        ({"text": 12}, "invalid request: text: Input should be a valid string"),
        ({"text": ""}, "invalid request: text: String should have at least 1 character"),
        ({"text": "   "}, "invalid request: text: the text is blank"),
        (
            {"text": "Una tesis", "type": "poema"},
            "invalid request: type: unknown document type 'poema' (known: general, Tesis, Libro, Articulo, Objeto de conferencia)",
        ),
        ({"txt": "Una tesis"}, "invalid request: text: Field required; txt: Extra inputs are not permitted"),
        ('{"text": "sin cerrar', "invalid request: invalid JSON at character 9: Unterminated string starting at"),
        ("[1, 2]", "invalid request: body: Input should be a valid dictionary or object to extract fields from"),
    ],
)
def test_malformed_requests_get_422(url, body, message):
    if isinstance(body, str):
        r = httpx.post(f"{url}/extract", content=body, headers={**AUTH, "Content-Type": "application/json"})
    else:
        r = httpx.post(f"{url}/extract", json=body, headers=AUTH)
    assert r.status_code == 422
    assert r.json() == {"error": message}


def test_concurrent_requests_are_generated_together(url, extractor):
    texts = sample_texts()[:6]
    before = httpx.get(f"{url}/health").json()

    async def send_all():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(client.post(f"{url}/extract", json={"text": t}, headers=AUTH) for t in texts))

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * 6
    after = httpx.get(f"{url}/health").json()
    assert after["requests"] - before["requests"] == 6
    assert after["batches"] - before["batches"] < 6  # some requests shared a generate call
    assert after["largest_batch"] >= 2
    # batching changes nothing in the answers
    assert [r.json()["metadata"] for r in responses] == [expected(extractor, t)["metadata"] for t in texts]


def test_model_error_is_a_500_and_the_server_keeps_serving(url, extractor, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated device failure")

    monkeypatch.setattr(extractor.model, "generate", broken)
    r = httpx.post(f"{url}/extract", json={"text": "Una tesis"}, headers=AUTH)
    assert r.status_code == 500
    assert r.json() == {"error": "extraction failed: RuntimeError: simulated device failure"}
    r = httpx.post(f"{url}/consume-llm", json={"text": "Una tesis"}, headers=AUTH)
    assert r.status_code == 500
    assert r.json() == {
        "success": False,
        "data": None,
        "error": {"code": 500, "message": "extraction failed: RuntimeError: simulated device failure"},
    }
    monkeypatch.undo()

    r = httpx.post(f"{url}/extract", json={"text": "Una tesis"}, headers=AUTH, timeout=120)
    assert r.status_code == 200 and r.json()["type"] == extractor.type_classifier.predict("Una tesis")[0]
    assert httpx.get(f"{url}/health").json()["failed_batches"] >= 2


def test_serve_command(tiny_run, tmp_path):
    """`metatune serve` as a user starts it: token and size limit from the environment, docs at /docs."""
    port = free_port()
    env = {**os.environ, "METATUNE_API_TOKEN": TOKEN, "METATUNE_MAX_BYTES": "2000"}
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "metatune", "serve", str(tiny_run), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "server did not start"
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert httpx.get(f"{url}/docs").status_code == 200
        paths = httpx.get(f"{url}/openapi.json").json()["paths"]
        assert {"/extract", "/extract/pdf", "/consume-llm", "/health"} <= set(paths)
        assert httpx.post(f"{url}/extract", json={"text": "Una tesis"}).status_code == 401
        r = httpx.post(f"{url}/extract", json={"text": "Una tesis"}, headers=AUTH, timeout=120)
        assert r.status_code == 200
        assert httpx.post(f"{url}/extract", json={"text": "x" * 3000}, headers=AUTH).status_code == 413
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    output = log.read_text()
    assert f"Serving {tiny_run} on http://127.0.0.1:{port}" in output
    assert "POST /extract HTTP/1.1" in output and TOKEN not in output


def test_bad_settings_fail_before_the_model_loads(tiny_run, tmp_path, monkeypatch):
    from metatune.errors import MetatuneError
    from metatune.service import serve

    with pytest.raises(MetatuneError, match="--max-bytes must be at least 1, got 0"):
        serve(tiny_run, max_bytes=0)
    monkeypatch.setenv("METATUNE_MAX_BYTES", "lots")
    with pytest.raises(MetatuneError, match="METATUNE_MAX_BYTES='lots': expected a number of bytes"):
        serve(tiny_run)
    with pytest.raises(MetatuneError, match="not a metatune run"):
        serve(tmp_path)


class StubExtractor:
    """What the app needs of an Extractor to answer /health and refuse requests: no model."""

    def __init__(self, run_dir, *args, **kwargs):
        from metatune.doctypes import TypeRegistry

        self.run_dir, self.info, self.registry = Path(run_dir), SimpleNamespace(base_model="tiny"), TypeRegistry.load()
        self.default_type, self.device = "general", "cpu"


def test_the_token_is_checked_before_the_body_and_health_names_only_the_run():
    from fastapi.testclient import TestClient

    client = TestClient(create_app(StubExtractor("/srv/private/runs/demo"), token=TOKEN, max_bytes=100))
    for path in ("/extract", "/consume-llm", "/extract/pdf"):
        r = client.post(path, content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 401 and "missing or invalid bearer token" in r.text, (path, r.text)
        r = client.post(path, content=b"x" * 500, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401, (path, r.text)  # not 413: nothing about the request before the token
    r = client.post("/extract", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"].startswith("invalid request: invalid JSON")
    health = client.get("/health").json()
    assert health["run"] == "demo" and "/srv" not in json.dumps(health)


def test_serving_is_announced_only_once_the_port_is_bound(tmp_path, monkeypatch, capsys):
    import metatune.objectives
    from metatune.errors import MetatuneError
    from metatune.service import serve

    run = tmp_path / "run"
    run.mkdir()
    (run / "metatune.json").write_text(
        json.dumps(
            {
                "format_version": 1,
                "architecture": "causal",
                "input": {},
                "limits": {"max_input_tokens": 512, "max_target_tokens": 64},
                "types": {},
            }
        ),
        encoding="utf-8",
    )
    monkeypatch.setattr(metatune.objectives, "open_run", lambda run_dir, *a, **k: StubExtractor(run_dir))
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(MetatuneError, match=f"^cannot listen on 127.0.0.1:{port}: Address already in use$"):
            serve(run, port=port)
    assert "Serving" not in capsys.readouterr().out
