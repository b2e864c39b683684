"""A small provisioning backend for the daemon's polling tests (docs/backend.md), on 127.0.0.1.

GET  /v1/agents/{agentId}/job                  200 {"jobId", "manifest"} once, then 204
PUT  /v1/agents/{agentId}/jobs/{jobId}/status  records the status; the first `fail_puts` get 503

Every request must carry `Authorization: Bearer <token>` (401 otherwise, recorded)."""

import http.server
import json
import ssl
import threading
import time


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self, code, body=b""):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self):
        b = self.server.backend
        if self.headers.get("Authorization") != "Bearer " + b.token:
            with b.lock:
                b.unauthorized += 1
            self._answer(401)
            return False
        return True

    def do_GET(self):
        b = self.server.backend
        if not self._authorized():
            return
        if self.path != "/v1/agents/%s/job" % b.agent_id:
            self._answer(404)
            return
        with b.lock:
            b.polls += 1
            job = b.jobs.pop(0) if b.jobs else None
        if job is None:
            self._answer(204)
        else:
            self._answer(200, json.dumps(job).encode())

    def do_PUT(self):
        b = self.server.backend
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if not self._authorized():
            return
        prefix = "/v1/agents/%s/jobs/" % b.agent_id
        if not (self.path.startswith(prefix) and self.path.endswith("/status")):
            self._answer(404)
            return
        job_id = self.path[len(prefix):-len("/status")]
        with b.lock:
            if b.refused < b.fail_puts:
                b.refused += 1
                code = 503
            else:
                b.puts.append((job_id, json.loads(body), time.monotonic()))
                code = 204
        self._answer(code)


class Backend:
    def __init__(self, agent_id, token, jobs, fail_puts=0, tls=None):
        """`tls`: (certificate, key) files to serve https instead of http."""
        self.agent_id = agent_id
        self.token = token
        self.jobs = list(jobs)
        self.fail_puts = fail_puts
        self.lock = threading.Lock()
        self.puts = []
        self.refused = 0
        self.polls = 0
        self.unauthorized = 0
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.scheme = "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.httpd.daemon_threads = True
        self.httpd.backend = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % (self.scheme, self.httpd.server_address[1])

    def statuses(self, job_id=None):
        with self.lock:
            return [s for (j, s, _) in self.puts if job_id is None or j == job_id]

    def wait(self, predicate, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return predicate(self)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
