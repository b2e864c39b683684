"""Helpers for the daemon's integration tests: start the real `byoi-agent daemon` on 127.0.0.1 with an
ephemeral port, a temporary state file, efivars directory and console file; talk to its API; serve
images (fast or deliberately slow) from 127.0.0.1.

Everything binds 127.0.0.1 only. Every process and loop device is cleaned up by the caller's
tearDown (Daemon.stop, ImageServer.stop, detach_loop)."""

import hashlib
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time

AGENT = os.environ.get("BYOI_AGENT", "")
BUILD_DIR = os.environ.get("BYOI_BUILD_DIR", "")
SOURCE_DIR = os.environ.get("BYOI_SOURCE_DIR", "")

TOKEN = "integration-token-0123456789"

class Daemon:
    """One `byoi-agent daemon` process. `workdir` holds its state file, efivars, console and log."""

    def __init__(self, workdir, extra_args=(), config_text=None, cmdline_text="quiet\n",
                 disk=None, tls=None, listen="127.0.0.1:0", token=TOKEN, state_file=None,
                 token_file=None, nofile=None):
        """`token_file` passes --token-file instead of --token; `nofile` (soft, hard) sets the
        daemon's RLIMIT_NOFILE before it starts."""
        self.workdir = workdir
        self.state_file = state_file or os.path.join(workdir, "run", "state.json")
        self.console = os.path.join(workdir, "console.txt")
        self.log_path = os.path.join(workdir, "daemon-%d.log" % time.monotonic_ns())
        self.efivars = os.path.join(workdir, "efivars")
        os.makedirs(self.efivars, exist_ok=True)
        self.disk = disk or os.path.join(workdir, "disk.img")
        if disk is None and not os.path.exists(self.disk):
            with open(self.disk, "wb") as f:
                f.truncate(64 << 20)
        config_path = os.path.join(workdir, "byoi-agent.conf")
        with open(config_path, "w") as f:
            f.write(config_text if config_text is not None else
                    "console = %s\npoll_interval = 0.2\n" % self.console)
        cmdline_path = os.path.join(workdir, "cmdline")
        with open(cmdline_path, "w") as f:
            f.write(cmdline_text)
        args = [AGENT, "daemon", "--config", config_path, "--listen", listen,
                "--state-file", self.state_file, "--efivars", self.efivars, "--disk", self.disk,
                "--reboot", "none", "--memory-limit", "256M", "--log-level", "debug"]
        if token_file:
            args += ["--token-file", token_file]
        elif token:
            args += ["--token", token]
        if tls:
            args += ["--tls-cert", tls[0], "--tls-key", tls[1]]
        args += list(extra_args)
        env = dict(os.environ, BYOI_KERNEL_CMDLINE=cmdline_path)
        self.log = open(self.log_path, "wb")
        preexec = None
        if nofile:
            import resource
            preexec = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile)  # noqa: E731
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=preexec)
        self.tls = tls
        self.port = None
        if listen != "off":
            self.port = self._wait_for_port()

    def _wait_for_port(self, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"http: listening on 127\.0\.0\.1:(\d+)", self.read_log())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise AssertionError("daemon exited with %d:\n%s" % (self.proc.returncode, self.read_log()))
            time.sleep(0.05)
        raise AssertionError("daemon did not start listening:\n" + self.read_log())

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def read_console(self):
        try:
            with open(self.console) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def connection(self, timeout=10):
        if self.tls:
            ctx = ssl.create_default_context(cafile=self.tls[0])
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=ctx)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, token=TOKEN, headers=None, timeout=10):
        """Returns (status, headers dict, body bytes)."""
        conn = self.connection(timeout)
        try:
            h = dict(headers or {})
            if token is not None:
                h["Authorization"] = "Bearer " + token
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
                h.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=body, headers=h)
            res = conn.getresponse()
            return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
        finally:
            conn.close()

    def status(self):
        code, _, body = self.request("GET", "/v1/bringYourOwnImage")
        return code, (json.loads(body) if code == 200 else None)

    def wait_status(self, predicate, timeout=30):
        """Polls GET until predicate(status) holds; returns the last status."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            code, last = self.status()
            if code == 200 and predicate(last):
                return last
            time.sleep(0.05)
        raise AssertionError("status condition not met within %ss; last: %s" % (timeout, last))

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def step(status, name):
    return next(p for p in status["progress"] if p["step"] == name)


def wait_download_or_end(daemon, timeout=20):
    """Waits until the job downloads (step download doing) or has ended; returns the status."""
    return daemon.wait_status(
        lambda s: s["status"] != "doing" or step(s, "download")["status"] == "doing", timeout)


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head):
        srv = self.server
        path = self.path.split("?")[0]
        srv.requests.append(path)
        if path == "/slow.raw":
            size = srv.slow_size
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if head:
                return
            # 16 KiB every 100 ms: a download that takes minutes, so the job stays in download.
            sent = 0
            chunk = b"\0" * 16384
            try:
                while sent < size and not srv.stopping:
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
            return
        data = srv.files.get(path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if not head:
            self.wfile.write(data)


class ImageServer:
    """Serves `files` ({"/x.raw": bytes}) and /slow.raw (a slow endless-looking image) on 127.0.0.1."""

    def __init__(self, files=None, slow_size=64 << 20):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
        self.httpd.daemon_threads = True
        self.httpd.files = dict(files or {})
        self.httpd.slow_size = slow_size
        self.httpd.stopping = False
        self.httpd.requests = []  # the path of every request, in order
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.httpd.server_address[1], path)

    def requests(self):
        return list(self.httpd.requests)

    def stop(self):
        self.httpd.stopping = True
        self.httpd.shutdown()
        self.httpd.server_close()


def sha256_file(path, limit=None):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = limit
        while True:
            n = 1 << 20 if left is None else min(1 << 20, left)
            if n == 0:
                break
            b = f.read(n)
            if not b:
                break
            h.update(b)
            if left is not None:
                left -= len(b)
    return h.hexdigest()


def attach_loop(path):
    return subprocess.run(["losetup", "-f", "--show", path], check=True, capture_output=True,
                          text=True).stdout.strip()


def detach_loop(dev):
    subprocess.run(["losetup", "-d", dev], check=False, capture_output=True)


class WriteThrottle:
    """Slows writes of one process to one block device with the cgroup v1 blkio throttle, so a test
    can act while a job is writing (a real slow disk, not a fake). Remove() undoes it."""

    ROOT = "/sys/fs/cgroup/blkio"

    @staticmethod
    def available():
        return os.path.exists(os.path.join(WriteThrottle.ROOT, "blkio.throttle.write_bps_device"))

    def __init__(self, device, pid, bytes_per_second):
        rdev = os.stat(device).st_rdev
        self.dir = os.path.join(self.ROOT, "byoi-test-%d" % os.getpid())
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "blkio.throttle.write_bps_device"), "w") as f:
            f.write("%d:%d %d\n" % (os.major(rdev), os.minor(rdev), bytes_per_second))
        with open(os.path.join(self.dir, "cgroup.procs"), "w") as f:
            f.write("%d\n" % pid)  # every thread of the process moves

    def remove(self):
        with open(os.path.join(self.dir, "cgroup.procs")) as f:
            pids = f.read().split()
        for pid in pids:  # back to the root group, so the directory can go
            try:
                with open(os.path.join(self.ROOT, "cgroup.procs"), "w") as f:
                    f.write(pid + "\n")
            except OSError:
                pass  # exited meanwhile
        os.rmdir(self.dir)


def make_gpt_image(path, size=8 << 20):
    """A raw disk image with a GPT and one Linux partition full of a recognisable pattern."""
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["sgdisk", "-n", "1:2048:0", "-t", "1:8300", path], check=True,
                   capture_output=True)
    with open(path, "r+b") as f:
        f.seek(2048 * 512)
        f.write((b"byoi-integration" * 4096)[: size - 2048 * 512 - 64 * 512])


def new_workdir(test):
    d = tempfile.mkdtemp(prefix="byoi-daemon-")
    test.addCleanup(shutil.rmtree, d, ignore_errors=True)
    return d


def wait_for(predicate, timeout, what):
    """Polls predicate() until it is true; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("not within %ss: %s" % (timeout, what))
        time.sleep(0.02)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
