"""Local HTTP servers for the scoring backends' tests (127.0.0.1, a free port, stopped by the test).

:class:`LMServer` serves, over the built-in model (so answers are real log-probabilities):
- ``POST /v1/score``: the ``/v1/score`` contract, validated strictly (empty ranges are a 400);
- ``POST /v1/completions``: a mock of an OpenAI-compatible server (vLLM ``prompt_logprobs``, or
  ``echo`` + ``logprobs``), the edge we do not own;
- ``POST /tokenize``: vLLM's tokenizer endpoint.
Knobs make it fail: ``fail_status`` (answer that HTTP status), ``delay_s`` (answer late),
``garbage`` (answer non-JSON), ``wrong_count`` (one score too few), ``redirect_to`` (answer 307 there),
``logprob`` (every log-probability answered is this value), ``pad_bytes`` (a JSON field of that many
bytes in every answer, sent in two writes a little apart, as a long answer arrives).
``hold()`` keeps every request waiting until ``release()`` (``holding`` counts the waiting ones), so a
test can look at a worker *while* a call hangs, without guessing durations.
A started server is added to the process's scoring allowlist.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from workers.scoring import endpoints
from workers.scoring.ngram import builtin_model

__all__ = ("LMServer", "MSGS")


class LMServer:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.auth: list[str | None] = []  # Authorization header of each request
        self.fail_status: int | None = None
        self.delay_s = 0.0
        self.garbage = False
        self.wrong_count = False
        self.redirect_to: str | None = None
        self.logprob: float | None = None
        self.pad_bytes = 0
        self.holding = 0  # requests waiting for release()
        self._gate = threading.Event()
        self._gate.set()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def hold(self) -> None:
        """Every request from now on waits (at most a minute) until :meth:`release`."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def calls(self, path: str) -> list[dict]:
        return [b for p, b in self.requests if p == path]

    # -- the endpoints ---------------------------------------------------------------------------
    def score(self, body: dict) -> tuple[int, Any]:
        tok, lm = builtin_model()
        prompt, ranges = body.get("prompt"), body.get("score_ranges")
        if not isinstance(body.get("model"), str) or body.get("logprobs") != 1:
            return 400, {"error": "model (string) and logprobs: 1 required"}
        if not isinstance(prompt, list) or not all(isinstance(t, int) for t in prompt):
            return 400, {"error": "prompt must be a list of token ids"}
        if not isinstance(ranges, list) or not ranges:
            return 400, {"error": "score_ranges must be a non-empty list"}
        for r in ranges:
            if not (isinstance(r, list) and len(r) == 2 and 0 <= r[0] < r[1] <= len(prompt)):
                return 400, {"error": f"bad or empty range {r}"}
        totals = lm.score(prompt, [tuple(r) for r in ranges])
        if self.logprob is not None:
            totals = [self.logprob] * len(totals)
        if self.wrong_count:
            totals = totals[:-1]
        return 200, {"scores": [{"total_logprob": t} for t in totals]}

    def completions(self, body: dict) -> tuple[int, Any]:
        tok, lm = builtin_model()
        prompt = body.get("prompt")
        if not isinstance(prompt, list) or not prompt or body.get("max_tokens", 16) < 1:
            return 400, {"error": "prompt must be token ids; max_tokens must be at least 1"}
        lps = lm.token_logprobs(prompt)
        if self.logprob is not None:
            lps = [self.logprob] * len(lps)
        per_token = [None] + [lps[i] for i in range(1, len(prompt))]  # no logprob for the first token
        gen = 1  # one generated token, appended by the server
        choice: dict[str, Any] = {"index": 0, "text": " ok", "finish_reason": "length"}
        if "prompt_logprobs" in body:
            choice["prompt_logprobs"] = [None if x is None else
                                         {str(t): {"logprob": x, "rank": 1, "decoded_token": "?"},
                                          "999999": {"logprob": -30.0, "rank": 2, "decoded_token": "?"}}
                                         for t, x in zip(prompt, per_token, strict=True)]
        elif body.get("echo") and body.get("logprobs"):
            choice["logprobs"] = {"token_logprobs": per_token + [-1.0] * gen,
                                  "tokens": [str(t) for t in prompt] + ["ok"], "text_offset": []}
        return 200, {"id": "cmpl-1", "object": "text_completion", "model": body.get("model"), "choices": [choice]}

    def tokenize(self, body: dict) -> tuple[int, Any]:
        tok, _ = builtin_model()
        return 200, {"tokens": tok.encode(body.get("prompt", "")), "count": 0, "max_model_len": 4096}

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> LMServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                server.requests.append((self.path, body))
                server.auth.append(self.headers.get("Authorization"))
                if server.delay_s:
                    time.sleep(server.delay_s)
                if not server._gate.is_set():
                    with server._lock:
                        server.holding += 1
                    server._gate.wait(60)
                    with server._lock:
                        server.holding -= 1
                routes = {"/v1/score": server.score, "/v1/completions": server.completions,
                          "/tokenize": server.tokenize}
                if server.redirect_to is not None:
                    self.send_response(307)
                    self.send_header("Location", server.redirect_to + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if server.fail_status is not None:
                    status, out = server.fail_status, {"error": "injected failure"}
                elif self.path not in routes:
                    status, out = 404, {"error": f"no route {self.path}"}
                else:
                    status, out = routes[self.path](body)
                if server.pad_bytes and isinstance(out, dict):
                    out = {**out, "pad": "p" * server.pad_bytes}
                data = b"<html>oops" if server.garbage else json.dumps(out).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if server.pad_bytes:  # the rest a moment later, as a long answer arrives
                        self.wfile.write(data[:len(data) // 2])
                        self.wfile.flush()
                        time.sleep(0.05)
                        data = data[len(data) // 2:]
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout tests)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        # a short poll interval: shutdown() waits for one
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), name="lm-server",
                                        daemon=True)
        self._thread.start()
        # the operator's allowlist admits this server (workers.scoring.endpoints)
        endpoints.configure((*endpoints.allowed(), self.url))
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


# A conversation where only the 'dog' memory is used by the answers (shared by the scoring tests).
MSGS = [
    {"role": "memory", "memory_id": "dog", "content": "Our dog is called Biscuit and he loves the river park."},
    {"role": "memory", "memory_id": "tax", "content": "Quarterly tax filing deadline moved"},
    {"role": "user", "content": "What should we do this weekend?"},
    {"role": "assistant", "content": "Biscuit will love a long walk in the river park."},
    {"role": "user", "content": "And after that?"},
    {"role": "assistant", "content": "Give Biscuit a good dinner."},
]
