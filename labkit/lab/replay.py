"""A local OpenAI-compatible chat endpoint that replays a script (the smoke profiles' chat API).

It answers ``POST /v1/chat/completions`` on 127.0.0.1 with the next entry of a script (a JSON-lines
file or a list), in order, starting again when the script runs out (or, given ``then``, answering
with that entry from there on):

* ``{"content": "..."}``: a normal reply (an OpenAI ``chat.completion`` object with token usage);
* ``{"status": 429}`` / ``{"status": 500}``: an error (429 with ``retry-after-ms``, so the client's
  backoff stays short); ``{"status": 401}`` a rejected key, ``{"status": 404}`` an unknown model;
* ``{"respond": true}``: the reply ``responder(request body)`` computes (a stand-in that answers by a
  fixed rule, such as the rlhf lab's judge; the server needs one for such entries).

It checks the ``Authorization: Bearer`` header is present, as a real endpoint would. So a smoke run
exercises the real client path (:mod:`labkit.lab.chatapi`): HTTP, retries on 429 and 5xx, JSON-object
replies, usage accounting, validation of malformed replies, and the cache; the caller does not know
it is talking to a replay.

    with ReplayServer(Path("replies.jsonl")) as url:   # http://127.0.0.1:<port>/v1
        ...
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class ReplayServer:
    """Serve a script of replies on a free port of 127.0.0.1 while the ``with`` block runs.

    Args:
        script: a JSON-lines file or a list of entries (see the module docstring).
        delay_s: seconds to wait before each answer (tests of the client's timeout).
        responder: ``responder(body) -> str``, the content of ``{"respond": true}`` entries, from the
            request's JSON body (``model``, ``messages``, ...).
        then: the entry for every request after the script's last (``None``: the script again).
    """

    def __init__(
        self,
        script: Path | list[dict],
        delay_s: float = 0.0,
        responder: Callable[[dict], str] | None = None,
        then: dict | None = None,
    ):
        self.script = (
            [json.loads(line) for line in Path(script).read_text(encoding="utf-8").splitlines() if line.strip()]
            if isinstance(script, (str, Path))
            else list(script)
        )
        if any(entry.get("respond") for entry in [*self.script, then or {}]) and responder is None:
            raise ValueError("the script has {'respond': true} entries but the server was given no responder")
        self.delay_s = delay_s
        self.responder = responder
        self.then = then
        self.served: list[dict] = []  # the requests' JSON bodies, in order
        self._next = 0
        self._lock = threading.Lock()

    def _take(self) -> dict:
        with self._lock:
            if self.then is not None and self._next >= len(self.script):
                self._next += 1
                return self.then
            entry = self.script[self._next % len(self.script)]
            self._next += 1
            return entry

    def __enter__(self) -> str:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                if not self.headers.get("Authorization", "").startswith("Bearer "):
                    return self._send(401, {"error": {"message": "missing API key", "type": "invalid_request_error"}})
                server.served.append(body)
                time.sleep(server.delay_s)
                entry = server._take()
                status = entry.get("status", 200)
                if status != 200:
                    headers = {"retry-after-ms": "20"} if status == 429 else {}
                    return self._send(status, {"error": {"message": f"replayed {status}", "code": status}}, headers)
                content = server.responder(body) if entry.get("respond") else entry["content"]
                prompt = sum(len(m.get("content", "")) for m in body.get("messages", []))
                return self._send(
                    200,
                    {
                        "id": f"replay-{len(server.served)}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model", "replay"),
                        "choices": [
                            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
                        ],
                        "usage": {
                            "prompt_tokens": prompt,
                            "completion_tokens": len(content),
                            "total_tokens": prompt + len(content),
                        },
                    },
                )

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
