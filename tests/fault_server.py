"""A `LocalLLMServer` that misbehaves on purpose, for the LLM client's fault tests (not part of the package).

`FaultServer(faults=..., rate=...)` answers a share `rate` of the requests (chosen deterministically from the request
and its attempt number) with one of `faults`; `FaultServer(plan=...)` decides each answer with
`plan(request, attempt) -> fault name or None` instead. `tls=(certfile, keyfile)` serves https. Faults:

    429, 500         an HTTP error (the 429 with Retry-After)
    stall            no answer for `hang_s` seconds (then a late one)
    not_json         a completion whose content is prose
    bad_schema       a completion whose JSON breaks the schema (its first field is dropped)
    truncated        a completion cut at max_tokens (finish_reason "length")
    half_json        a 200 whose body is half of the JSON (with a matching Content-Length)
    cut              a 200 that announces the whole body, sends half and closes the connection
    reset            the connection reset (RST) instead of an answer
    trickle          a 200 answer sent one byte every `trickle_s` seconds
    huge             a 200 body of `huge_bytes` bytes, streamed in chunks (never allocated whole)
    huge_declared    the same with a Content-Length that announces it
"""
import hashlib
import json
import random
import socket
import ssl
import struct
import subprocess
import threading
from collections import Counter
from pathlib import Path

from dreamframe.llm import request_key
from dreamframe.testing import LocalLLMServer, _answer_content, completion

FAULTS = ("429", "500", "stall", "not_json", "bad_schema", "truncated", "half_json", "cut", "reset", "trickle", "huge",
          "huge_declared")


class FaultServer(LocalLLMServer):
    "LocalLLMServer with injected faults (see the module's docstring)."

    def __init__(self, latency=0.0, answer=None, *, faults=(), rate=0.0, plan=None, seed=0, tls=None, hang_s=30.0,
                 trickle_s=1.0, huge_bytes=2**30, retry_after_s=0.05, reject_json_schema=False,
                 reject_response_format=False):
        super().__init__(latency, answer, seed=seed)
        unknown = set(faults) - set(FAULTS)
        if unknown: raise ValueError(f"unknown faults {sorted(unknown)}; choose from {FAULTS}")
        self.faults, self.rate, self.plan, self.tls = tuple(faults), rate, plan, tls
        self.hang_s, self.trickle_s, self.huge_bytes, self.retry_after_s = hang_s, trickle_s, huge_bytes, retry_after_s
        self.reject_json_schema = reject_json_schema
        self.reject_response_format = reject_response_format   # like a server that takes no response_format at all
        self.scheme = "https" if tls else "http"
        self.attempts = Counter()              # request key -> attempts seen
        self.in_flight = self.max_in_flight = 0

    def __enter__(self):
        super().__enter__()
        if self.tls:   # handshakes happen in the handler threads, on first read
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True, do_handshake_on_connect=False)
        return self

    def fault_for(self, request, attempt):
        "The fault this attempt of `request` gets, or None."
        if self.plan is not None: return self.plan(request, attempt)
        rng = random.Random(f"{self.seed}:{request_key(request)}:{attempt}")
        return rng.choice(self.faults) if self.faults and rng.random() < self.rate else None

    def respond(self, handler, request):
        with self.lock:
            key = request_key(request)
            attempt, self.attempts[key] = self.attempts[key], self.attempts[key] + 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.reject_json_schema and (request.get("response_format") or {}).get("type") == "json_schema":
                with self.lock: self.counts["rejected_json_schema"] += 1
                return handler.send_json(400, _error("Invalid parameter: 'response_format' of type 'json_schema' is not "
                                                     "supported by this server."))
            if self.reject_response_format and request.get("response_format"):
                with self.lock: self.counts["rejected_response_format"] += 1
                kind = request["response_format"].get("type")
                return handler.send_json(400, _error(f"Invalid parameter: 'response_format' of type '{kind}' is not supported with this model."))
            fault = self.fault_for(request, attempt)
            if fault is None: return super().respond(handler, request)
            with self.lock: self.counts[fault] += 1
            getattr(self, "_" + fault)(handler, request)
        finally:
            with self.lock: self.in_flight -= 1

    # -- the faults -------------------------------------------------------------------------------------------------
    def _429(self, handler, request):
        handler.send_json(429, _error("Rate limit reached (injected)", "rate_limit_error"),
                          {"Retry-After": "0", "retry-after-ms": str(int(self.retry_after_s * 1000))})

    def _500(self, handler, request): handler.send_json(500, _error("The server had an error (injected)", "server_error"))

    def _stall(self, handler, request):
        self.stop.wait(self.hang_s)
        super().respond(handler, request)

    def _content(self, request): return self.answer(request) if self.answer else _answer_content(request, self.seed)

    def _not_json(self, handler, request):
        handler.send_json(200, completion(request, "Sure! Here is the story you asked for: " + self._content(request)[:60]))

    def _bad_schema(self, handler, request):
        value = json.loads(self._content(request))
        value.pop(next(iter(value)), None)
        handler.send_json(200, completion(request, json.dumps(value)))

    def _truncated(self, handler, request):
        content = self._content(request)
        handler.send_json(200, completion(request, content[: len(content) // 2], finish_reason="length"))

    def _body(self, request): return json.dumps(completion(request, self._content(request))).encode()

    def _headers(self, handler, length=None, chunked=False):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if length is not None: handler.send_header("Content-Length", str(length))
        if chunked: handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

    def _half_json(self, handler, request):
        body = self._body(request)[: len(self._body(request)) // 2]
        self._headers(handler, len(body))
        handler.wfile.write(body)

    def _cut(self, handler, request):
        body = self._body(request)
        self._headers(handler, len(body))
        handler.wfile.write(body[: len(body) // 2])
        handler.close_connection = True

    def _reset(self, handler, request):
        handler.close_connection = True
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()

    def _trickle(self, handler, request):
        body = self._body(request)
        self._headers(handler, len(body))
        for i in range(len(body)):
            handler.wfile.write(body[i:i + 1])
            if self.stop.wait(self.trickle_s): break
        handler.close_connection = True

    def _huge(self, handler, request, declared=False):
        block, sent = b" " * (1 << 20), 0    # JSON whitespace, 1 MiB at a time
        self._headers(handler, self.huge_bytes if declared else None, chunked=not declared)
        while sent < self.huge_bytes and not self.stop.is_set():
            piece = block[: self.huge_bytes - sent]
            handler.wfile.write(piece if declared else b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
        if not declared: handler.wfile.write(b"0\r\n\r\n")
        handler.close_connection = True

    def _huge_declared(self, handler, request): self._huge(handler, request, declared=True)


def _error(message, kind="invalid_request_error"):
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def self_signed_cert(folder: Path) -> tuple[str, str] | None:
    "A certificate for 127.0.0.1 and its key, made with the `openssl` command (None when it is not installed)."
    cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return str(cert), str(key)
