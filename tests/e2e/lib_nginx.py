"""A real nginx origin on 127.0.0.1 for the end-to-end tests (serves a directory; Range requests work).

    with Nginx(root_dir, workdir) as web:
        web.url("image.qcow2")        # http://127.0.0.1:PORT/image.qcow2, for the host
        web.guest_url("image.qcow2")  # http://10.0.2.2:PORT/image.qcow2, for a user-mode networking guest

nginx runs in the foreground as one process (no master/worker split, no privilege drop, so it can read
files the test created) with every path in a temporary directory, and is always stopped when the `with`
block ends. Its access log (web.access_log()) tells which requests arrived.
"""

import os
import shutil
import socket
import subprocess
import time

from lib_qemu import GUEST_HOST_ADDRESS, free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    def __init__(self, root, workdir, *, port=None, extra_server_config=""):
        """root: directory served at /. workdir: for the config, logs and temporary files.
        extra_server_config: nginx directives added inside the server block (e.g. an auth check:
        'location /private/ { if ($http_authorization != "Basic dTpw") { return 401; } }')."""
        self.root = os.path.abspath(root)
        self.workdir = os.path.join(os.path.abspath(workdir), "nginx")
        self.port = port or free_port()
        self.extra_server_config = extra_server_config
        self.process = None

    def _config(self):
        w = self.workdir
        return f"""
daemon off;
master_process off;
worker_processes 1;
pid {w}/nginx.pid;
error_log {w}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log {w}/access.log;
  client_body_temp_path {w}/body;
  proxy_temp_path {w}/proxy;
  fastcgi_temp_path {w}/fastcgi;
  uwsgi_temp_path {w}/uwsgi;
  scgi_temp_path {w}/scgi;
  types {{ application/octet-stream qcow2 raw img; text/plain txt; }}
  default_type application/octet-stream;
  sendfile on;
  server {{
    listen 127.0.0.1:{self.port};
    root {self.root};
    {self.extra_server_config}
  }}
}}
"""

    def start(self, timeout=10):
        os.makedirs(self.workdir, exist_ok=True)
        conf = os.path.join(self.workdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(self._config())
        with open(os.path.join(self.workdir, "stderr.log"), "wb") as err:
            self.process = subprocess.Popen([NGINX, "-p", self.workdir, "-c", conf],
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=err, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("nginx exited with status %d: %s" % (self.process.returncode,
                                                                         self._errors()))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("nginx did not listen on port %d: %s" % (self.port, self._errors()))
                time.sleep(0.05)

    def _errors(self):
        out = ""
        for name in ("stderr.log", "error.log"):
            try:
                with open(os.path.join(self.workdir, name), errors="replace") as f:
                    out += f.read()[-2000:]
            except FileNotFoundError:
                pass
        return out

    def stop(self):
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def url(self, path=""):
        return "http://127.0.0.1:%d/%s" % (self.port, path.lstrip("/"))

    def guest_url(self, path=""):
        """The same URL as a QEMU user-mode networking guest reaches it."""
        return "http://%s:%d/%s" % (GUEST_HOST_ADDRESS, self.port, path.lstrip("/"))

    def access_log(self):
        try:
            with open(os.path.join(self.workdir, "access.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""
