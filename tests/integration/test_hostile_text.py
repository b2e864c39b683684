#!/usr/bin/python3
"""Text from outside never reaches an output raw (agent/base/text.hpp), and an unusable NVRAM fails a
job before its disk is written (docs/status.md, docs/boot.md).

* An origin on 127.0.0.1 answers 500 with the reason phrase ESC ] 0;pwned BEL ESC [2J 0xFF 0xFE.
  `byoi-agent deploy --dry-run` and the daemon report the failure: stderr, stdout, the status file,
  the console, the log, the API's status and the state file hold no ESC, BEL, 0xFF or 0xFE byte, are
  valid UTF-8, and show the phrase escaped. After a restart the daemon serves the failed job's
  record; also when the state file was written raw by an older agent, or was cut short.
* A raw image deployed onto a loop device full of random bytes, with an 80 KB BootOrder in the
  efivars directory: exit 1 with "Could not set EFI boot entry.", the cause in detail, no step
  started, the disk byte for byte as before.

Needs root for the loop device test only. Everything binds 127.0.0.1.
"""

import hashlib
import http.server
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import daemon_backend  # noqa: E402
import daemon_harness as h  # noqa: E402

AGENT = os.environ.get("BYOI_AGENT") or os.path.join(os.path.dirname(os.path.dirname(HERE)),
                                                     "build", "byoi-agent")
EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"

# What the red team's origin sent, and how every output must show it.
REASON = "\x1b]0;pwned\x07\x1b[2J\xff\xfe"
SHOWN = r"\x1b]0;pwned\x07\x1b[2J\xff\xfe"
FORBIDDEN = (b"\x1b", b"\x07", b"\xff", b"\xfe")


class _HostileHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        # send_response encodes the status line as latin-1: U+00FF U+00FE go out as bytes FF FE.
        self.send_response(500, REASON)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET


class HostileOrigin:
    """Answers every request with 500 and the hostile reason phrase."""

    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HostileHandler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = "http://127.0.0.1:%d/image.raw" % self.httpd.server_address[1]

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class CleanOutputs(unittest.TestCase):
    """Assertions on bytes that an operator's terminal, a log viewer or a JSON parser will see."""

    def assertClean(self, data, what):
        self.assertIsInstance(data, bytes)
        for b in FORBIDDEN:
            self.assertNotIn(b, data, "%s holds %r:\n%r" % (what, b, data[-3000:]))
        data.decode("utf-8")  # strict: raises on anything that is not UTF-8

    def assertCleanStatus(self, status, url):
        self.assertEqual(status["status"], "error")
        self.assertEqual(status["message"], "Could not download image located: %s." % url)
        self.assertIn("HTTP 500 " + SHOWN, status["detail"])
        self.assertEqual(h.step(status, "download")["status"], "error")

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="byoi-hostile-")
        self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)
        self.origin = HostileOrigin()
        self.addCleanup(self.origin.stop)


class DeployDryRun(CleanOutputs):

    def test_reason_phrase_reaches_no_output_raw(self):
        manifest = os.path.join(self.workdir, "manifest.json")
        with open(manifest, "w") as f:
            json.dump({"URL": self.origin.url, "type": "raw"}, f)
        status_file = os.path.join(self.workdir, "status.json")
        r = subprocess.run([AGENT, "deploy", "--manifest", manifest, "--dry-run", "--json",
                            "--status-file", status_file, "--retry-delay", "0",
                            "--download-attempts", "2"], capture_output=True, timeout=120)
        self.assertEqual(r.returncode, 1, r.stderr.decode(errors="replace"))
        # The reason phrase did reach the agent (and is shown, escaped) on stderr: log lines and
        # the final error lines.
        self.assertIn(SHOWN.encode(), r.stderr)
        self.assertIn(b"detail: HTTP 500 " + SHOWN.encode(), r.stderr)
        self.assertClean(r.stderr, "stderr")
        self.assertClean(r.stdout, "stdout (--json)")
        with open(status_file, "rb") as f:
            raw = f.read()
        self.assertClean(raw, "the status file")
        status = json.loads(raw)
        self.assertCleanStatus(status, self.origin.url)
        self.assertEqual(json.loads(r.stdout), status)


class Daemon(CleanOutputs):

    def start(self, **kwargs):
        d = h.Daemon(self.workdir, extra_args=["--retry-delay", "0", "--download-attempts", "2"],
                     **kwargs)
        self.addCleanup(d.stop)
        return d

    def read(self, path):
        with open(path, "rb") as f:
            return f.read()

    def test_reason_phrase_reaches_no_output_raw_and_the_failed_job_survives_a_restart(self):
        d = self.start()
        code, _, _ = d.request("POST", "/v1/bringYourOwnImage",
                               {"URL": self.origin.url, "type": "raw"})
        self.assertEqual(code, 202)
        status = d.wait_status(lambda s: s["status"] != "doing", timeout=60)
        self.assertCleanStatus(status, self.origin.url)
        code, _, body = d.request("GET", "/v1/bringYourOwnImage")
        self.assertClean(body, "GET status")
        state = self.read(d.state_file)
        self.assertClean(state, "the state file")
        self.assertEqual(json.loads(state)["detail"], status["detail"])
        d.stop()
        log = self.read(d.log_path)
        self.assertIn(SHOWN.encode(), log, "the log does not show the reason phrase")
        self.assertClean(log, "the daemon's log")
        console = self.read(d.console)
        self.assertIn(b"byoi-agent:   detail: HTTP 500 " + SHOWN.encode(), console)
        self.assertClean(console, "the console")

        # A new daemon on the same state file serves the failed job.
        d2 = self.start()
        code, again = d2.status()
        self.assertEqual(code, 200)
        self.assertEqual({k: again[k] for k in ("status", "message", "detail", "progress")},
                         {k: status[k] for k in ("status", "message", "detail", "progress")})

    def test_a_presigned_query_reaches_no_output_of_the_daemon(self):
        # A presigned URL's query is a password until it expires (docs/status.md): the API's
        # status, the state file, the log and the console show the URL without it.
        secrets = ("a1b2c3d4e5f6amzsig", "gcs-token-99", "AKIAEXAMPLE")
        url = (self.origin.url + "?X-Amz-Credential=AKIAEXAMPLE%2F20240101&"
               "X-Amz-Signature=a1b2c3d4e5f6amzsig&token=gcs-token-99")
        d = self.start()
        code, _, _ = d.request("POST", "/v1/bringYourOwnImage", {"URL": url, "type": "raw"})
        self.assertEqual(code, 202)
        status = d.wait_status(lambda s: s["status"] != "doing", timeout=60)
        self.assertCleanStatus(status, self.origin.url)
        d.stop()
        outputs = {"GET status": json.dumps(status).encode(),
                   "the state file": self.read(d.state_file),
                   "the log": self.read(d.log_path), "the console": self.read(d.console)}
        self.assertIn(self.origin.url.encode(), outputs["the console"])
        for what, data in outputs.items():
            for secret in secrets:
                self.assertNotIn(secret.encode(), data, what)

    def write_state(self, data):
        state_dir = os.path.join(self.workdir, "run")
        os.makedirs(state_dir, exist_ok=True)
        with open(os.path.join(state_dir, "state.json"), "wb") as f:
            f.write(data)

    # What an older agent wrote for the same failure: Python's json escapes the controls as
    # Boost.JSON did, the bytes 0xFF 0xFE are raw.
    OLD_RECORD = (b'{"status":"error","message":"Could not download image located: '
                  b'http://127.0.0.1:1/image.raw.","checksum":"","servername":"web-1",'
                  b'"detail":"HTTP 500 \\u001b]0;pwned\\u0007\\u001b[2J\xff\xfe","elapsedTime":1,'
                  b'"startedAt":1700000000,"progress":[{"step":"download","status":"error",'
                  b'"comment":"","bytesDone":0,"bytesTotal":0,"seconds":0.1}],"warnings":[],'
                  b'"jobId":"job-7"}\n')

    def test_a_state_file_with_invalid_utf8_from_an_older_agent_is_recovered(self):
        self.write_state(self.OLD_RECORD)
        d = self.start()
        code, _, body = d.request("GET", "/v1/bringYourOwnImage")
        self.assertEqual(code, 200)
        self.assertClean(body, "GET status")
        status = json.loads(body)
        self.assertEqual((status["status"], status["message"], status["detail"]),
                         ("error", "Could not download image located: http://127.0.0.1:1/image.raw.",
                          "HTTP 500 " + SHOWN))
        self.assertEqual(status["warnings"], [])
        self.assertClean(self.read(d.state_file), "the state file rewritten")
        self.assertClean(self.read(d.console), "the console")

    def test_a_cut_state_file_still_gives_the_last_job(self):
        self.write_state(self.OLD_RECORD[:self.OLD_RECORD.index(b',"elapsedTime"')])
        d = self.start()
        code, status = d.status()
        self.assertEqual(code, 200)
        self.assertEqual((status["status"], status["message"], status["detail"]),
                         ("error", "Could not download image located: http://127.0.0.1:1/image.raw.",
                          "HTTP 500 " + SHOWN))
        self.assertEqual(len(status["warnings"]), 1, status)
        self.assertRegex(status["warnings"][0],
                         r"^the state file .*/run/state\.json is damaged \(.*\); this record is "
                         r"what could be read of it$")
        self.assertEqual([p["step"] for p in status["progress"]],
                         ["download", "verify", "write", "partition", "configdrive", "bootloader",
                          "reboot"])


class Polling(CleanOutputs):
    """What the backend receives (docs/backend.md) is valid UTF-8 JSON too: the status of a job the
    origin failed with the hostile reason phrase, and of a job refused for its manifest, whose
    detail quotes a value cut inside a UTF-8 sequence (built by the poller, not on the board)."""

    def test_every_status_the_backend_receives_is_clean(self):
        cut_type = "a" + "\u00e9" * 40  # quoted in the detail up to byte 64: inside the 32nd é
        backend = daemon_backend.Backend("agent-7", h.TOKEN, [
            {"jobId": "refused", "manifest": {"URL": self.origin.url, "type": cut_type}},
            {"jobId": "failed", "manifest": {"URL": self.origin.url, "type": "raw"}}])
        self.addCleanup(backend.stop)
        d = h.Daemon(self.workdir, extra_args=["--backend-url", backend.url, "--agent-id", "agent-7",
                                               "--retry-delay", "0", "--download-attempts", "2"])
        self.addCleanup(d.stop)
        # The backend's handler decodes every body as UTF-8 JSON; a body that is not is never
        # recorded (the agent would retry it forever).
        def ended(b):
            return all(any(s["status"] == "error" for s in b.statuses(job))
                       for job in ("refused", "failed"))

        self.assertTrue(backend.wait(ended, timeout=60), "log:\n" + d.read_log())
        refused = backend.statuses("refused")[-1]
        self.assertEqual(refused["message"], "Bad format image, expected: qcow2, raw, ova.")
        self.assertEqual(refused["detail"], "image type '" + cut_type[:32] + "\\xc3'...")
        self.assertCleanStatus(backend.statuses("failed")[-1], self.origin.url)
        for status in backend.statuses():
            self.assertClean(json.dumps(status, ensure_ascii=False).encode(), "a status sent")


def make_raw_image(path):
    """A GPT disk image of 32 MiB with an ESP holding the fallback loader."""
    with open(path, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["sgdisk", "-n", "1:2048:+16M", "-t", "1:ef00", "-n", "2:0:0", path],
                   check=True, capture_output=True)
    subprocess.run(["mkfs.fat", "-F", "16", "--offset", "2048", path, str(16 * 1024)],
                   check=True, capture_output=True)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    spot = "%s@@%d" % (path, 2048 * 512)
    subprocess.run(["mmd", "-i", spot, "::/EFI", "::/EFI/BOOT"], check=True, env=env,
                   capture_output=True)
    loader = path + ".efi"
    with open(loader, "wb") as f:
        f.write(b"MZ fallback loader")
    subprocess.run(["mcopy", "-i", spot, loader, "::/EFI/BOOT/BOOTX64.EFI"], check=True, env=env,
                   capture_output=True)


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class UnusableNvram(unittest.TestCase):

    def setUp(self):
        if os.geteuid() != 0:
            self.skipTest("needs root (loop devices)")
        self.workdir = tempfile.mkdtemp(prefix="byoi-nvram-", dir="/var/tmp")
        self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)

    def test_an_80_kb_boot_order_fails_the_job_before_the_disk_is_written(self):
        image = os.path.join(self.workdir, "image.raw")
        make_raw_image(image)
        with open(image, "rb") as f:
            server = h.ImageServer({"/image.raw": f.read()})
        self.addCleanup(server.stop)
        disk_file = os.path.join(self.workdir, "disk.img")
        with open(disk_file, "wb") as f:
            f.write(os.urandom(64 << 20))
        loop = h.attach_loop(disk_file)
        self.addCleanup(h.detach_loop, loop)
        efivars = os.path.join(self.workdir, "efivars")
        os.mkdir(efivars)
        boot_order = os.path.join(efivars, "BootOrder-" + EFI_GLOBAL)
        with open(boot_order, "wb") as f:
            f.write(struct.pack("<I", 7) + struct.pack("<H", 0) * (40 * 1024))  # 80 KB of entries
        manifest = os.path.join(self.workdir, "manifest.json")
        with open(manifest, "w") as f:
            json.dump({"URL": server.url("/image.raw"), "type": "raw"}, f)
        status_file = os.path.join(self.workdir, "status.json")

        def deploy():
            r = subprocess.run([AGENT, "deploy", "--manifest", manifest, "--disk", loop,
                                "--efivars", efivars, "--status-file", status_file, "--json",
                                "--reboot", "none", "--memory-limit", "256M"],
                               capture_output=True, text=True, timeout=120)
            with open(status_file) as f:
                return r, json.load(f)

        before = sha256_of(loop)
        r, status = deploy()
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual((status["status"], status["message"]),
                         ("error", "Could not set EFI boot entry."))
        self.assertIn("error: Could not set EFI boot entry.\n", r.stderr)
        # Refused while planning: the disk as it was, not a step started, not a byte downloaded.
        self.assertEqual(sha256_of(loop), before, "the disk was touched")
        for p in status["progress"]:
            self.assertEqual(p["status"], "todo", p)
        self.assertEqual(server.requests(), [])
        self.assertEqual(os.path.getsize(boot_order), 4 + 80 * 1024)
        self.assertRegex(status["detail"],
                         r"^reading the EFI boot variables in %s: reading BootOrder: reading "
                         r"%s: larger than 65540 bytes$" % (efivars, boot_order))

        # With the NVRAM repaired the same job goes through.
        os.unlink(boot_order)
        r, status = deploy()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(h.step(status, "bootloader")["status"], "done", status)
        self.assertTrue(os.path.exists(boot_order))


if __name__ == "__main__":
    unittest.main()
