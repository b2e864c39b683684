"""Servers for test_proxy.py: an origin (nginx) that logs the bytes it sends and the headers it
gets, the caching proxies of packaging/proxy/ (nginx with slice, squid) run from the shipped
files, and a launcher for many agents at once.

Everything listens on 127.0.0.1 on ephemeral ports and lives in a temp dir; close() stops it."""
import base64
import json
import os
import pwd
import re
import subprocess
import tempfile
import time

from fetch_servers import AGENT, free_port, wait_listening

SOURCE_DIR = os.environ.get(
    "BYOI_SOURCE_DIR",
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PACKAGING = os.path.join(SOURCE_DIR, "packaging", "proxy")


def _stop(proc):
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _substitute(text, replacements):
    """`text` with each line that matches a pattern of `replacements` (regex -> new line)
    replaced; every pattern must match exactly one line, so that a changed example fails here
    rather than silently testing something else."""
    lines = text.split("\n")
    for pattern, new in replacements.items():
        hits = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert len(hits) == 1, f"{pattern!r} matches lines {hits} of the example"
        lines[hits[0]] = new
    return "\n".join(lines)


def _nginx_conf(d, log_format, log_path, http_body):
    """A whole nginx configuration in directory `d`: one worker, its files in `d`, an access log
    to `log_path` in `log_format`, and `http_body` inside the http block."""
    t = os.path.join(d, "tmp")
    os.makedirs(t, exist_ok=True)
    return f"""daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  log_format byoi '{log_format}';
  access_log {log_path} byoi;
  client_body_temp_path {t}; proxy_temp_path {t}; fastcgi_temp_path {t};
  uwsgi_temp_path {t}; scgi_temp_path {t};
{http_body}
}}
"""


class _NginxProcess:
    """nginx with `conf(port)` as its whole configuration, in directory `d`; retried on another
    port when the one chosen was taken in between."""

    def __init__(self, d, conf, what):
        self.dir = d
        self.proc = None
        os.makedirs(d, exist_ok=True)
        for _ in range(5):
            self.port = free_port()
            path = os.path.join(d, "nginx.conf")
            with open(path, "w") as f:
                f.write(conf(self.port))
            self.proc = subprocess.Popen(["nginx", "-c", path, "-p", d],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_listening(self.port, self.proc, what)
                return
            except RuntimeError:
                _stop(self.proc)
        raise RuntimeError(f"{what} did not start: " + open(os.path.join(d, "error.log")).read())

    def close(self):
        _stop(self.proc)


class Origin:
    """The image's server: nginx serving `root`, with redirects (`redirects`: path -> Location)
    and, with `tls=(cert, key)`, https. Its access log has, for every request, the bytes of the
    body it sent and the headers the tests look for."""

    HEADERS = ("x_api_key", "authorization", "proxy_authorization")

    def __init__(self, workdir, root, name="origin", tls=None, redirects=None):
        d = os.path.join(workdir, name)
        self.log_path = os.path.join(d, "access.log")
        self.scheme = "https" if tls else "http"
        os.chmod(root, 0o755)
        locations = "".join(f"    location = {path} {{ return 302 {target}; }}\n"
                            for path, target in (redirects or {}).items())
        headers = " ".join(f'{h}="$http_{h}"' for h in self.HEADERS)
        ssl = (f"    ssl_certificate {tls[0]};\n    ssl_certificate_key {tls[1]};\n"
               if tls else "")

        def conf(port):
            return _nginx_conf(
                d, f'$status $body_bytes_sent "$request_uri" range="$http_range" {headers}',
                self.log_path, f"""  sendfile on;
  types {{ }}
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port}{' ssl' if tls else ''};
{ssl}    root {root};
{locations}  }}""")

        self.nginx = _NginxProcess(d, conf, name)
        self.port = self.nginx.port

    def url(self, path):
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def requests(self, path=None):
        """The access log as dicts: status, sent (body bytes), path, range and HEADERS ("-" when
        absent)."""
        if not os.path.exists(self.log_path):
            return []
        out = []
        with open(self.log_path) as f:
            for line in f:
                m = re.match(r'(\d+) (\d+) "([^"]*)" range="([^"]*)" (.*)$', line.rstrip("\n"))
                assert m, line
                entry = {"status": int(m[1]), "sent": int(m[2]), "path": m[3], "range": m[4]}
                entry.update(dict(re.findall(r'(\w+)="([^"]*)"', m[5])))
                if path is None or entry["path"] == path:
                    out.append(entry)
        return out

    def bytes_sent(self, path):
        return sum(e["sent"] for e in self.requests(path))

    def close(self):
        self.nginx.close()


class NginxCache:
    """packaging/proxy/nginx-byoi-cache.conf as shipped, inside an http block of its own, with
    only its "@test" lines changed (listen port, cache directory) and, on request, its "#auth"
    lines (credentials `auth=(user, password)`) and "#tls" lines (`tls=(cert, key)`: a second,
    TLS, port `tls_port`) uncommented. Its access log has the cache status of every request."""

    def __init__(self, workdir, name="nginx-cache", auth=None, tls=None):
        d = os.path.join(workdir, name)
        self.cache_dir = os.path.join(d, "cache")
        os.makedirs(self.cache_dir, exist_ok=True)
        os.chmod(d, 0o755)
        self.log_path = os.path.join(d, "access.log")
        self.tls_port = free_port() if tls else None
        with open(os.path.join(PACKAGING, "nginx-byoi-cache.conf")) as f:
            example = f.read()

        def conf(port):
            text = _substitute(example, {
                r"^proxy_cache_path .*# @test$":
                    f"proxy_cache_path {self.cache_dir} levels=1:2 keys_zone=byoi:16m "
                    "max_size=4g inactive=1d use_temp_path=off;",
                r"^\s*listen 3128;  # @test$": f"    listen 127.0.0.1:{port};",
            })
            if auth:
                token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
                text = text.replace("YnlvaTpjaGFuZ2UtbWU=", token)
                text = re.sub(r"^(\s*)#auth ", r"\1", text, flags=re.M)
            if tls:
                text = re.sub(r"^(\s*)#tls ", r"\1", text, flags=re.M)
                text = text.replace("listen 3129 ssl;", f"listen 127.0.0.1:{self.tls_port} ssl;")
                text = text.replace("/etc/nginx/byoi-cache.crt", tls[0])
                text = text.replace("/etc/nginx/byoi-cache.key", tls[1])
            return _nginx_conf(d, '$status $body_bytes_sent "$request" cache=$upstream_cache_status',
                               self.log_path, text)

        self.nginx = _NginxProcess(d, conf, name)
        self.port = self.nginx.port
        if tls:
            wait_listening(self.tls_port, self.nginx.proc, name + " (tls)")

    def url(self, userinfo=""):
        return f"http://{userinfo}127.0.0.1:{self.port}"

    def tls_url(self):
        return f"https://127.0.0.1:{self.tls_port}"

    def requests(self):
        """The request lines of its access log: (status, request, cache status)."""
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path) as f:
            return [re.match(r'(\d+) \d+ "([^"]*)" cache=(\S*)', line).groups() for line in f]

    def close(self):
        self.nginx.close()


class Squid:
    """packaging/proxy/squid-byoi-cache.conf as shipped, with only its "@test" lines changed (port,
    the port CONNECT may reach, cache directory) and the files of a test run appended. Its access
    log has the request headers of every request (CONNECT included)."""

    def __init__(self, workdir, tls_port=443, name="squid"):
        d = os.path.join(workdir, name)
        os.makedirs(os.path.join(d, "cache"), exist_ok=True)
        self.log_path = os.path.join(d, "access.log")
        self.proc = None
        user = pwd.getpwnam("proxy")  # Debian's squid runs as proxy
        with open(os.path.join(PACKAGING, "squid-byoi-cache.conf")) as f:
            example = f.read()
        for _ in range(5):
            self.port = free_port()
            text = _substitute(example, {
                r"^http_port 3128  # @test$": f"http_port 127.0.0.1:{self.port}",
                r"^acl tls_port port 443  # @test$": f"acl tls_port port {tls_port}",
                r"^cache_dir ufs /var/spool/squid .*# @test$":
                    f"cache_dir ufs {d}/cache 4000 16 256",
                r"^coredump_dir .*# @test$": f"coredump_dir {d}",
            })
            text += f"""
pid_filename {d}/squid.pid
logformat byoi %ts.%03tu %>Hs %<st %rm %ru %Ss hdrs=%>h
access_log stdio:{self.log_path} byoi
cache_log {d}/cache.log
cache_store_log none
netdb_filename none
logfile_rotate 0
shutdown_lifetime 0 seconds
"""
            conf = os.path.join(d, "squid.conf")
            with open(conf, "w") as f:
                f.write(text)
            for root, dirs, files in os.walk(d):
                for n in dirs + files:
                    os.chown(os.path.join(root, n), user.pw_uid, user.pw_gid)
            os.chown(d, user.pw_uid, user.pw_gid)
            subprocess.run(["squid", "-z", "-N", "-f", conf], check=True, capture_output=True,
                           timeout=60)
            self.proc = subprocess.Popen(["squid", "-N", "-f", conf],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_listening(self.port, self.proc, "squid")
                return
            except RuntimeError:
                _stop(self.proc)
        raise RuntimeError("squid did not start: " + open(os.path.join(d, "cache.log")).read())

    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def requests(self):
        """Its access log as dicts: status, sent, method, url, result, headers (url-encoded)."""
        if not os.path.exists(self.log_path):
            return []
        out = []
        with open(self.log_path) as f:
            for line in f:
                parts = line.rstrip("\n").split(" ", 6)
                out.append({"status": parts[1], "sent": parts[2], "method": parts[3],
                            "url": parts[4], "result": parts[5], "headers": parts[6]})
        return out

    def close(self):
        _stop(self.proc)


class AgentRun:
    def __init__(self, returncode, status, stdout, stderr, seconds):
        self.returncode = returncode
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
        self.seconds = seconds

    def everything(self):
        """All it said: outputs (its log is stderr) and the status file."""
        return self.stdout + self.stderr + json.dumps(self.status)


def run_agents(workdir, manifest, count, *extra, env=None, timeout=300):
    """Starts `count` `byoi-agent deploy --dry-run` at once on `manifest` (with EXTRA arguments,
    and `env` added to this process's environment without its proxy variables), waits for all.
    Returns ([AgentRun], wall seconds from the first start to the last end)."""
    mpath = os.path.join(workdir, "manifest.json")
    with open(mpath, "w") as f:
        json.dump(manifest, f)
    base = {k: v for k, v in os.environ.items() if k.lower() not in
            ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
    base.update(env or {})
    procs = []
    start = time.monotonic()
    for i in range(count):
        spath = os.path.join(workdir, f"status-{i}.json")
        if os.path.exists(spath):
            os.unlink(spath)
        out = tempfile.TemporaryFile(dir=workdir)
        err = tempfile.TemporaryFile(dir=workdir)
        argv = [AGENT, "deploy", "--dry-run", "--manifest", mpath, "--status-file", spath,
                *extra]
        procs.append((subprocess.Popen(argv, stdout=out, stderr=err, env=base), spath, out, err))
    runs = []
    for proc, spath, out, err in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"byoi-agent did not finish in {timeout} s")
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        status = None
        if os.path.exists(spath):
            with open(spath) as f:
                status = json.load(f)
        runs.append(AgentRun(proc.returncode, status, out.read().decode(), err.read().decode(),
                             seconds))
        out.close()
        err.close()
    return runs, time.monotonic() - start
