"""Servers and helpers for the fetch tests (test_fetch*.py): nginx with a config of its own, a
fault-injecting HTTP(S) server, test images, and a runner for `byoi-agent deploy --dry-run`.

Everything listens on 127.0.0.1 on ephemeral ports and lives in a temp dir; close() stops it.
"""
import hashlib
import http.server
import json
import os
import random
import signal
import socket
import socketserver
import ssl
import struct
import subprocess
import tempfile
import threading
import time

AGENT = os.environ.get("BYOI_AGENT", "byoi-agent")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc=None, what="server"):
    for _ in range(200):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.025)
    raise RuntimeError(f"{what} does not listen on {port}")


# --- images -------------------------------------------------------------------------------------

def mbr_image(size, seed=1):
    """`size` bytes of seeded random data behind an MBR with one partition: a valid raw image."""
    data = bytearray(random.Random(seed).randbytes(size))
    data[446:512] = bytes(66)
    data[446:462] = bytes([0x80, 0, 0, 0, 0x83, 0, 0, 0]) + (2048).to_bytes(4, "little") + \
        max(1, size // 512 - 2048).to_bytes(4, "little")
    data[510:512] = b"\x55\xaa"
    return bytes(data)


def write_mbr_image_file(path, size, seed=1):
    """Like mbr_image, for big images: written in 16 MiB pieces; returns its sha256."""
    piece = bytearray(random.Random(seed).randbytes(16 << 20))
    h = hashlib.sha256()
    with open(path, "wb") as f:
        done = 0
        while done < size:
            chunk = piece[: min(len(piece), size - done)]
            if done == 0:
                chunk[:512] = mbr_image(512)[:512]
            f.write(chunk)
            h.update(chunk)
            done += len(chunk)
    return h.hexdigest()


def qcow2_image(workdir, virtual_size=8 << 20):
    """A qcow2 (made by qemu-img from a raw image with an MBR) as bytes."""
    raw = os.path.join(workdir, "for-qcow2.raw")
    out = os.path.join(workdir, "image.qcow2")
    with open(raw, "wb") as f:
        f.write(mbr_image(virtual_size, seed=7))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out], check=True)
    with open(out, "rb") as f:
        return f.read()


def digest(algo, data):
    return hashlib.new(algo, data).hexdigest()


# --- nginx --------------------------------------------------------------------------------------

def nginx_conf(prefix, log_format, access_log, listen, root, extra="", worker_connections=64):
    """An nginx configuration serving `root` on `listen` (one worker, sendfile, its pid, error log
    and temporary files under `prefix`), logging every request to `access_log` as `log_format`.
    `extra` goes inside the server block."""
    t = os.path.join(prefix, "tmp")
    return f"""daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections {worker_connections}; }}
http {{
  log_format byoi '{log_format}';
  access_log {access_log} byoi;
  sendfile on;
  client_body_temp_path {t}; proxy_temp_path {t}; fastcgi_temp_path {t};
  uwsgi_temp_path {t}; scgi_temp_path {t};
  types {{ }}
  default_type application/octet-stream;
  server {{
    listen {listen};
    root {root};
    {extra}
  }}
}}
"""


class Nginx:
    """nginx serving `root` on 127.0.0.1, access log with the Range header of every request.

    `extra` is added inside the server block (e.g. `location = /forbidden { return 403; }`)."""

    def __init__(self, workdir, root, extra=""):
        self.dir = os.path.join(workdir, "nginx")
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        os.chmod(root, 0o755)
        self.access_log = os.path.join(self.dir, "access.log")
        self.proc = None
        for _ in range(5):  # the port may be taken between free_port() and nginx's bind
            self.port = free_port()
            conf = os.path.join(self.dir, "nginx.conf")
            with open(conf, "w") as f:
                f.write(nginx_conf(self.dir, '$status "$request" range="$http_range"',
                                   self.access_log, f"127.0.0.1:{self.port}", root, extra))
            self.proc = subprocess.Popen(["nginx", "-c", conf, "-p", self.dir],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_listening(self.port, self.proc, "nginx")
                return
            except RuntimeError:
                self.close()
        raise RuntimeError("nginx did not start: " + open(os.path.join(self.dir, "error.log")).read())

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def requests(self):
        """The access log as (status, request line, range header) tuples."""
        if not os.path.exists(self.access_log):
            return []
        out = []
        with open(self.access_log) as f:
            for line in f:
                status, rest = line.split(" ", 1)
                request, rng = rest.rsplit(" range=", 1)
                out.append((int(status), request.strip('"'), rng.strip().strip('"')))
        return out

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- fault server -------------------------------------------------------------------------------

class Route:
    """What the fault server does for one path.

    body          the image bytes
    ranges        honour `Range: bytes=N-` and `bytes=N-M` with 206 (else answer 200 with
                  everything)
    rate          bytes per second each connection gets at most (a token bucket per connection,
                  as servers and CDNs cap connections); None: as fast as it goes
    drops         offsets at which the connection is closed, each once
    cut_every     an offset at which the connection is closed on every request that reaches it
    reset         drop with a TCP reset instead of an orderly close
    replace       after the first drop, serve these bytes instead (the image changed); the
                  route has an ETag and honours If-Range, unless `etag` is False
    stall_at      offset at which the server stops sending (once) for `stall_seconds`
    length_delta  Content-Length lies by this many bytes (+: promises more than it sends)
    no_length     no Content-Length: the body ends when the connection closes
    fail_first    statuses answered to the first requests, then normal service
    status        a status answered to every request (404, 403, ...)
    redirect      a Location answered with 302 to every request
    require       (name, value) a header the request must carry, else 403
    bad_range     how a 206 to a resume (a range not from byte 0) lies in its Content-Range:
                  "missing", "start" (one byte after the asked start), "total" (another image
                  size) or "overlong" (announces a range ending 4 KiB before the asked end, sends
                  to the end without Content-Length)
    unknown_total a 206 to a resume says "bytes N-M/*" and has no Content-Length: its body ends
                  when the connection closes
    """

    def __init__(self, body=b"", ranges=True, drops=(), stall_at=None, stall_seconds=30,
                 length_delta=0, no_length=False, fail_first=(), status=None, redirect=None,
                 require=None, reset=False, replace=None, bad_range=None, cut_every=None,
                 unknown_total=False, rate=None, etag=True):
        self.body = body
        self.rate = rate
        self.etag = etag and replace is not None
        self.cut_every = cut_every
        self.unknown_total = unknown_total
        self.bad_range = bad_range
        self.replace = replace
        self.reset = reset
        self.ranges = ranges
        self.drops = sorted(drops)
        self.stall_at = stall_at
        self.stall_seconds = stall_seconds
        self.length_delta = length_delta
        self.no_length = no_length
        self.fail_first = list(fail_first)
        self.status = status
        self.redirect = redirect
        self.require = require


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server.owner
        route = server.routes.get(self.path.split("?")[0])
        server.log.append({"path": self.path, "range": self.headers.get("Range"),
                           "client": self.client_address[1], "time": time.monotonic(),
                           "headers": {k.lower(): v for k, v in self.headers.items()}})
        if route is None:
            return self._simple(404)
        if route.require and self.headers.get(route.require[0]) != route.require[1]:
            return self._simple(403)
        if route.fail_first:
            return self._simple(route.fail_first.pop(0))
        if route.status:
            return self._simple(route.status)
        if route.redirect:
            self.send_response(302)
            self.send_header("Location", route.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._body(route)

    def _simple(self, status):
        text = f"{status}\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def _range(self, rng, size):
        """(first, last) of a `bytes=N-` or `bytes=N-M` Range, or None for any other form."""
        if not rng or not rng.startswith("bytes=") or "," in rng:
            return None
        first, _, last = rng[len("bytes="):].partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            return None
        return int(first), min(int(last), size - 1) if last else size - 1

    def _body(self, route):
        body = route.body  # the image as it is now: a change lands between requests
        size = len(body)
        start, end = 0, size
        rng = self.headers.get("Range")
        etag = '"%s"' % hashlib.sha1(body).hexdigest() if route.etag else None
        if_range = self.headers.get("If-Range")
        if etag and if_range is not None and if_range != etag:
            rng = None  # RFC 9110 §13.1.5: the representation changed, send all of it
        asked = self._range(rng, size) if route.ranges else None
        if asked is not None:
            start, last = asked
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            end = last + 1
            self.send_response(206)
            first, total = start, str(size)
            resume = start > 0
            if resume and route.bad_range == "start":
                first += 1
            elif resume and route.bad_range == "total":
                total = str(size + 4096)
            elif resume and route.bad_range == "overlong":
                last -= 4096
                end = size
            if resume and route.unknown_total:
                total = "*"
            if not (resume and route.bad_range == "missing"):
                self.send_header("Content-Range", f"bytes {first}-{last}/{total}")
        else:
            self.send_response(200)
        if etag:
            self.send_header("ETag", etag)
        close_delimited = route.no_length or (start > 0 and (
            route.unknown_total or route.bad_range == "overlong"))
        if close_delimited:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(end - start + route.length_delta))
        self.end_headers()
        # a short lie (length_delta < 0) still sends everything
        cut = None
        for d in route.drops:
            if start < d < end:
                cut = d
                route.drops.remove(d)
                break
        if cut is None and route.cut_every is not None and start <= route.cut_every < end:
            cut = route.cut_every
        stall = None
        if route.stall_at is not None and start < route.stall_at < end:
            stall = route.stall_at
            route.stall_at = None
        bucket = None
        if route.rate:
            # One bucket per connection (a handler serves one connection), kept across its
            # requests.
            if getattr(self, "bucket", None) is None:
                self.bucket = _TokenBucket(route.rate)
            bucket = self.bucket
        pos = start
        try:
            while pos < end:
                limit = end
                if cut is not None:
                    limit = min(limit, cut)
                if stall is not None:
                    limit = min(limit, stall)
                n = min(64 << 10, limit - pos)
                if n > 0:
                    if bucket:
                        bucket.take(n)
                    self.wfile.write(body[pos:pos + n])
                    pos += n
                if pos == stall:
                    stall = None
                    self.server.owner.stop.wait(route.stall_seconds)
                if pos == cut:
                    self.close_connection = True
                    if route.replace is not None:
                        route.body, route.replace = route.replace, None
                    if route.reset:
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   struct.pack("ii", 1, 0))
                        self.connection.close()
                    else:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
            if route.length_delta > 0 or close_delimited:
                # A promise longer than the body, or no length: the end is a closed connection.
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True


class _TokenBucket:
    """At most `rate` bytes a second, one per connection. Its burst, 256 KiB, holds what the
    thread's sleeps overshoot, so that the rate is kept over time; take() asks for at most
    64 KiB."""

    def __init__(self, rate):
        self.rate = rate
        self.burst = 256 << 10
        self.tokens = 0.0
        self.last = time.monotonic()

    def take(self, n):
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= n:
                self.tokens -= n
                return
            time.sleep((n - self.tokens) / self.rate)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Connections opened at once (--connections up to 16) must not overflow the listen queue
    # (socketserver's default is 5): a dropped SYN is retried only after a second.
    request_queue_size = 64

    def handle_error(self, request, client_address):
        pass  # clients that go away (a cancelled agent, a refused certificate) are expected


class FaultServer:
    """A thread-run HTTP (or, with `tls=(cert, key)`, HTTPS) server on 127.0.0.1:0. Routes are
    registered with add(); every request is appended to `log` (path, range, lower-case headers)."""

    def __init__(self, tls=None):
        self.routes = {}
        self.log = []
        self.stop = threading.Event()
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        self.scheme = "http"
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path, route):
        self.routes[path] = route
        return self.url(path)

    def url(self, path):
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def ranges(self, path):
        return [e["range"] for e in self.log if e["path"] == path]

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def self_signed_cert(workdir):
    """A self-signed certificate for 127.0.0.1: (cert path, key path)."""
    cert = os.path.join(workdir, "cert.pem")
    key = os.path.join(workdir, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


# --- the agent ----------------------------------------------------------------------------------

class Run:
    def __init__(self, returncode, status, stdout, stderr, maxrss_bytes, seconds):
        self.returncode = returncode
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
        self.maxrss_bytes = maxrss_bytes
        self.seconds = seconds

    def step(self, name):
        return next(p for p in self.status["progress"] if p["step"] == name)


def run_deploy(workdir, manifest, *extra, dry_run=True, timeout=120, signal_after=None,
               before_signal=None, cgroup=None):
    """Runs `byoi-agent deploy --manifest M [--dry-run] --status-file S --retry-delay 0.05 EXTRA`.

    Returns a Run with the final status file, outputs and peak RSS (from wait4). With
    `signal_after`, SIGTERM is sent that many seconds after the start, after calling
    `before_signal(status_path)`. With `cgroup` (a MemoryCgroup), the agent runs in it from its
    first instruction."""
    mpath = os.path.join(workdir, "manifest.json")
    spath = os.path.join(workdir, "status.json")
    if os.path.exists(spath):
        os.unlink(spath)
    with open(mpath, "w") as f:
        json.dump(manifest, f)
    argv = [AGENT, "deploy", "--manifest", mpath, "--status-file", spath, "--retry-delay", "0.05"]
    if dry_run:
        argv.append("--dry-run")
    argv += list(extra)
    with tempfile.TemporaryFile(dir=workdir) as out, tempfile.TemporaryFile(dir=workdir) as err:
        return _run(argv, spath, out, err, timeout, signal_after, before_signal, cgroup)


class MemoryCgroup:
    """A memory cgroup of its own below the caller's (cgroup v1 or v2), to measure a process's
    peak memory with what RSS leaves out: a memfd's pages that are not mapped. `peak` is None
    when this machine offers neither."""

    def __init__(self):
        self.path = None
        self._peak_file = None
        with open("/proc/self/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
        for _, controllers, rel in lines:
            if "memory" in controllers.split(","):  # v1
                base, peak = "/sys/fs/cgroup/memory", "memory.max_usage_in_bytes"
            elif controllers == "":  # v2, if the memory controller reaches us
                base, peak = "/sys/fs/cgroup", "memory.peak"
            else:
                continue
            path = os.path.join(base + rel, f"byoi-test-{os.getpid()}-{time.monotonic_ns()}")
            try:
                os.mkdir(path)
            except OSError:
                continue
            if os.path.exists(os.path.join(path, peak)):
                self.path, self._peak_file = path, os.path.join(path, peak)
                return
            os.rmdir(path)

    def enter(self):
        """Moves the calling process in (for preexec_fn)."""
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    def peak(self):
        if self._peak_file is None:
            return None
        with open(self._peak_file) as f:
            return int(f.read())

    def close(self):
        if self.path:
            os.rmdir(self.path)


def _run(argv, spath, out, err, timeout, signal_after, before_signal, cgroup=None):
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=out, stderr=err,
                            preexec_fn=cgroup.enter if cgroup else None)
    if signal_after is not None:
        time.sleep(signal_after)
        if before_signal:
            before_signal(spath)
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()  # from now on we measure how long it takes to stop
    deadline = time.monotonic() + timeout
    while True:
        pid, wstatus, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, wstatus, rusage = os.wait4(proc.pid, 0)
            raise AssertionError(f"byoi-agent did not finish in {timeout} s")
        time.sleep(0.01)
    seconds = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(wstatus)
    out.seek(0)
    err.seek(0)
    status = None
    if os.path.exists(spath):
        with open(spath) as f:
            status = json.load(f)
    return Run(proc.returncode, status, out.read().decode(), err.read().decode(),
               rusage.ru_maxrss * 1024, seconds)


__all__ = ["AGENT", "Nginx", "FaultServer", "Route", "Run", "MemoryCgroup", "run_deploy",
           "mbr_image",
           "write_mbr_image_file", "qcow2_image", "digest", "self_signed_cert", "free_port"]
