#!/usr/bin/python3
"""The real daemon's HTTP API on 127.0.0.1 (docs/api.md): authentication (failed logins counted and
logged, the token from a file), manifests refused with the exact catalogue message, size limits,
routing, metrics, the slow-client defence, floods of idle and trickling connections from other
addresses, huge POSTs beside status calls, TLS (protocols and cipher suites), one job at a time,
cancellation (during download and during write; DELETE clears the job), restart safety, and a whole
job."""

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon_harness as h  # noqa: E402

BAD_MANIFESTS = [
    ({"URL": "http://127.0.0.1:1/x", "type": "vmdk"}, "Bad format image, expected: qcow2, raw, ova."),
    ({"URL": "http://127.0.0.1:1/x", "type": "raw", "checkSum": "ab", "checkSumType": "crc32"},
     "Bad checkSumType, expected: md5, sha1, sha256, sha512."),
    ({"URL": "http://127.0.0.1:1/x", "type": "raw", "checkSum": "ab"},
     "Please provide checkSum AND checkSumType or none of them"),
]


def write_token_file(workdir, text, mode):
    path = os.path.join(workdir, "token")
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


class ApiTest(unittest.TestCase):
    """One daemon for the stateless checks."""

    @classmethod
    def setUpClass(cls):
        import tempfile
        cls.workdir = tempfile.mkdtemp(prefix="byoi-daemon-api-")
        cls.daemon = h.Daemon(cls.workdir)

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        import shutil
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def test_healthz_needs_no_token(self):
        code, headers, body = self.daemon.request("GET", "/healthz", token=None)
        self.assertEqual(code, 200)
        self.assertEqual(body, b"ok\n")

    def test_head_healthz_is_get_without_the_body(self):
        # http.client reads no body after HEAD: the connection is reused for a GET, which must find
        # its own answer first (no stray body from the HEAD in between).
        conn = self.daemon.connection()
        try:
            conn.request("HEAD", "/healthz")
            res = conn.getresponse()
            self.assertEqual((res.status, res.getheader("Content-Length"),
                              res.getheader("Content-Type"), res.read()),
                             (200, "3", "text/plain", b""))
            conn.request("GET", "/healthz")
            res = conn.getresponse()
            self.assertEqual((res.status, res.read()), (200, b"ok\n"))
        finally:
            conn.close()
        code, headers, body = self.daemon.request("POST", "/healthz", token=None)
        self.assertEqual((code, headers["allow"]), (405, "GET, HEAD"))

    def test_401_without_or_with_a_wrong_token_says_nothing(self):
        for token in (None, "wrong", h.TOKEN + "x", ""):
            for method, path in (("GET", "/v1/bringYourOwnImage"), ("POST", "/v1/bringYourOwnImage"),
                                 ("DELETE", "/v1/bringYourOwnImage"), ("GET", "/v1/disks"),
                                 ("GET", "/metrics"), ("GET", "/no/such/path")):
                code, headers, body = self.daemon.request(method, path, token=token,
                                                          body=b"{}" if method == "POST" else None)
                self.assertEqual(code, 401, (method, path, token))
                self.assertEqual(body, b"", (method, path, token))

    def test_failed_logins_are_counted_and_logged_once_per_10_s_without_the_token(self):
        def unauthorized_total():
            code, _, body = self.daemon.request("GET", "/metrics")
            self.assertEqual(code, 200)
            m = re.search(r"^byoi_api_unauthorized_total (\d+)$", body.decode(), re.M)
            self.assertIsNotNone(m, body)
            return int(m.group(1))

        before = unauthorized_total()
        lines_before = self.daemon.read_log().count("api: unauthorized request from ")
        for i in range(30):
            code, _, _ = self.daemon.request("GET", "/v1/disks", token="guess-%d-never-logged" % i)
            self.assertEqual(code, 401)
        self.assertEqual(unauthorized_total(), before + 30)
        log = self.daemon.read_log()
        self.assertNotIn("never-logged", log)
        # Other tests of this class log failed logins too: at most one more line for these 30.
        self.assertLessEqual(log.count("api: unauthorized request from ") - lines_before, 1)
        self.assertRegex(log, r"warning api: unauthorized request from 127\.0\.0\.1: [A-Z]+ /")

    def test_400_with_the_exact_catalogue_message(self):
        for manifest, message in BAD_MANIFESTS:
            code, headers, body = self.daemon.request("POST", "/v1/bringYourOwnImage", manifest)
            self.assertEqual(code, 400, manifest)
            self.assertEqual(headers["content-type"], "application/json")
            self.assertEqual(json.loads(body), {"message": message})
        code, _, body = self.daemon.request("POST", "/v1/bringYourOwnImage", body=b"{not json")
        self.assertEqual(code, 400)
        self.assertTrue(json.loads(body)["message"].startswith("Invalid manifest: "))
        # Nothing was started by refused manifests.
        self.assertEqual(self.daemon.status()[0], 404)

    def test_413_for_a_body_over_1_MiB(self):
        body = b"{" + b" " * (1 << 20) + b"}"
        with socket.create_connection(("127.0.0.1", self.daemon.port), timeout=10) as s:
            head = ("POST /v1/bringYourOwnImage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                    "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (h.TOKEN, len(body)))
            sender = threading.Thread(target=lambda: self._send_quietly(s, head.encode() + body))
            sender.start()
            answer = self._read_all(s)
            sender.join()
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:100])
        self.assertIn(b'{"message":"Request body larger than 1 MiB."}', answer)

    def test_401_before_the_body_whatever_length_is_announced(self):
        # Without the token a client learns nothing, not even the body limit, and can make the
        # agent read no body at all.
        with socket.create_connection(("127.0.0.1", self.daemon.port), timeout=10) as s:
            s.sendall(b"POST /v1/bringYourOwnImage HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: 10737418240\r\n\r\n{")
            answer = self._read_all(s)
        self.assertTrue(answer.startswith(b"HTTP/1.1 401 "), answer[:100])
        self.assertTrue(answer.endswith(b"\r\n\r\n"), answer)  # empty body

    @staticmethod
    def _send_quietly(s, data):
        try:
            s.sendall(data)
        except OSError:
            pass

    @staticmethod
    def _read_all(s, timeout=10):
        s.settimeout(timeout)
        out = b""
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                out += b
        except OSError:
            pass
        return out

    def test_404_and_405_have_json_bodies(self):
        code, headers, body = self.daemon.request("GET", "/v2/bringYourOwnImage")
        self.assertEqual((code, json.loads(body)), (404, {"message": "Not found."}))
        code, headers, body = self.daemon.request("PUT", "/v1/bringYourOwnImage", b"{}")
        self.assertEqual((code, json.loads(body)), (405, {"message": "Method not allowed."}))
        self.assertEqual(headers["allow"], "GET, POST, DELETE")
        code, headers, body = self.daemon.request("POST", "/v1/disks", b"{}")
        self.assertEqual(code, 405)
        self.assertEqual(headers["allow"], "GET")

    def test_metrics_are_prometheus_text(self):
        code, headers, body = self.daemon.request("GET", "/metrics")
        self.assertEqual(code, 200)
        self.assertEqual(headers["content-type"], "text/plain; version=0.0.4; charset=utf-8")
        text = body.decode()
        self.assertTrue(text.endswith("\n"))
        families = {}
        sample = re.compile(r'^([a-z_]+)(\{[a-z_]+="[^"]*"\})? (-?[0-9.]+(e[+-]?[0-9]+)?)$')
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ")
                families[name] = kind
                continue
            if line.startswith("# HELP "):
                continue
            m = sample.match(line)
            self.assertIsNotNone(m, line)
            self.assertIn(m.group(1), families, line)
        for name, kind in (("byoi_job_running", "gauge"), ("byoi_downloaded_bytes_total", "counter"),
                           ("byoi_written_bytes_total", "counter"),
                           ("byoi_step_duration_seconds", "gauge"), ("byoi_jobs_total", "counter"),
                           ("byoi_http_requests_total", "counter")):
            self.assertEqual(families.get(name), kind, name)
        self.assertIn('byoi_step_duration_seconds{step="configdrive"} ', text)
        self.assertIn('byoi_jobs_total{outcome="cancelled"} ', text)

    def test_disks_answers_the_inventory_as_the_openapi_document_says(self):
        code, headers, body = self.daemon.request("GET", "/v1/disks")
        self.assertEqual(code, 200)
        inventory = json.loads(body)
        with open(os.path.join(h.SOURCE_DIR, "proto", "openapi.json")) as f:
            api = json.load(f)
        import jsonschema
        jsonschema.Draft202012Validator(api["components"]["schemas"]["Disks"],
                                        resolver=jsonschema.RefResolver.from_schema(api)).validate(inventory)
        self.assertEqual(inventory["forcedDisk"], self.daemon.disk)
        # The flat list and the groups agree: each group's target is its first disk.
        for group in inventory["groups"]:
            self.assertEqual(group["target"], group["disks"][0]["path"])
            self.assertEqual([d["path"] for d in inventory["disks"] if d["group"] == group["id"]],
                             [d["path"] for d in group["disks"]])

    def test_a_slow_client_does_not_block_other_requests(self):
        slow = socket.create_connection(("127.0.0.1", self.daemon.port), timeout=30)
        connected = time.monotonic()
        stop = threading.Event()
        trickling = threading.Event()
        request = ("GET /v1/bringYourOwnImage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
                   % h.TOKEN).encode()

        def trickle():
            for i in range(len(request)):
                if stop.is_set():
                    return
                try:
                    slow.sendall(request[i:i + 1])
                except OSError:
                    return
                trickling.set()
                stop.wait(1.0)  # one byte per second
        t = threading.Thread(target=trickle)
        t.start()
        try:
            self.assertTrue(trickling.wait(5))
            for _ in range(10):
                start = time.monotonic()
                code, _, body = self.daemon.request("GET", "/healthz", token=None)
                self.assertEqual((code, body), (200, b"ok\n"))
                self.assertLess(time.monotonic() - start, 0.5)
                stop.wait(0.3)  # spread the requests over the trickle
            # ...and the slow client is cut off at the head deadline (5 s after it connected), not
            # served.
            slow.settimeout(25)
            data = b""
            try:
                data = slow.recv(4096)
            except OSError:
                pass
            self.assertEqual(data, b"")
            self.assertLess(time.monotonic() - connected, 8)
        finally:
            stop.set()
            t.join()
            slow.close()

    def test_status_command_asks_the_daemon(self):
        url = "http://127.0.0.1:%d" % self.daemon.port
        r = subprocess.run([h.AGENT, "status", "--url", url, "--token", h.TOKEN],
                           capture_output=True, text=True, timeout=15)
        self.assertEqual((r.returncode, r.stdout), (0, "no deployment\n"))
        r = subprocess.run([h.AGENT, "status", "--url", url, "--token", "wrong"],
                           capture_output=True, text=True, timeout=15)
        self.assertEqual(r.returncode, 1)
        self.assertIn("the agent answered HTTP 401", r.stderr)
        self.assertNotIn("wrong", r.stderr)

    def test_daemon_reads_config_file_and_kernel_cmdline(self):
        # The console key came from the config file: a plain-lines console file exists.
        self.assertTrue(os.path.exists(self.daemon.console))


class ConfigPrecedenceTest(unittest.TestCase):
    def test_kernel_cmdline_beats_config_file_and_flag_beats_both(self):
        workdir = h.new_workdir(self)
        # Token from the kernel command line (over the file), no --token flag.
        d = h.Daemon(workdir, token=None,
                     config_text="token = file-token-0123456789\nconsole = none\n",
                     cmdline_text="quiet byoi.token=cmdline-token-0123456789 byoi.frob=1\n")
        try:
            self.assertEqual(d.request("GET", "/v1/bringYourOwnImage",
                                       token="cmdline-token-0123456789")[0], 404)
            self.assertEqual(d.request("GET", "/v1/bringYourOwnImage",
                                       token="file-token-0123456789")[0], 401)
            self.assertIn("ignoring unknown kernel command line option byoi.frob", d.read_log())
        finally:
            d.stop()
        d = h.Daemon(workdir, token="flag-token-0123456789",
                     config_text="token = file-token-0123456789\nconsole = none\n",
                     cmdline_text="byoi.token=cmdline-token-0123456789\n")
        try:
            self.assertEqual(d.request("GET", "/v1/bringYourOwnImage",
                                       token="flag-token-0123456789")[0], 404)
            self.assertEqual(d.request("GET", "/v1/bringYourOwnImage",
                                       token="cmdline-token-0123456789")[0], 401)
        finally:
            d.stop()
        # No token value ever reaches the log.
        for secret in ("file-token-", "cmdline-token-", "flag-token-"):
            self.assertNotIn(secret, d.read_log())

    def test_config_errors_exit_2_with_a_sentence(self):
        workdir = h.new_workdir(self)
        env = dict(os.environ, BYOI_KERNEL_CMDLINE="/dev/null")
        conf = os.path.join(workdir, "bad.conf")
        with open(conf, "w") as f:
            f.write("token = 0123456789abcdef\nreboot = halt\n")
        r = subprocess.run([h.AGENT, "daemon", "--config", conf], capture_output=True, text=True,
                           env=env, timeout=10)
        self.assertEqual(r.returncode, 2)
        self.assertIn("reboot (from %s): must be none, reboot, poweroff or kexec" % conf, r.stderr)
        with open(conf, "w") as f:
            f.write("listen = 127.0.0.1:0\n")
        r = subprocess.run([h.AGENT, "daemon", "--config", conf], capture_output=True, text=True,
                           env=env, timeout=10)
        self.assertEqual(r.returncode, 2)
        self.assertIn("no API token", r.stderr)

    def test_a_token_shorter_than_16_characters_is_refused_at_start_up(self):
        workdir = h.new_workdir(self)
        env = dict(os.environ, BYOI_KERNEL_CMDLINE="/dev/null")
        r = subprocess.run([h.AGENT, "daemon", "--config", "/dev/null", "--listen", "127.0.0.1:0",
                            "--token", "short-secret"], capture_output=True, text=True, env=env,
                           timeout=10)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(r.stderr, "byoi-agent daemon: token (from command line): the token must be "
                                   "at least 16 characters long (it has 12)\n")
        token_file = write_token_file(workdir, "short-secret\n", 0o600)
        r = subprocess.run([h.AGENT, "daemon", "--config", "/dev/null", "--listen", "127.0.0.1:0",
                            "--token-file", token_file], capture_output=True, text=True, env=env,
                           timeout=10)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(r.stderr, "byoi-agent daemon: token_file (from command line): the token in "
                                   "the file must be at least 16 characters long (it has 12)\n")
        self.assertNotIn("short-secret", r.stderr)


class TokenFileTest(unittest.TestCase):
    def test_the_token_from_a_file_is_not_on_the_command_line(self):
        workdir = h.new_workdir(self)
        token_file = write_token_file(workdir, h.TOKEN + "\n", 0o600)
        d = h.Daemon(workdir, token_file=token_file)
        try:
            self.assertEqual(d.request("GET", "/v1/bringYourOwnImage")[0], 404)
            self.assertEqual(d.request("GET", "/v1/bringYourOwnImage", token=h.TOKEN + "x")[0], 401)
            with open("/proc/%d/cmdline" % d.proc.pid, "rb") as f:
                cmdline = f.read()
            self.assertIn(token_file.encode(), cmdline)
            self.assertNotIn(h.TOKEN.encode(), cmdline)
        finally:
            d.stop()
        self.assertNotIn(h.TOKEN, d.read_log())

    def test_a_file_others_can_read_and_both_options_are_refused(self):
        workdir = h.new_workdir(self)
        token_file = write_token_file(workdir, h.TOKEN + "\n", 0o644)
        env = dict(os.environ, BYOI_KERNEL_CMDLINE="/dev/null")
        base = [h.AGENT, "daemon", "--config", "/dev/null", "--listen", "127.0.0.1:0"]
        r = subprocess.run(base + ["--token-file", token_file], capture_output=True, text=True,
                           env=env, timeout=10)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(r.stderr, "byoi-agent daemon: token_file (from command line): %s is "
                                   "accessible to group or others (mode 0644): make it 0600 or "
                                   "0400\n" % token_file)
        os.chmod(token_file, 0o600)
        r = subprocess.run(base + ["--token-file", token_file, "--token", h.TOKEN],
                           capture_output=True, text=True, env=env, timeout=10)
        self.assertEqual(r.returncode, 2)
        self.assertIn("--token excludes --token-file", r.stderr)


class TlsTest(unittest.TestCase):
    def test_tls_with_a_self_signed_certificate(self):
        workdir = h.new_workdir(self)
        cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key,
                        "-out", cert], check=True, capture_output=True)
        d = h.Daemon(workdir, tls=(cert, key))
        try:
            self.assertIn("(TLS)", d.read_log())
            self.assertEqual(d.request("GET", "/healthz", token=None)[:3:2], (200, b"ok\n"))
            self.assertEqual(d.request("GET", "/v1/bringYourOwnImage", token="wrong")[0], 401)
            self.assertEqual(d.request("GET", "/v1/bringYourOwnImage")[0], 404)
            code, _, body = d.request("POST", "/v1/bringYourOwnImage", BAD_MANIFESTS[0][0])
            self.assertEqual((code, json.loads(body)["message"]), (400, BAD_MANIFESTS[0][1]))
            # A client that does not trust the certificate is refused by the handshake.
            with self.assertRaises(ssl.SSLError):
                ctx = ssl.create_default_context()
                with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
                    with ctx.wrap_socket(s, server_hostname="127.0.0.1"):
                        pass
            # Plain HTTP on the TLS port gets no HTTP answer.
            with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                s.settimeout(5)
                try:
                    data = s.recv(100)
                except OSError:
                    data = b""
                self.assertFalse(data.startswith(b"HTTP/1.1 200"))
            # TLS 1.1 is refused.
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(cert)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = ssl.TLSVersion.TLSv1
                ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            with self.assertRaises((ssl.SSLError, OSError)):
                with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
                    with ctx.wrap_socket(s, server_hostname="127.0.0.1"):
                        pass
        finally:
            d.stop()


    def test_tls_1_2_offers_only_ecdhe_with_aead_and_tls_1_3_works(self):
        workdir = h.new_workdir(self)
        cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        d = h.Daemon(workdir, tls=(cert, key))
        self.addCleanup(d.stop)

        def s_client(*args):
            # @SECLEVEL=0: the client offers whatever it is told, so a refusal is the server's.
            return subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % d.port,
                                   "-brief", *args], stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=15)

        for suite in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
                      "ECDHE-RSA-CHACHA20-POLY1305"):
            r = s_client("-tls1_2", "-cipher", suite + ":@SECLEVEL=0")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("Protocol version: TLSv1.2\n", r.stderr)
            self.assertIn("Ciphersuite: %s\n" % suite, r.stderr)
        # CBC, no forward secrecy, finite-field DH: all refused.
        for suite in ("ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES128-SHA256", "AES128-GCM-SHA256",
                      "AES256-SHA", "DHE-RSA-AES128-GCM-SHA256"):
            r = s_client("-tls1_2", "-cipher", suite + ":@SECLEVEL=0")
            self.assertNotEqual(r.returncode, 0, suite + ": " + r.stderr)
            self.assertNotIn("Ciphersuite:", r.stderr, suite)
            self.assertIn("handshake failure", r.stderr, suite)
        r = s_client("-tls1_3")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Protocol version: TLSv1.3\n", r.stderr)
        for old in ("-tls1", "-tls1_1"):
            r = s_client(old, "-cipher", "DEFAULT:@SECLEVEL=0")
            self.assertNotEqual(r.returncode, 0, old + ": " + r.stderr)
            self.assertNotIn("Protocol version:", r.stderr, old)


def _flood(port, sources, count, trickle, stop, opened, closed):
    """Runs in a child process (its own interpreter lock, like a real attacker): keeps `count`
    connections open to the daemon from `sources`, idle or (every second one, when `trickle`)
    sending a request head a byte every 0.5 s that never ends, and reopens each one the moment
    the daemon closes it. Counts connections opened and closed by the daemon."""
    import selectors
    sel = selectors.DefaultSelector()
    head = b"GET /v1/bringYourOwnImage HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 4096
    sent = {}

    def open_one(i):
        s = socket.socket()
        try:
            s.bind((sources[i % len(sources)], 0))
            s.settimeout(2)
            s.connect(("127.0.0.1", port))
        except OSError:
            s.close()
            return False
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        sent[s] = 0
        opened.value += 1
        return True

    missing = [i for i in range(count) if not open_one(i)]
    next_trickle = time.monotonic()
    while not stop.is_set():
        for key, _ in sel.select(0.05):
            s = key.fileobj
            try:
                if s.recv(4096):
                    continue
            except BlockingIOError:
                continue
            except OSError:
                pass
            sel.unregister(s)
            del sent[s]
            s.close()
            closed.value += 1
            if not open_one(key.data):
                missing.append(key.data)
        missing = [i for i in missing if not open_one(i)]
        if trickle and time.monotonic() >= next_trickle:
            next_trickle += 0.5
            for key in list(sel.get_map().values()):
                s = key.fileobj
                if key.data % 2 and sent[s] < len(head):
                    try:
                        s.send(head[sent[s]:sent[s] + 1])
                        sent[s] += 1
                    except OSError:
                        pass
    for key in list(sel.get_map().values()):
        key.fileobj.close()


class Flood:
    """The attacker of ConnectionFloodTest, in a child process; stop() ends it."""

    def __init__(self, port, sources, count=500, trickle=True):
        import multiprocessing
        ctx = multiprocessing.get_context("fork")
        self.stop_event = ctx.Event()
        self.opened = ctx.Value("q", 0, lock=False)
        self.closed = ctx.Value("q", 0, lock=False)
        self.proc = ctx.Process(target=_flood, args=(port, sources, count, trickle,
                                                     self.stop_event, self.opened, self.closed))
        self.proc.start()

    def stop(self):
        self.stop_event.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


class ConnectionFloodTest(unittest.TestCase):
    """Anyone who reaches the port, without the token, tries to shut the API out with idle and
    trickling connections from other addresses (all of 127.0.0.0/8 is this machine), reopened as
    soon as the daemon closes them. A client with the token from 127.0.0.1 is still answered
    within 1 s, every time, and the daemon logs a few lines about it, not one per connection."""

    REFUSAL_LINES = re.compile(r"http: (refused a connection|\d+ connections open: closed one)")

    def attack(self, d, sources, seconds=12, trickle=True):
        flood = Flood(d.port, sources, trickle=trickle)
        self.addCleanup(flood.stop)
        h.wait_for(lambda: flood.opened.value >= 500, 30, "500 attacking connections")
        start = time.monotonic()
        answered = 0
        while time.monotonic() - start < seconds:
            t = time.monotonic()
            code, _, body = d.request("GET", "/v1/bringYourOwnImage", timeout=5)
            elapsed = time.monotonic() - t
            self.assertEqual((code, json.loads(body)), (404, {"message": "No deployment."}))
            self.assertLess(elapsed, 1.0, "answered in %.2f s" % elapsed)
            answered += 1
            # /healthz with the token: without it a request never authenticates its connection,
            # which may then be closed to make room while the server is full.
            t = time.monotonic()
            code, _, body = d.request("GET", "/healthz", timeout=5)
            elapsed = time.monotonic() - t
            self.assertEqual((code, body), (200, b"ok\n"))
            self.assertLess(elapsed, 1.0, "answered in %.2f s" % elapsed)
            time.sleep(0.1)  # pacing: some 50 rounds over the attack
        flood.stop()
        # The attack really happened: the daemon closed most of what was opened, many times over.
        self.assertGreater(flood.opened.value, 1000)
        self.assertGreater(flood.closed.value, 500)
        self.assertGreater(answered, 20)
        self.assertIsNone(d.proc.poll(), "the daemon died")
        # One line per 10 s at most (a flood of connections must not scroll the serial console).
        lines = [l for l in d.read_log().splitlines() if self.REFUSAL_LINES.search(l)]
        self.assertGreaterEqual(len(lines), 1)
        self.assertLessEqual(len(lines), seconds // 10 + 3, "\n".join(lines))
        return flood, lines

    def test_500_connections_from_one_address(self):
        d = h.Daemon(h.new_workdir(self))
        self.addCleanup(d.stop)
        flood, lines = self.attack(d, ["127.0.0.2"])
        self.assertIn("http: refused a connection from 127.0.0.2: 16 connections open from that "
                      "address", lines[0])

    def test_500_connections_from_ten_addresses_fill_the_server(self):
        # 10 x 16 > 64: the server is full, and the oldest connection without the token makes room.
        d = h.Daemon(h.new_workdir(self))
        self.addCleanup(d.stop)
        flood, lines = self.attack(d, ["127.0.0.%d" % i for i in range(2, 12)])
        self.assertTrue(any("connections open: closed one from 127.0.0." in l for l in lines),
                        "\n".join(lines))

    def test_a_low_descriptor_limit_lowers_the_connection_limit(self):
        # With 64 descriptors the daemon serves 32 connections and keeps the rest for itself, so
        # accept() never runs out and the flood is refused rather than queued.
        d = h.Daemon(h.new_workdir(self), nofile=(64, 64))
        self.addCleanup(d.stop)
        self.assertIn("http: the descriptor limit is 64: serving at most 32 connections instead "
                      "of 64", d.read_log())
        self.attack(d, ["127.0.0.%d" % i for i in range(2, 12)])
        self.assertNotIn("Too many open files", d.read_log())

    def test_accept_errors_do_not_stop_serving(self):
        # 20 descriptors: the daemon's own (11) and its 10 connections leave none for accept()
        # during the flood. It logs that (bounded), and serves again once the flood ends.
        d = h.Daemon(h.new_workdir(self), nofile=(20, 20))
        self.addCleanup(d.stop)
        flood = Flood(d.port, ["127.0.0.%d" % i for i in range(2, 12)], trickle=False)
        self.addCleanup(flood.stop)
        h.wait_for(lambda: flood.opened.value >= 500, 30, "500 attacking connections")
        h.wait_for(lambda: "http: accept: Too many open files" in d.read_log(), 20,
                   "accept() out of descriptors")
        flood.stop()
        for _ in range(5):
            t = time.monotonic()
            code, _, _ = d.request("GET", "/v1/bringYourOwnImage", timeout=10)
            self.assertEqual(code, 404)
            self.assertLess(time.monotonic() - t, 6.0)  # at worst the head deadline (5 s) frees one
        accept_lines = [l for l in d.read_log().splitlines() if "http: accept: " in l]
        self.assertLessEqual(len(accept_lines), 5, "\n".join(accept_lines))


class HugePostTest(unittest.TestCase):
    """Manifests of 1 MiB in the worst shape found (80,000 metadata keys) validate in linear time,
    and while several are being handled, /healthz and status calls are answered within 1 s."""

    def test_status_calls_are_answered_while_huge_posts_are_handled(self):
        d = h.Daemon(h.new_workdir(self))
        self.addCleanup(d.stop)
        keys = []
        size = 0
        while size < (1 << 20) - 4096:
            k = '"k%d":""' % len(keys)
            keys.append(k)
            size += len(k) + 1
        body = ('{"operatingSystem": "byoi_64", "customizations": {"imageURL": '
                '"http://127.0.0.1:1/x.raw", "imageType": "raw", "configDriveMetadata": {%s}}, '
                '"storage": [{"diskGroupId": -1}]}' % ",".join(keys)).encode()
        self.assertLessEqual(len(body), 1 << 20)
        answers = []
        errors = []

        def post():
            try:
                answers.append(d.request("POST", "/v1/bringYourOwnImage", body=body,
                                         headers={"Content-Type": "application/json"},
                                         timeout=60))
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(e)
        posting = [threading.Thread(target=post) for _ in range(8)]
        for t in posting:
            t.start()
        slowest = 0
        while any(t.is_alive() for t in posting):
            for method, path, token in (("GET", "/healthz", None),
                                        ("GET", "/v1/bringYourOwnImage", h.TOKEN)):
                t = time.monotonic()
                code, _, _ = d.request(method, path, token=token, timeout=5)
                slowest = max(slowest, time.monotonic() - t)
                self.assertIn(code, (200, 404))
        for t in posting:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(len(answers), 8)
        for code, _, answer in answers:
            self.assertEqual((code, json.loads(answer)), (400, {
                "message": "Invalid manifest: storage[0].diskGroupId: must not be negative"}))
        self.assertLess(slowest, 1.0)


class JobTest(unittest.TestCase):
    """Jobs: one at a time, cancellation, restart safety, a whole deployment."""

    def setUp(self):
        self.workdir = h.new_workdir(self)
        self.images = h.ImageServer()
        self.addCleanup(self.images.stop)

    def start(self, **kwargs):
        d = h.Daemon(self.workdir, **kwargs)
        self.addCleanup(d.stop)
        return d

    def cancel_within_2_s(self, d):
        """DELETE a running job: 204 once it stopped, within 2 s; the job is cleared at once, from
        the API and the state file (docs/api.md)."""
        start = time.monotonic()
        code, _, body = d.request("DELETE", "/v1/bringYourOwnImage")
        elapsed = time.monotonic() - start
        self.assertEqual((code, body), (204, b""))
        self.assertLess(elapsed, 2.0)
        self.assert_no_deployment(d)

    def assert_no_deployment(self, d):
        code, _, body = d.request("GET", "/v1/bringYourOwnImage")
        self.assertEqual((code, json.loads(body)), (404, {"message": "No deployment."}))
        self.assertFalse(os.path.exists(d.state_file))

    def assert_cancelled_once(self, d):
        code, _, body = d.request("GET", "/metrics")
        self.assertIn('byoi_jobs_total{outcome="cancelled"} 1\n', body.decode())
        self.assertIn("byoi-agent: ERROR: Deployment cancelled.\n", d.read_console())

    def slow_manifest(self):
        return {"URL": self.images.url("/slow.raw"), "type": "raw",
                "configdrive": {"enable": True, "hostname": "web-1"}}

    def test_409_on_a_second_post_while_a_job_is_doing(self):
        d = self.start()
        code, _, body = d.request("POST", "/v1/bringYourOwnImage", self.slow_manifest())
        self.assertEqual(code, 202)
        first = json.loads(body)
        self.assertEqual((first["status"], first["message"], first["servername"]),
                         ("doing", "starting", "web-1"))
        status = h.wait_download_or_end(d)
        self.assertEqual(status["status"], "doing")
        code, _, body = d.request("POST", "/v1/bringYourOwnImage", self.slow_manifest())
        self.assertEqual(code, 409)
        self.assertEqual(json.loads(body), {"message": "A deployment is already in progress."})
        self.assertEqual(d.status()[1]["status"], "doing")

    def test_delete_during_download_cancels_within_2_s_and_leaves_the_disk_untouched(self):
        d = self.start()
        with open(d.disk, "r+b") as f:
            f.write(os.urandom(1 << 20))
        before = h.sha256_file(d.disk)
        self.assertEqual(d.request("POST", "/v1/bringYourOwnImage", self.slow_manifest())[0], 202)
        status = d.wait_status(lambda s: s["status"] != "doing" or
                               h.step(s, "download")["bytesDone"] > 0)
        self.assertEqual(status["status"], "doing")
        self.cancel_within_2_s(d)
        self.assert_cancelled_once(d)
        self.assertIn("byoi-agent: download    failed\n", d.read_console())
        self.assertEqual(h.sha256_file(d.disk), before)
        # DELETE is idempotent, and a restart does not bring the job back.
        self.assertEqual(d.request("DELETE", "/v1/bringYourOwnImage")[0], 204)
        d.stop()
        self.assert_no_deployment(self.start())

    def start_writing(self, image_mib, bytes_per_second):
        """A daemon writing a raw image of `image_mib` MiB (random bytes: every chunk is really
        written, none zeroed) to a loop device over a file of random bytes, its writes throttled to
        `bytes_per_second` (a real slow disk); returns (daemon, loop device, disk file) once 4 MiB
        are written."""
        image = os.path.join(self.workdir, "image.raw")
        h.make_gpt_image(image, size=image_mib << 20)
        with open(image, "r+b") as f:
            f.seek(2 << 20)
            f.write(os.urandom((image_mib - 4) << 20))
        with open(image, "rb") as f:
            self.images.httpd.files["/image.raw"] = f.read()
        disk_file = os.path.join(self.workdir, "loopdisk.img")
        with open(disk_file, "wb") as f:
            f.write(os.urandom((image_mib + 64) << 20))
        loop = h.attach_loop(disk_file)
        self.addCleanup(h.detach_loop, loop)
        d = self.start(disk=loop)
        throttle = h.WriteThrottle(loop, d.proc.pid, bytes_per_second)
        self.addCleanup(throttle.remove)
        manifest = {"URL": self.images.url("/image.raw"), "type": "raw"}
        self.assertEqual(d.request("POST", "/v1/bringYourOwnImage", manifest)[0], 202)
        d.wait_status(lambda s: s["status"] != "doing" or
                      h.step(s, "write")["bytesDone"] >= (4 << 20), timeout=60)
        return d, loop, disk_file

    @unittest.skipUnless(h.WriteThrottle.available(), "no cgroup v1 blkio throttle here")
    def test_delete_during_write_cancels_within_2_s_and_zeroes_the_first_and_last_mib(self):
        # 32 MB/s, a slow disk: the write takes ~4 s, and the writes in flight when the job is
        # cancelled (4 threads x 4 MiB) finish within 0.5 s.
        d, loop, disk_file = self.start_writing(128, 32 << 20)
        self.cancel_within_2_s(d)
        self.assert_cancelled_once(d)
        console = d.read_console()
        self.assertIn("byoi-agent: download    done", console)
        self.assertIn("byoi-agent: write       failed\n", console)
        self.assertNotIn("partition", console)
        self.assert_disk_not_bootable(loop, os.path.getsize(disk_file))

    def assert_disk_not_bootable(self, loop, size):
        """Writing had begun: the disk must not look bootable, whatever it holds in between."""
        with open(loop, "rb") as f:
            self.assertEqual(f.read(1 << 20), bytes(1 << 20))
            f.seek(size - (1 << 20))
            self.assertEqual(f.read(1 << 20), bytes(1 << 20))
        self.assertNotIn("EFI PART", subprocess.run(["blkid", "-p", loop], capture_output=True,
                                                    text=True).stdout)

    @unittest.skipUnless(h.WriteThrottle.available(), "no cgroup v1 blkio throttle here")
    def test_delete_answered_202_while_stopping_then_the_job_is_cleared_when_it_stops(self):
        # 4 MiB/s: the writes in flight when the job is cancelled (4 threads x 4 MiB) take ~4 s,
        # longer than DELETE waits.
        d, loop, disk_file = self.start_writing(64, 4 << 20)
        start = time.monotonic()
        code, _, body = d.request("DELETE", "/v1/bringYourOwnImage")
        elapsed = time.monotonic() - start
        self.assertEqual(code, 202, body)
        self.assertGreater(elapsed, 1.9)  # it waited the 2 s of docs/api.md first
        status = json.loads(body)
        self.assertEqual((status["status"], h.step(status, "write")["status"]), ("doing", "doing"))
        # Until it stops, GET shows it doing (the runner may stop any moment: then it is cleared).
        code, _, body = d.request("GET", "/v1/bringYourOwnImage")
        self.assertIn(code, (200, 404))
        if code == 200:
            self.assertEqual(json.loads(body)["status"], "doing")
        # Once stopped, it is cleared: from the API, the state file, and after a restart.
        h.wait_for(lambda: d.request("GET", "/v1/bringYourOwnImage")[0] == 404, 60,
                   "the cancelled job cleared")
        self.assert_no_deployment(d)
        self.assert_cancelled_once(d)
        self.assert_disk_not_bootable(loop, os.path.getsize(disk_file))
        d.stop()
        self.assert_no_deployment(self.start(disk=loop))

    def test_delete_after_the_job_ended_clears_it(self):
        d = self.start()
        self.assertEqual(d.request("POST", "/v1/bringYourOwnImage",
                                   {"URL": self.images.url("/missing.raw"), "type": "raw"})[0], 202)
        d.wait_status(lambda s: s["status"] != "doing")
        self.assertTrue(os.path.exists(d.state_file))
        self.assertEqual(d.request("DELETE", "/v1/bringYourOwnImage")[0], 204)
        self.assertEqual(d.status()[0], 404)
        self.assertFalse(os.path.exists(d.state_file))

    def test_a_job_left_doing_in_the_state_file_is_interrupted_after_a_restart(self):
        state_dir = os.path.join(self.workdir, "run")
        os.makedirs(state_dir)
        steps = ["download", "verify", "write", "partition", "configdrive", "bootloader", "reboot"]
        doing = {"status": "doing", "message": "writing image", "checksum": "", "servername": "web-1",
                 "detail": "", "elapsedTime": 12, "startedAt": int(time.time()) - 12, "jobId": "",
                 "progress": [{"step": s, "status": "done" if s in ("download", "verify")
                               else "doing" if s == "write" else "todo", "comment": "",
                               "bytesDone": 0, "bytesTotal": 0, "seconds": 0} for s in steps]}
        with open(os.path.join(state_dir, "state.json"), "w") as f:
            json.dump(doing, f)
        d = self.start()
        code, status = d.status()
        self.assertEqual(code, 200)
        self.assertEqual(status["status"], "error")
        self.assertEqual(status["message"], "Deployment interrupted: the agent restarted.")
        self.assertEqual(h.step(status, "write")["status"], "error")
        self.assertEqual(h.step(status, "download")["status"], "done")
        # The state file says so too, and the console shows it in full.
        with open(d.state_file) as f:
            self.assertEqual(json.load(f)["message"], "Deployment interrupted: the agent restarted.")
        self.assertIn("ERROR: Deployment interrupted: the agent restarted.", d.read_console())
        # A new job may be posted.
        self.assertEqual(d.request("POST", "/v1/bringYourOwnImage", BAD_MANIFESTS[0][0])[0], 400)

    def test_kill_9_during_a_job_then_restart_says_interrupted(self):
        d = self.start()
        self.assertEqual(d.request("POST", "/v1/bringYourOwnImage", self.slow_manifest())[0], 202)
        status = h.wait_download_or_end(d)
        self.assertEqual(status["status"], "doing")

        def state_file_says_downloading():
            try:
                with open(d.state_file) as f:
                    state = json.load(f)
            except (OSError, ValueError):
                return False
            return state["status"] == "doing" and h.step(state, "download")["status"] == "doing"
        h.wait_for(state_file_says_downloading, 10, "the state file shows the download")
        d.kill9()
        d2 = self.start()
        code, status = d2.status()
        self.assertEqual(code, 200)
        self.assertEqual(status["status"], "error")
        self.assertEqual(status["message"], "Deployment interrupted: the agent restarted.")
        self.assertEqual(h.step(status, "download")["status"], "error")

    def test_sigterm_during_a_job_cancels_it(self):
        d = self.start()
        self.assertEqual(d.request("POST", "/v1/bringYourOwnImage", self.slow_manifest())[0], 202)
        status = h.wait_download_or_end(d)
        self.assertEqual(status["status"], "doing")
        start = time.monotonic()
        self.assertEqual(d.stop(), 0)
        self.assertLess(time.monotonic() - start, 5)
        with open(d.state_file) as f:
            self.assertEqual(json.load(f)["message"], "Deployment cancelled.")

    def test_full_job_post_poll_until_done_disk_checked(self):
        image = os.path.join(self.workdir, "image.raw")
        h.make_gpt_image(image)
        with open(image, "rb") as f:
            data = f.read()
        self.images.httpd.files["/image.raw"] = data
        disk_file = os.path.join(self.workdir, "loopdisk.img")
        with open(disk_file, "wb") as f:
            f.truncate(128 << 20)
        loop = h.attach_loop(disk_file)
        self.addCleanup(h.detach_loop, loop)
        d = self.start(disk=loop)
        import hashlib
        manifest = {"URL": self.images.url("/image.raw"), "type": "raw",
                    "checkSum": hashlib.sha256(data).hexdigest(), "checkSumType": "sha256",
                    "configdrive": {"enable": True, "hostname": "web-1",
                                    "sshKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBYOI test@byoi",
                                    "userData": "#cloud-config\n"}}
        code, _, body = d.request("POST", "/v1/bringYourOwnImage", manifest)
        self.assertEqual(code, 202, body)
        status = d.wait_status(lambda s: s["status"] != "doing", timeout=120)
        self.assertEqual(status["status"], "done", status)
        self.assertEqual(status["checksum"], hashlib.sha256(data).hexdigest())
        for name in ("download", "verify", "write", "partition", "configdrive"):
            self.assertEqual(h.step(status, name)["status"], "done", name)
        # The image's partition content is on the disk; the GPT is valid and spans the disk.
        with open(loop, "rb") as f:
            f.seek(2048 * 512)
            self.assertEqual(f.read(1 << 20), data[2048 * 512:2048 * 512 + (1 << 20)])
        r = subprocess.run(["sgdisk", "-v", loop], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("No problems found", r.stdout)
        # A second partition at the end holds the config drive (vfat labelled config-2).
        r = subprocess.run(["sgdisk", "-i", "2", loop], capture_output=True, text=True)
        m = re.search(r"First sector: (\d+)", r.stdout)
        self.assertIsNotNone(m, r.stdout)
        r = subprocess.run(["blkid", "-p", "-O", str(int(m.group(1)) * 512), loop],
                           capture_output=True, text=True)
        self.assertIn('LABEL="config-2"', r.stdout)
        self.assertIn("DONE in", d.read_console())


if __name__ == "__main__":
    unittest.main()
