"""A loopback OpenAI-compatible HTTP server for tests and the annotation benchmark.

It speaks the parts of the real protocol the pipeline uses: ``POST /v1/chat/completions``,
``POST /v1/files`` (multipart upload), ``GET /v1/files/{id}`` and ``/content``, ``POST
/v1/batches`` and ``GET /v1/batches/{id}``. Each case scripts it with a function that receives
the index and body of every chat request and returns a :class:`Reply` (an HTTP error with
headers, a delay, a malformed body, a refusal) or ``None`` for the default answer: a valid
teacher JSON that names the request's own history items, so it passes the self-filter.
The server records every chat request so tests can count repeats across runs.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """A scripted answer: an HTTP status with a JSON (or raw text) body, or assistant content."""

    status: int = 200
    content: str | None = None
    refusal: str | None = None
    body: Any = None
    raw: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    usage: Any = None
    """Replaces the completion's ``usage`` object when set (a null or inflated usage)."""


Script = Callable[[int, dict[str, Any]], Reply | None]


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: 64 clients connecting at once overflow it,
    # and the dropped connections wait for the client's SYN retransmit (1 s, then 3 s). API
    # servers accept hundreds of connections at once.
    request_queue_size = 512


def messages_key(body: dict[str, Any]) -> str:
    """Identity of a chat request: a hash of its messages."""
    return hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).hexdigest()


def data_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON data block of a teacher or judge prompt, as the model would read it."""
    for message in body.get("messages", []):
        text = message.get("content", "")
        if message.get("role") == "user" and "<data>\n" in text and "\n</data>" in text:
            return json.loads(text.split("<data>\n", 1)[1].rsplit("\n</data>", 1)[0])
    return None


def default_teacher_answer(body: dict[str, Any]) -> str:
    data = data_of(body) or {}
    history = [item["title"] for item in data.get("history", [])]
    target = data.get("target", {}).get("title", "the target")
    named = " and ".join(f'"{title}"' for title in history[-2:]) or "earlier items"
    return json.dumps(
        {
            "user_preferences": "The shopper keeps buying closely related products from the same kind of store.",
            "rationale": (
                f'The shopper recently bought {named}. The target "{target}" belongs to the same kind '
                "of product and matches the tastes those purchases show, so it is a natural next purchase."
            ),
            "coherent": True,
            "incoherence_reason": None,
        }
    )


def default_judge_answer(body: dict[str, Any]) -> str:
    return json.dumps({"score": 3, "explanation": "The rationale names history items and a concrete shared attribute."})


def _is_judge(body: dict[str, Any]) -> bool:
    fmt = body.get("response_format") or {}
    return (fmt.get("json_schema") or {}).get("name") == "judge_score" or "judge" in json.dumps(body.get("messages", [])[:1]).lower()


class LoopbackOpenAI:
    """The server; use as a context manager. ``base_url`` goes to the client's ``base_url``."""

    def __init__(
        self,
        script: Script | None = None,
        latency_s: float = 0.0,
        batch_polls_before_done: int = 1,
        batch_output_edit: Callable[[list[str]], list[str]] | None = None,
    ):
        self.script = script
        self.batch_output_edit = batch_output_edit
        """Rewrites a finished batch's output lines (JSONL) before they are stored: bad records."""
        self.latency_s = latency_s
        self.batch_polls_before_done = batch_polls_before_done
        self.lock = threading.Lock()
        self.chat_bodies: list[dict[str, Any]] = []
        self.answered_keys: list[str] = []
        self.authorization_headers: list[str | None] = []
        self.chat_times: list[float] = []
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_polls: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> LoopbackOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    # -- chat ---------------------------------------------------------------------------
    def chat_reply(self, body: dict[str, Any], record: bool = True) -> tuple[int, Any, dict[str, str], float]:
        """Status, JSON body (or raw text), headers and delay for one chat request."""
        with self.lock:
            index = len(self.chat_bodies)
            if record:
                self.chat_bodies.append(body)
                self.chat_times.append(time.monotonic())
        reply = (self.script(index, body) if self.script else None) or Reply()
        if reply.raw is not None or reply.body is not None:
            return reply.status, reply.raw if reply.raw is not None else reply.body, reply.headers, reply.delay_s
        if reply.status != 200:
            error = {"error": {"message": f"scripted status {reply.status}", "type": "server_error", "code": None}}
            return reply.status, error, reply.headers, reply.delay_s
        content = reply.content
        if content is None and reply.refusal is None:
            content = default_judge_answer(body) if _is_judge(body) else default_teacher_answer(body)
        prompt_chars = sum(len(m.get("content", "")) for m in body.get("messages", []))
        completion = {
            "id": self._next_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": reply.refusal},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_chars // 4,
                "completion_tokens": len(content or reply.refusal or "") // 4,
                "total_tokens": prompt_chars // 4 + len(content or reply.refusal or "") // 4,
            },
        }
        if reply.usage is not None:
            completion["usage"] = reply.usage
        return 200, completion, reply.headers, reply.delay_s + self.latency_s

    # -- batches ------------------------------------------------------------------------
    def _store_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file_id = self._next_id("file")
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[file_id] = {"meta": meta, "data": data}
        return meta

    def _finish_batch(self, batch: dict[str, Any]) -> None:
        lines = self.files[batch["input_file_id"]]["data"].decode().splitlines()
        outputs, errors = [], []
        for line in lines:
            request = json.loads(line)
            status, body, _, _ = self.chat_reply(request["body"])
            record = {
                "id": self._next_id("batch_req"),
                "custom_id": request["custom_id"],
                "response": {"status_code": status, "request_id": self._next_id("req"), "body": body},
                "error": None,
            }
            (outputs if status == 200 else errors).append(json.dumps(record))
            if status == 200:
                with self.lock:
                    self.answered_keys.append(messages_key(request["body"]))
        if self.batch_output_edit is not None:
            outputs = self.batch_output_edit(outputs)
        if outputs:
            batch["output_file_id"] = self._store_file(("\n".join(outputs) + "\n").encode(), "output.jsonl", "batch_output")["id"]
        if errors:
            batch["error_file_id"] = self._store_file(("\n".join(errors) + "\n").encode(), "errors.jsonl", "batch_output")["id"]
        batch["status"] = "completed"
        batch["request_counts"] = {"total": len(lines), "completed": len(outputs), "failed": len(errors)}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real API servers do
            # TCP_NODELAY, as API servers set it: with Nagle's algorithm the body written after
            # the headers waits for the client's delayed ACK, 40 ms added to every answer.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(
                self, status: int, payload: Any, headers: dict[str, str] | None = None, content_type: str = "application/json"
            ) -> None:
                data = payload if isinstance(payload, bytes) else (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client gave up (a timeout case)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self) -> None:
                raw = self._body()
                server.authorization_headers.append(self.headers.get("Authorization"))
                if self.path == "/v1/chat/completions":
                    body = json.loads(raw)
                    status, payload, headers, delay = server.chat_reply(body)
                    if delay:
                        time.sleep(delay)
                    self._send(status, payload, headers)
                    if status == 200:
                        with server.lock:
                            server.answered_keys.append(messages_key(body))
                elif self.path == "/v1/files":
                    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                        f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + raw
                    )
                    fields = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
                    upload = fields["file"]
                    purpose = fields["purpose"].get_payload(decode=True).decode()
                    self._send(200, server._store_file(upload.get_payload(decode=True), upload.get_filename() or "upload", purpose))
                elif self.path == "/v1/batches":
                    body = json.loads(raw)
                    batch = {
                        "id": server._next_id("batch"),
                        "object": "batch",
                        "endpoint": body["endpoint"],
                        "errors": None,
                        "input_file_id": body["input_file_id"],
                        "completion_window": body["completion_window"],
                        "status": "validating",
                        "output_file_id": None,
                        "error_file_id": None,
                        "created_at": int(time.time()),
                        "metadata": body.get("metadata"),
                        "request_counts": {"total": 0, "completed": 0, "failed": 0},
                    }
                    server.batches[batch["id"]] = batch
                    server.batch_polls[batch["id"]] = 0
                    self._send(200, batch)
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if len(parts) == 3 and parts[1] == "batches" and parts[2] in server.batches:
                    batch = server.batches[parts[2]]
                    server.batch_polls[parts[2]] += 1
                    if batch["status"] != "completed":
                        if server.batch_polls[parts[2]] >= server.batch_polls_before_done:
                            server._finish_batch(batch)
                        else:
                            batch["status"] = "in_progress"
                    self._send(200, batch)
                elif len(parts) >= 3 and parts[1] == "files" and parts[2] in server.files:
                    stored = server.files[parts[2]]
                    if len(parts) == 4 and parts[3] == "content":
                        self._send(200, stored["data"], content_type="application/octet-stream")
                    else:
                        self._send(200, stored["meta"])
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

        return Handler


def serve_forever(latency_s: float) -> None:
    """Run a default-answer server in this process and print its base URL (benchmarks use it
    from a separate process, so client and server do not share one interpreter lock)."""
    with LoopbackOpenAI(latency_s=latency_s) as server:
        print(server.base_url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    import sys

    serve_forever(float(sys.argv[1]) if len(sys.argv) > 1 else 0.0)
