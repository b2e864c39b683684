#!/usr/bin/python3
"""The real daemon's HTTP API on 127.0.0.1 (docs/api.md): authentication, manifests refused with the
exact catalogue message, size limits, routing, metrics, the slow-client defence, TLS, one job at a
time, cancellation (during download and during write), restart safety, and a whole job."""

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
    ({"URL": "http://127.0.0.1:1/x", "type": "vmdk"}, "Bad format image, expected: qcow2, raw."),
    ({"URL": "http://127.0.0.1:1/x", "type": "raw", "checkSum": "ab", "checkSumType": "crc32"},
     "Bad checkSumType, expected: md5, sha1, sha256, sha512."),
    ({"URL": "http://127.0.0.1:1/x", "type": "raw", "checkSum": "ab"},
     "Please provide checkSum AND checkSumType or none of them"),
]


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

    def test_401_without_or_with_a_wrong_token_says_nothing(self):
        for token in (None, "wrong", h.TOKEN + "x", ""):
            for method, path in (("GET", "/v1/bringYourOwnImage"), ("POST", "/v1/bringYourOwnImage"),
                                 ("DELETE", "/v1/bringYourOwnImage"), ("GET", "/v1/disks"),
                                 ("GET", "/metrics"), ("GET", "/no/such/path")):
                code, headers, body = self.daemon.request(method, path, token=token,
                                                          body=b"{}" if method == "POST" else None)
                self.assertEqual(code, 401, (method, path, token))
                self.assertEqual(body, b"", (method, path, token))

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
        stop = threading.Event()
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
                stop.wait(1.0)  # one byte per second
        t = threading.Thread(target=trickle)
        t.start()
        try:
            time.sleep(0.5)
            for _ in range(10):
                start = time.monotonic()
                code, _, body = self.daemon.request("GET", "/healthz", token=None)
                self.assertEqual((code, body), (200, b"ok\n"))
                self.assertLess(time.monotonic() - start, 0.5)
                time.sleep(0.3)
            # ...and the slow client is cut off at the request deadline (20 s), not served.
            slow.settimeout(25)
            data = b""
            try:
                data = slow.recv(4096)
            except OSError:
                pass
            self.assertEqual(data, b"")
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
        d = h.Daemon(workdir, token=None, config_text="token = file-token\nconsole = none\n",
                     cmdline_text="quiet byoi.token=cmdline-token byoi.frob=1\n")
        try:
            self.assertEqual(d.request("GET", "/v1/bringYourOwnImage", token="cmdline-token")[0], 404)
            self.assertEqual(d.request("GET", "/v1/bringYourOwnImage", token="file-token")[0], 401)
            self.assertIn("ignoring unknown kernel command line option byoi.frob", d.read_log())
        finally:
            d.stop()
        d = h.Daemon(workdir, token="flag-token", config_text="token = file-token\nconsole = none\n",
                     cmdline_text="byoi.token=cmdline-token\n")
        try:
            self.assertEqual(d.request("GET", "/v1/bringYourOwnImage", token="flag-token")[0], 404)
            self.assertEqual(d.request("GET", "/v1/bringYourOwnImage", token="cmdline-token")[0], 401)
        finally:
            d.stop()
        # No token value ever reaches the log.
        for secret in ("file-token", "cmdline-token", "flag-token"):
            self.assertNotIn(secret, d.read_log())

    def test_config_errors_exit_2_with_a_sentence(self):
        workdir = h.new_workdir(self)
        env = dict(os.environ, BYOI_KERNEL_CMDLINE="/dev/null")
        conf = os.path.join(workdir, "bad.conf")
        with open(conf, "w") as f:
            f.write("token = t\nreboot = halt\n")
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
        """DELETE a running job: 204 once it stopped, within 2 s. Returns the status after."""
        start = time.monotonic()
        code, _, body = d.request("DELETE", "/v1/bringYourOwnImage")
        elapsed = time.monotonic() - start
        self.assertEqual((code, body), (204, b""))
        self.assertLess(elapsed, 2.0)
        return d.status()[1]

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
        status = h.wait_download_or_end(d)
        self.assertEqual(status["status"], "doing")
        time.sleep(0.5)
        status = self.cancel_within_2_s(d)
        self.assertEqual(status["status"], "error")
        self.assertEqual(status["message"], "Deployment cancelled.")
        self.assertEqual(h.step(status, "download")["status"], "error")
        self.assertEqual(h.sha256_file(d.disk), before)
        self.assertIn("ERROR: Deployment cancelled.", d.read_console())
        # A second DELETE clears the finished job.
        self.assertEqual(d.request("DELETE", "/v1/bringYourOwnImage")[0], 204)
        self.assertEqual(d.status()[0], 404)
        self.assertFalse(os.path.exists(d.state_file))

    @unittest.skipUnless(h.WriteThrottle.available(), "no cgroup v1 blkio throttle here")
    def test_delete_during_write_cancels_within_2_s_and_zeroes_the_first_and_last_mib(self):
        image = os.path.join(self.workdir, "image.raw")
        h.make_gpt_image(image, size=128 << 20)
        with open(image, "r+b") as f:  # random bytes: every chunk is really written, none zeroed
            f.seek(2 << 20)
            f.write(os.urandom(124 << 20))
        with open(image, "rb") as f:
            self.images.httpd.files["/image.raw"] = f.read()
        disk_file = os.path.join(self.workdir, "loopdisk.img")
        with open(disk_file, "wb") as f:
            f.write(os.urandom(192 << 20))
        loop = h.attach_loop(disk_file)
        self.addCleanup(h.detach_loop, loop)
        d = self.start(disk=loop)
        # 32 MB/s, a slow disk: the write takes ~4 s, and the writes in flight when the job is
        # cancelled (4 threads x 4 MiB) finish within 0.5 s.
        throttle = h.WriteThrottle(loop, d.proc.pid, 32 << 20)
        self.addCleanup(throttle.remove)
        manifest = {"URL": self.images.url("/image.raw"), "type": "raw"}
        self.assertEqual(d.request("POST", "/v1/bringYourOwnImage", manifest)[0], 202)
        d.wait_status(lambda s: s["status"] != "doing" or
                      h.step(s, "write")["bytesDone"] >= (4 << 20), timeout=60)
        status = self.cancel_within_2_s(d)
        self.assertEqual((status["status"], status["message"]), ("error", "Deployment cancelled."))
        self.assertEqual(h.step(status, "download")["status"], "done")
        self.assertEqual(h.step(status, "write")["status"], "error")
        self.assertEqual(h.step(status, "partition")["status"], "todo")
        # Writing had begun: the disk must not look bootable, whatever it holds in between.
        size = os.path.getsize(disk_file)
        with open(loop, "rb") as f:
            self.assertEqual(f.read(1 << 20), bytes(1 << 20))
            f.seek(size - (1 << 20))
            self.assertEqual(f.read(1 << 20), bytes(1 << 20))
        self.assertNotIn("EFI PART", subprocess.run(["blkid", "-p", loop], capture_output=True,
                                                    text=True).stdout)

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
        time.sleep(0.3)
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
