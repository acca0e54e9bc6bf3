"""`metatune serve`: a saved run behind a FastAPI app.

The model is loaded once, before the server starts. Requests go through an asyncio queue to one
worker task that collects whatever arrives within `batch_wait_ms` (up to `batch_size` requests)
and extracts all of them with a single Extractor.extract call in a thread, so the event loop
keeps answering while the model works.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import signal
import socket
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from metatune.config import ExtractionSettings
from metatune.errors import MetatuneError
from metatune.formats import FORMATS

TOKEN_ENV = "METATUNE_API_TOKEN"
ORIGINAL_TOKEN_ENV = "SERVICE_TOKEN"  # the original SEDICI LLM service's variable, read when TOKEN_ENV is unset
MAX_BYTES_ENV = "METATUNE_MAX_BYTES"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_QUEUE = 64
SHUTDOWN_SECONDS = 60  # on SIGTERM, for the requests in flight to finish
CONSUME_PATH = "/consume-llm"
INTEGRATION_PATH = "/test-integration"

log = logging.getLogger("metatune.service")
Format = Literal[FORMATS]


class ExtractRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, description="The document's text")
    type: str | None = Field(None, description="Document type (default: the one the run predicts from the text)")


class ConsumeRequest(BaseModel):
    text: str = Field(min_length=1, description="The document's text")
    type: str | None = Field(None, description="Document type (optional; not in the original contract)")


class ExtractResponse(BaseModel):
    model_config = ConfigDict(extra="allow")  # and the run's notes on the document, as `metatune extract` writes them

    type: str
    metadata: dict | None = Field(
        description="Metadata valid under the type's JSON schema; null when the output could not be read"
    )
    schema_fixes: dict[str, str] = Field(
        default_factory=dict, description="Fields converted or dropped to satisfy the schema"
    )
    error: str | None = Field(None, description="Why the output could not be read")
    raw: str | None = Field(None, description="The model's output, given when it could not be read")


class ConsumeError(BaseModel):
    code: int = Field(description="The HTTP status")
    message: str


class ConsumeResponse(BaseModel):
    success: bool
    data: dict | None
    error: ConsumeError | None


class HealthResponse(BaseModel):
    status: str
    run: str = Field(description="The run's name (its directory's, not its path)")
    base_model: str | None
    types: list[str]
    default_type: str
    device: str
    requests: int = Field(description="Documents extracted since start")
    batches: int = Field(description="Extraction calls since start (requests extracted together count once)")
    largest_batch: int
    failed_batches: int


class Batcher:
    """One worker: takes queued requests, waits `wait_s` for more, extracts them together."""

    def __init__(self, extractor, max_batch: int, wait_s: float, max_queue: int = 0):
        self.extractor = extractor
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.queue: asyncio.Queue = asyncio.Queue(max_queue)  # 0: unbounded
        self.requests = self.batches = self.largest = self.failed = 0
        self.busy_s = 0.0  # time spent extracting, for Retry-After

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained: the batches ahead times the mean batch time."""
        mean = self.busy_s / self.batches if self.batches else 1.0
        return max(1, math.ceil(mean * (self.queue.qsize() / self.max_batch + 1)))

    async def submit(self, text: str, doc_type: str | None):
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((text, doc_type, future))  # QueueFull when full: the caller answers 503
        return await future

    async def run(self) -> None:
        while True:
            items = [await self.queue.get()]
            if self.wait_s > 0:
                await asyncio.sleep(self.wait_s)
            while len(items) < self.max_batch and not self.queue.empty():
                items.append(self.queue.get_nowait())
            items = [i for i in items if not i[2].done()]  # a client that went away cancelled its future
            if not items:
                continue
            texts, types = [i[0] for i in items], [i[1] for i in items]
            started = time.monotonic()
            try:
                results = await asyncio.to_thread(self.extractor.extract, texts, types, len(items))
            except Exception as e:  # noqa: BLE001 - reported to every waiting request, the worker goes on
                if not isinstance(e, MetatuneError):
                    log.exception("extraction failed for a batch of %d", len(items))
                self.failed += 1
                for _, _, future in items:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.busy_s += time.monotonic() - started
            self.batches += 1
            self.requests += len(items)
            self.largest = max(self.largest, len(items))
            for (_, _, future), result in zip(items, results):
                if not future.done():
                    future.set_result(result)


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


class TokenCheck:
    """ASGI middleware: 401 on `paths` without the bearer token, before the body is read or parsed."""

    def __init__(self, app, token: str, paths: set[str]):
        self.app, self.token, self.paths = app, token, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] in self.paths:
            scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token_matches(given.strip(), self.token):
                return await _error(401, "missing or invalid bearer token", scope)(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: 413 for bodies over `max_bytes`, by Content-Length or by counting a chunked body."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _error(400, "invalid Content-Length header", scope)(scope, receive, send)
            if int(length) > self.max_bytes:
                return await self._reject(scope, receive, send)
            return await self.app(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        body, more = b"", True  # no length given: read it all, within the limit, then hand it on
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._reject(scope, receive, send)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send):
        message = f"request body larger than {self.max_bytes} bytes (the server's --max-bytes)"
        await _error(413, message, scope)(scope, receive, send)


def _error(status: int, message: str, scope_or_request, headers: dict | None = None) -> JSONResponse:
    """Error bodies: {"error": ...}; on /consume-llm the original contract's
    {"success": false, "data": null, "error": {"code", "message"}}, where a bad request is a 400."""
    path = scope_or_request["path"] if isinstance(scope_or_request, dict) else scope_or_request.url.path
    if path == CONSUME_PATH:
        status = 400 if status == 422 else status
        body = {"success": False, "data": None, "error": {"code": status, "message": message}}
    else:
        body = {"error": message}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else headers
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            position = err["loc"][-1] if err.get("loc") else "?"
            parts.append(f"invalid JSON at character {position}: {err.get('ctx', {}).get('error', 'decode error')}")
            continue
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def create_app(
    extractor,
    token: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    batch_size: int = 8,
    batch_wait_ms: float = 10.0,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> FastAPI:
    """The app around an already-loaded Extractor. `token`: require `Authorization: Bearer <token>`.
    `max_queue`: requests waiting beyond it are answered 503 with Retry-After."""
    from metatune.compat import split_instruction
    from metatune.formats import MEDIA_TYPES, document_record, render
    from metatune.objectives import input_tokens
    from metatune.pdf import chars_for, pdf_text
    from metatune.text import clean_text

    check_settings(max_bytes, batch_size)
    if max_queue < 1:
        raise MetatuneError(f"--max-queue must be at least 1, got {max_queue}")
    batcher = Batcher(extractor, batch_size, batch_wait_ms / 1000, max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()

    app = FastAPI(
        title="metatune",
        description="Bibliographic metadata extraction with a fine-tuned model.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, max_bytes=max_bytes)
    if token:  # added last, so it runs first: no body is read (413) or parsed (422) without the token
        app.add_middleware(TokenCheck, token=token, paths={"/extract", "/extract/pdf", CONSUME_PATH, INTEGRATION_PATH})
    bearer = HTTPBearer(auto_error=False, description=f"The value of {TOKEN_ENV} on the server")

    def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if not token:
            return
        given = credentials.credentials if credentials else ""
        if not token_matches(given, token):
            raise HTTPException(401, "missing or invalid bearer token")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), request, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return _error(422, _validation_message(exc), request)

    async def run(text: str, doc_type: str | None):
        if not text.strip():
            raise HTTPException(422, "invalid request: text: the text is blank")
        if doc_type is not None and extractor.registry.find(doc_type) is None:
            known = ", ".join(extractor.registry.types)
            raise HTTPException(422, f"invalid request: type: unknown document type {doc_type!r} (known: {known})")
        try:
            return await batcher.submit(clean_text(text), doc_type)  # as training text (metatune/text.py)
        except asyncio.QueueFull:
            raise HTTPException(
                503,
                f"the server is busy ({batcher.queue.qsize()} requests queued, the --max-queue); retry later",
                headers={"Retry-After": str(batcher.retry_after())},
            ) from None
        except MetatuneError as e:
            raise HTTPException(422, str(e)) from None
        except Exception as e:  # noqa: BLE001 - the model failed: 500, and the worker keeps serving
            raise HTTPException(500, f"extraction failed: {type(e).__name__}: {e}".splitlines()[0]) from None

    def response(name: str, extraction, fmt: str = "json") -> ExtractResponse | Response:
        record = document_record(name, extraction, extractor)
        if fmt != "json":  # a catalogue format (metatune/formats.py)
            if record["metadata"] is None:
                raise HTTPException(500, f"cannot write {fmt}: the model's output was not JSON ({record['error']})")
            return Response(render([record], fmt, single=True), media_type=MEDIA_TYPES[fmt])
        record.pop("source")
        return ExtractResponse(**record)

    format_query = Query(
        "json",
        description="Answer format: json, bibtex, tei (GROBID-style teiHeader), "
        "dc (Dublin Core XML) or csv (DSpace metadata import)",
    )

    @app.get("/health", response_model=HealthResponse)
    async def health():
        """Whether the model is loaded, what it extracts, and how requests were batched. No token needed."""
        info = extractor.info
        return HealthResponse(
            status="ok",
            run=extractor.run_dir.name,
            base_model=info.base_model,
            types=list(extractor.registry.types),
            default_type=extractor.default_type,
            device=str(extractor.device),
            requests=batcher.requests,
            batches=batcher.batches,
            largest_batch=batcher.largest,
            failed_batches=batcher.failed,
        )

    @app.post("/extract", response_model=ExtractResponse, dependencies=[Depends(authorize)])
    async def extract(request: ExtractRequest, format: Format = format_query):
        """Metadata of one document's text."""
        return response("text", await run(request.text, request.type), format)

    @app.post("/extract/pdf", response_model=ExtractResponse, dependencies=[Depends(authorize)])
    async def extract_pdf(
        file: UploadFile = File(description="A PDF file"),
        type: str | None = Form(None, description="Document type"),
        format: Format = format_query,
    ):
        """Metadata of an uploaded PDF (its text read with pdfplumber)."""
        data = await file.read()
        try:
            max_chars = chars_for(input_tokens(extractor.info))  # the pages after what the model reads are not parsed
            text = await asyncio.to_thread(pdf_text, data, file.filename or "upload", max_chars)
        except MetatuneError as e:
            raise HTTPException(422, str(e)) from None
        return response(file.filename or "upload", await run(text, type), format)

    @app.post(CONSUME_PATH, response_model=ConsumeResponse, dependencies=[Depends(authorize)])
    async def consume_llm(request: ConsumeRequest):
        """The original SEDICI LLM service's contract: {"text"} in, {"success", "data", "error"} out.

        A leading instruction of the original orchestrator (its prompt for the type, then the document)
        is recognised: it chooses the type, and only the document reaches the model."""
        split = split_instruction(request.text, extractor.registry)
        result = response("text", await run(split.document, request.type or split.doc_type))
        if result.metadata is None:
            raise HTTPException(500, f"cannot parse json output: {result.error}")
        return ConsumeResponse(success=True, data=result.metadata, error=None)

    @app.get(INTEGRATION_PATH, dependencies=[Depends(authorize)])
    async def test_integration():
        """The original service's check that the caller's token is accepted."""
        return {"message": "Integration tests passed"}

    return app


def check_settings(max_bytes: int, batch_size: int) -> None:
    if batch_size < 1:
        raise MetatuneError(f"--batch-size must be at least 1, got {batch_size}")
    if max_bytes < 1:
        raise MetatuneError(f"--max-bytes must be at least 1, got {max_bytes}")


def max_bytes_setting(value: int | None) -> int:
    if value is not None:
        return value
    raw = os.environ.get(MAX_BYTES_ENV)
    if raw is None:
        return DEFAULT_MAX_BYTES
    if not raw.strip().isdigit():
        raise MetatuneError(f"{MAX_BYTES_ENV}={raw!r}: expected a number of bytes")
    return int(raw)


def serve(
    run_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8002,
    max_bytes: int | None = None,
    settings: ExtractionSettings = ExtractionSettings(),
    batch_wait_ms: float = 10.0,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> None:
    """Serves the run; settings.batch_size is the most requests extracted together."""
    import uvicorn

    from metatune.export import read_run_info
    from metatune.objectives import open_run

    read_run_info(run_dir)  # mistakes fail here, before the model loads
    limit = max_bytes_setting(max_bytes)
    check_settings(limit, settings.batch_size)
    if max_queue < 1:
        raise MetatuneError(f"--max-queue must be at least 1, got {max_queue}")
    token = os.environ.get(TOKEN_ENV) or os.environ.get(ORIGINAL_TOKEN_ENV) or None
    extractor = open_run(run_dir, settings)
    app = create_app(extractor, token, limit, settings.batch_size, batch_wait_ms, max_queue)
    try:  # bound here, so that "Serving" is printed only once it is true
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        raise MetatuneError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    source = TOKEN_ENV if os.environ.get(TOKEN_ENV) else ORIGINAL_TOKEN_ENV
    auth = f"bearer token required ({source} is set)" if token else f"no authentication ({TOKEN_ENV} is not set)"
    print(f"Serving {run_dir} on http://{host}:{port} ({auth}; API docs at /docs)", flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=SHUTDOWN_SECONDS)
    graceful_server(config).run(sockets=[sock])


def graceful_server(config):
    """A uvicorn server that exits 0 after SIGTERM. On SIGTERM uvicorn stops accepting connections,
    lets the requests in flight finish (for up to timeout_graceful_shutdown) and returns, then raises
    the SIGTERM again, which would kill the process (exit status 143) after a clean stop."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        @contextmanager
        def capture_signals(self):
            with super().capture_signals():
                yield
                self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    return GracefulServer(config)
