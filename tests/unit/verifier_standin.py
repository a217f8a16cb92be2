"""A local HTTP stand-in for an OpenAI-compatible chat endpoint, for the verifier tests (no real
endpoint can be reached from the test machines)."""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StandInEndpoint:
    """A local HTTP stand-in for an OpenAI-compatible /chat/completions endpoint.

    Its judge compares the response with the reference read out of the prompt. `script` lists
    what each successive request gets: "ok", "garbage", "500", "429", "400", "slow" (answers after
    the client's timeout), "null" (a 200 whose content is null), "truncated" (a 200 that closes the connection half-way through the body
    its Content-Length announces), "binary" (a 200 whose body is not UTF-8); once the script runs
    out, every request gets `default`. `judge(reference,
    response) -> bool` replaces the comparison (the pipeline test's stand-in decides by the text alone).
    """

    def __init__(self, script=(), default="ok", delay=0.5, judge=None, host="127.0.0.1"):
        self.script, self.default, self.delay = list(script), default, delay
        self.judge = judge or (lambda reference, response: reference == response)
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                action = outer.script.pop(0) if outer.script else outer.default
                if action == "slow":
                    time.sleep(outer.delay)
                    action = "ok"
                if action in ("500", "429", "400"):
                    self.send_response(int(action))
                    self.end_headers()
                    self.wfile.write(b'{"error": "stand-in failure"}')
                    return
                if action == "binary":
                    self._send(b"\x80\x81\xfe not UTF-8, not JSON")
                    return
                text = body["messages"][0]["content"][-1]["text"]
                if action == "null":  # a 200 without content (e.g. finish_reason content_filter)
                    self._send(json.dumps({"choices": [{"message": {"role": "assistant", "content": None},
                                                        "finish_reason": "content_filter"}]}).encode())
                    return
                if action == "garbage":
                    answer = "I think it is fine."
                else:
                    ref = re.search(r"Reference: (.*)", text).group(1).strip()
                    resp = re.search(r"Response: (.*)", text).group(1).strip()
                    ok = "yes" if outer.judge(ref, resp) else "no"
                    answer = f"entails: {ok}\ncomplete: {ok}\nconsistent: {ok}\nfollows: yes\nreason: compared"
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
                # HTTP/1.0: the connection closes after the handler, so a short body is a truncated one
                self._send(data[:len(data) // 2] if action == "truncated" else data, length=len(data))

            def _send(self, data, length=None):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data) if length is None else length))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
