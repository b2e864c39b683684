#!/usr/bin/python3
"""Fetch + verify through `byoi-agent deploy --dry-run` against real servers on 127.0.0.1:
nginx for the plain cases, the fault server of fetch_servers.py for everything that goes wrong.
Every error case checks the exact catalogue message (docs/status.md) in the status file and on
stderr, and, where it matters, the Range headers the server saw."""
import base64
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fetch_servers import (FaultServer, Nginx, Route, digest, mbr_image,  # noqa: E402
                           qcow2_image, run_deploy, self_signed_cert)

MiB = 1 << 20
IMAGE = mbr_image(3 * MiB)  # a raw image with an MBR
SHA256 = digest("sha256", IMAGE)
END = len(IMAGE) - 1
# The first request of a download over several connections (the default, 4): it asks for the
# first 4 MiB, and its answer tells whether ranges work and how long the image is. A 3 MiB image
# is then one piece: its resumes ask for the rest of that piece, `bytes=N-END`.
FIRST = f"bytes=0-{4 * MiB - 1}"
# The verify comment's last part when the image is held in RAM (writeMode auto, docs/pipeline.md).
RAM_MODE = "ram mode: the image fits the RAM budget"


def manifest(url, type_="raw", algo="sha256", checksum=None, **extra):
    m = {"URL": url, "type": type_}
    if algo:
        m["checkSumType"] = algo
        m["checkSum"] = checksum or digest(algo, IMAGE)
    m.update(extra)
    return m


def download_failed(url):
    return f"Could not download image located: {url}."


# Credentials a manifest may carry in its headers (docs/manifest.md); they belong to the origin of its
# URL (scheme, host and port) and to nowhere else.
CREDENTIALS = [{"key": "X-Api-Key", "value": "k3y-of-the-api"},
               {"key": "PRIVATE-TOKEN", "value": "glpat-pr1vate"},
               {"key": "Authorization", "value": "Bearer t0ken-abc"}]
CREDENTIALS_SENT = {"x-api-key": "k3y-of-the-api", "private-token": "glpat-pr1vate",
                    "authorization": "Bearer t0ken-abc"}
NO_CREDENTIALS = dict.fromkeys(CREDENTIALS_SENT)


def credentials(entry):
    """The credential headers a fault server's log entry shows."""
    return {name: entry["headers"].get(name) for name in CREDENTIALS_SENT}


def requests_to(server, path):
    """The fault server's log entries for `path`, whatever their query."""
    return [e for e in server.log if e["path"].split("?")[0] == path]


class FetchTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="byoi-fetch-test-")
        os.chmod(cls.workdir, 0o755)  # nginx's worker runs as nobody
        cls.root = os.path.join(cls.workdir, "www")
        os.makedirs(cls.root)
        with open(os.path.join(cls.root, "image.raw"), "wb") as f:
            f.write(IMAGE)
        cls.qcow2 = qcow2_image(cls.workdir)
        with open(os.path.join(cls.root, "image.qcow2"), "wb") as f:
            f.write(cls.qcow2)
        cls.nginx = Nginx(cls.workdir, cls.root, extra="""
    location = /forbidden.raw { return 403; }
    location = /moved.raw { return 301 /image.raw; }
""")
        cls.fault = FaultServer()
        # Another origin: the same address, another port (RFC 6454).
        cls.other = FaultServer()

    @classmethod
    def tearDownClass(cls):
        cls.other.close()
        cls.fault.close()
        cls.nginx.close()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def deploy(self, m, *extra, **kw):
        return run_deploy(self.workdir, m, *extra, **kw)

    def assertDone(self, run):
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(run.status["status"], "done", run.status)
        self.assertEqual(run.step("download")["status"], "done")
        self.assertEqual(run.step("verify")["status"], "done")
        for step in ("write", "partition", "configdrive", "bootloader", "reboot"):
            self.assertEqual(run.step(step)["status"], "skipped")

    def assertFailed(self, run, message, detail_part=None):
        self.assertEqual(run.returncode, 1, run.stderr)
        self.assertEqual(run.status["status"], "error")
        self.assertEqual(run.status["message"], message)
        self.assertIn("error: " + message + "\n", run.stderr)
        if detail_part is not None:
            self.assertIn(detail_part, run.status["detail"])

    # --- success ---------------------------------------------------------------------------

    def test_raw_each_checksum_type(self):
        url = self.nginx.url("/image.raw")
        for algo in ("md5", "sha1", "sha256", "sha512"):
            with self.subTest(algo=algo):
                run = self.deploy(manifest(url, algo=algo))
                self.assertDone(run)
                self.assertEqual(run.status["checksum"], digest(algo, IMAGE))
                self.assertEqual(run.step("download")["bytesDone"], len(IMAGE))
                self.assertEqual(run.step("download")["bytesTotal"], len(IMAGE))
                self.assertEqual(run.step("verify")["comment"],
                                 f"raw (MBR), virtual size 3.0 MiB ({len(IMAGE)} bytes); "
                                 f"{algo} matches; {RAM_MODE}")

    def test_qcow2_reports_virtual_size(self):
        url = self.nginx.url("/image.qcow2")
        for algo in ("md5", "sha512"):
            with self.subTest(algo=algo):
                run = self.deploy(manifest(url, "qcow2", algo, digest(algo, self.qcow2)))
                self.assertDone(run)
                self.assertEqual(run.status["checksum"], digest(algo, self.qcow2))
                self.assertEqual(run.step("verify")["comment"],
                                 f"qcow2, virtual size 8.0 MiB ({8 * MiB} bytes); {algo} matches; "
                                 f"{RAM_MODE}")

    def test_without_checksum_reports_sha256(self):
        run = self.deploy(manifest(self.nginx.url("/image.raw"), algo=None))
        self.assertDone(run)
        self.assertEqual(run.status["checksum"], SHA256)
        self.assertIn("no checksum given, sha256 computed", run.step("verify")["comment"])
        # The status warns that nothing vouched for these bytes (docs/status.md, warnings).
        self.assertEqual(run.status["warnings"],
                         ["no checksum given: the image was not verified against a known checksum "
                          f"(sha256 {SHA256} computed)"])

    def test_json_output(self):
        run = self.deploy(manifest(self.nginx.url("/image.raw")), "--json")
        self.assertDone(run)
        self.assertEqual(json.loads(run.stdout)["checksum"], SHA256)

    def test_body_without_content_length(self):
        url = self.fault.add("/nolength.raw", Route(IMAGE, no_length=True))
        run = self.deploy(manifest(url))
        self.assertDone(run)

    # --- verify ----------------------------------------------------------------------------

    def test_checksum_mismatch(self):
        for algo in ("md5", "sha1", "sha256", "sha512"):
            with self.subTest(algo=algo):
                wrong = "0" * len(digest(algo, b""))
                run = self.deploy(manifest(self.nginx.url("/image.raw"), algo=algo,
                                           checksum=wrong))
                self.assertFailed(run, f"Bad {algo} for downloaded file, got: "
                                       f"{digest(algo, IMAGE)} while expecting {wrong}.")
                self.assertEqual(run.step("verify")["status"], "error")

    def test_declared_qcow2_but_raw(self):
        run = self.deploy(manifest(self.nginx.url("/image.raw"), "qcow2"))
        self.assertFailed(run, "image provided format is raw which does not match expected "
                               "qcow2 format")

    def test_declared_raw_but_qcow2(self):
        run = self.deploy(manifest(self.nginx.url("/image.qcow2"), "raw", "sha256",
                                   digest("sha256", self.qcow2)))
        self.assertFailed(run, "image provided format is qcow2 which does not match expected "
                               "raw format")

    def test_declared_raw_without_partition_table(self):
        ext4 = os.path.join(self.root, "fs.ext4")
        with open(ext4, "wb") as f:
            f.truncate(4 * MiB)
        subprocess.run(["mkfs.ext4", "-q", "-F", ext4], check=True)
        # A compressed raw image is decoded first (docs/pipeline.md): what counts is what it holds.
        with open(ext4, "rb") as f, open(os.path.join(self.root, "fs.ext4.gz"), "wb") as gz:
            gz.write(gzip.compress(f.read(), compresslevel=1))
        cases = {"/fs.ext4": "an ext4 filesystem", "/fs.ext4.gz": "an ext4 filesystem"}
        for path, what in cases.items():
            with self.subTest(path=path):
                run = self.deploy(manifest(self.nginx.url(path), algo=None))
                self.assertFailed(run, "image provided format is not of type raw because no "
                                       f"partition table was found. It seems to contain: {what}")

    # --- HTTP errors -----------------------------------------------------------------------

    def test_404_is_final(self):
        url = self.nginx.url("/missing.raw")
        before = len(self.nginx.requests())
        run = self.deploy(manifest(url))
        self.assertFailed(run, download_failed(url), "HTTP 404")
        self.assertEqual(run.step("download")["status"], "error")
        self.assertEqual(len(self.nginx.requests()) - before, 1)

    def test_403_is_final(self):
        url = self.nginx.url("/forbidden.raw")
        before = len(self.nginx.requests())
        run = self.deploy(manifest(url))
        self.assertFailed(run, download_failed(url), "HTTP 403 Forbidden")
        self.assertEqual(len(self.nginx.requests()) - before, 1)

    def test_500_then_success(self):
        url = self.fault.add("/flaky.raw", Route(IMAGE, fail_first=[500, 503, 429, 408]))
        run = self.deploy(manifest(url))
        self.assertDone(run)
        self.assertEqual(self.fault.ranges("/flaky.raw"), [FIRST] * 5)
        self.assertIn("HTTP 500", run.stderr)  # the retry notice in the log

    def test_500_until_attempts_run_out(self):
        url = self.fault.add("/broken.raw", Route(IMAGE, status=500))
        run = self.deploy(manifest(url), "--download-attempts", "3")
        self.assertFailed(run, download_failed(url), "HTTP 500 Internal Server Error")
        self.assertIn("3 attempts", run.status["detail"])
        self.assertEqual(len(self.fault.ranges("/broken.raw")), 3)

    def test_presigned_url_signature_never_shown(self):
        # A presigned URL's query is as good as a password until it expires: the status, the log
        # (stderr) and the outputs show the URL without it, and without its userinfo.
        secrets = {"X-Amz-Signature": "a1b2c3d4e5f6amzsig", "sig": "azure-sv-sig-77",
                   "token": "gcs-token-99"}
        query = ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20240101&" +
                 "&".join(f"{k}={v}" for k, v in secrets.items()))
        shown = self.fault.url("/signed/missing.raw")
        url = shown.replace("http://", "http://login:pa55word@") + "?" + query + "#part"
        run = self.deploy(manifest(url))
        self.assertFailed(run, f"Could not download image located: {shown}.", "HTTP 404")
        everything = run.stderr + run.stdout + json.dumps(run.status)
        for secret in list(secrets.values()) + ["AKIAEXAMPLE", "pa55word", "login"]:
            self.assertNotIn(secret, everything)
        # The request itself carried the query.
        self.assertEqual([e["path"] for e in requests_to(self.fault, "/signed/missing.raw")],
                         ["/signed/missing.raw?" + query])

    def test_presigned_redirect_that_fails_shows_no_signature(self):
        # The origin hands out a presigned URL on another host, which refuses it (expired): the
        # detail names where it failed, without the signature.
        sig = "5ec7e7expiredsig"
        target = self.other.add("/bucket/expired.raw", Route(status=403))
        url = self.fault.add("/expired.raw", Route(
            redirect=f"{target}?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature={sig}"))
        run = self.deploy(manifest(url, httpHeader=CREDENTIALS))
        self.assertFailed(run, download_failed(url),
                          f"HTTP 403 Forbidden (at {target}, after 1 redirect(s))")
        self.assertNotIn(sig, run.stderr + run.stdout + json.dumps(run.status))
        self.assertEqual(len(requests_to(self.other, "/bucket/expired.raw")), 1)  # final

    def test_validate_masks_userinfo_and_query(self):
        shown = self.fault.url("/signed/x.raw")
        url = shown.replace("http://", "http://login:pa55word@") + "?X-Amz-Signature=abcdef12"
        path = os.path.join(self.workdir, "validate.json")
        with open(path, "w") as f:
            json.dump(manifest(url), f)
        r = subprocess.run([os.environ.get("BYOI_AGENT", "byoi-agent"), "validate", path],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["url"],
                         shown.replace("http://", "http://***@") + "?***")
        for secret in ("abcdef12", "pa55word", "login"):
            self.assertNotIn(secret, r.stdout + r.stderr)

    def test_userinfo_never_shown(self):
        url = self.nginx.url("/missing.raw").replace("http://", "http://user:s3cret@")
        run = self.deploy(manifest(url))
        self.assertFailed(run, download_failed(self.nginx.url("/missing.raw")))
        self.assertNotIn("s3cret", run.stderr + run.stdout + str(run.status))

    # --- resume ----------------------------------------------------------------------------

    def test_drops_resume_with_range(self):
        drops = [100000, MiB, 2 * MiB + 12345]
        url = self.fault.add("/drops.raw", Route(IMAGE, drops=drops))
        run = self.deploy(manifest(url))
        self.assertDone(run)
        self.assertEqual(run.status["checksum"], SHA256)
        self.assertEqual(self.fault.ranges("/drops.raw"),
                         [FIRST] + [f"bytes={d}-{END}" for d in drops])

    def test_connection_reset_resumes_with_range(self):
        url = self.fault.add("/reset.raw", Route(IMAGE, drops=[777777], reset=True))
        run = self.deploy(manifest(url, algo="sha512"))
        self.assertDone(run)
        self.assertEqual(run.status["checksum"], digest("sha512", IMAGE))
        # A reset throws away what the client had not read yet: it resumes at or before the cut.
        ranges = self.fault.ranges("/reset.raw")
        self.assertEqual(len(ranges), 2, ranges)
        self.assertEqual(ranges[0], FIRST)
        self.assertRegex(ranges[1], rf"^bytes=\d+-{END}$")
        self.assertLessEqual(int(ranges[1][6:].split("-")[0]), 777777)

    def test_image_changed_during_resume_comes_whole(self):
        new = mbr_image(3 * MiB, seed=99)
        url = self.fault.add("/changing.raw", Route(IMAGE, drops=[MiB], replace=new))
        run = self.deploy(manifest(url, checksum=digest("sha256", new)))
        self.assertDone(run)
        # The resume carries If-Range; the server answers 200 with the new image, which is
        # dropped: the download starts over with a first request, so that every connection can
        # fetch the new image.
        self.assertIn("3 request(s), 1 restart(s) from byte 0", run.stderr)
        self.assertIn("a Range request was answered with the whole image (HTTP 200)", run.stderr)
        etag = '"%s"' % hashlib.sha1(IMAGE).hexdigest()
        first, resume, again = [e for e in self.fault.log if e["path"] == "/changing.raw"]
        self.assertEqual((first["range"], first["headers"].get("if-range")), (FIRST, None))
        self.assertEqual(resume["range"], f"bytes={MiB}-{END}")
        self.assertEqual(resume["headers"].get("if-range"), etag)
        self.assertEqual((again["range"], again["headers"].get("if-range")), (FIRST, None))

    def test_206_with_a_wrong_content_range_restarts_from_zero(self):
        # A resumed answer must start where we asked and describe the same image; otherwise its
        # bytes cannot be stitched on, and the download starts over: without Range when the
        # server's ranges are wrong, with a first request again when the image changed.
        resume = f"bytes={MiB}-{END}"
        for lie, detail, ranges in (
                ("missing", "without a matching Content-Range", [FIRST, resume, None]),
                ("start", "without a matching Content-Range", [FIRST, resume, None]),
                ("total", f"its length went from {len(IMAGE)} to {len(IMAGE) + 4096} bytes",
                 [FIRST, resume, FIRST]),
                ("overlong", "a 206 sent more than the bytes", [FIRST, resume, None])):
            with self.subTest(lie):
                path = f"/bad-range-{lie}.raw"
                url = self.fault.add(path, Route(IMAGE, drops=[MiB], bad_range=lie))
                run = self.deploy(manifest(url))
                self.assertDone(run)
                self.assertEqual(run.status["checksum"], SHA256)
                self.assertEqual(self.fault.ranges(path), ranges)
                self.assertIn(detail, run.stderr)
                self.assertIn("3 request(s), 1 restart(s) from byte 0", run.stderr)

    def test_drops_without_range_support_restart_from_zero(self):
        drops = [500000, 2 * MiB]
        url = self.fault.add("/norange.raw", Route(IMAGE, ranges=False, drops=drops))
        run = self.deploy(manifest(url, algo="sha1"))
        self.assertDone(run)
        self.assertEqual(run.status["checksum"], digest("sha1", IMAGE))
        # We keep asking from the last byte; the server answers 200 and we start over.
        self.assertEqual(self.fault.ranges("/norange.raw"),
                         [FIRST, "bytes=500000-", "bytes=2097152-"])
        self.assertIn("3 request(s), 2 restart(s) from byte 0", run.stderr)

    def test_stall_is_retried_with_range(self):
        url = self.fault.add("/stall.raw", Route(IMAGE, stall_at=MiB, stall_seconds=30))
        run = self.deploy(manifest(url), "--stall-timeout", "1")
        self.assertDone(run)
        self.assertLess(run.seconds, 10)
        self.assertEqual(self.fault.ranges("/stall.raw"), [FIRST, f"bytes={MiB}-{END}"])
        self.assertIn("no data received for 1 s", run.stderr)

    def test_cancel_during_stall_stops_within_2s(self):
        url = self.fault.add("/stall-cancel.raw", Route(IMAGE, stall_at=MiB, stall_seconds=30))
        seen = {}

        def look(status_path):
            with open(status_path) as f:
                seen.update(json.load(f))

        run = self.deploy(manifest(url), signal_after=2.5, before_signal=look)
        self.assertFailed(run, "Deployment cancelled.")
        self.assertLess(run.seconds, 2.0)
        # While it waited, the status file showed the download in progress.
        self.assertEqual(seen["status"], "doing")
        self.assertEqual(seen["message"], "downloading image")
        download = seen["progress"][0]
        self.assertEqual((download["step"], download["status"]), ("download", "doing"))
        self.assertEqual((download["bytesDone"], download["bytesTotal"]), (MiB, len(IMAGE)))
        self.assertTrue(download["comment"].startswith("1.0 MiB of 3.0 MiB"), download)
        self.assertIn("download: 1.0 MiB of 3.0 MiB", run.stderr)
        self.assertEqual(run.step("download")["status"], "error")

    def test_content_length_longer_than_body_with_range(self):
        url = self.fault.add("/long.raw", Route(IMAGE, length_delta=1000))
        run = self.deploy(manifest(url))
        # A 206 whose Content-Length is not its Content-Range's is no range to trust: the download
        # starts over without Range. That 200's body is never complete; the resume asks past the
        # real end: 416, final.
        self.assertFailed(run, download_failed(url), "HTTP 416")
        self.assertIn(f"a 206 for bytes 0-{END} with a Content-Length of {len(IMAGE) + 1000}",
                      run.stderr)
        self.assertEqual(self.fault.ranges("/long.raw"), [FIRST, None, f"bytes={len(IMAGE)}-"])

    def test_content_length_longer_than_body_without_range(self):
        url = self.fault.add("/long-norange.raw", Route(IMAGE, length_delta=1000, ranges=False))
        run = self.deploy(manifest(url), "--download-attempts", "2")
        self.assertFailed(run, download_failed(url), "1000 bytes remaining")
        self.assertEqual(len(self.fault.ranges("/long-norange.raw")), 3)

    def test_content_length_shorter_than_body(self):
        url = self.fault.add("/short.raw", Route(IMAGE, length_delta=-1000))
        run = self.deploy(manifest(url))
        short = IMAGE[:-1000]
        self.assertFailed(run, f"Bad sha256 for downloaded file, got: {digest('sha256', short)} "
                               f"while expecting {SHA256}.")
        self.assertEqual(run.step("download")["bytesDone"], len(short))

    # --- truncated bodies ------------------------------------------------------------------
    # A qcow2 without a checksum has nothing but the fetch to tell a cut body from a whole one:
    # missing clusters would read as zeros.

    def test_body_cut_short_every_time_fails(self):
        half = len(self.qcow2) // 2
        end = len(self.qcow2) - 1
        self.assertTrue(4 * MiB < half < 8 * MiB < end, len(self.qcow2))
        # With ranges: the first 4 MiB, then two pieces fetched at once (in either order); the
        # piece with the cut is asked for again from the cut, 3 times.
        for ranges, expected in (
                (True, [FIRST, f"bytes={4 * MiB}-{8 * MiB - 1}", f"bytes={8 * MiB}-{end}"] +
                 [f"bytes={half}-{8 * MiB - 1}"] * 3),
                (False, [FIRST] + [f"bytes={half}-"] * 3)):
            with self.subTest(ranges=ranges):
                path = f"/cut-every-{ranges}.qcow2"
                url = self.fault.add(path, Route(self.qcow2, cut_every=half, ranges=ranges))
                run = self.deploy(manifest(url, "qcow2", algo=None), "--download-attempts", "3")
                self.assertFailed(run, download_failed(url), "gave up after 3 attempts")
                self.assertIn("bytes remaining", run.status["detail"])
                got = self.fault.ranges(path)
                self.assertEqual(got[0], FIRST)
                self.assertEqual(sorted(got, key=str), sorted(expected, key=str))
                self.assertEqual(run.step("download")["status"], "error")
                self.assertEqual(run.step("verify")["status"], "todo")

    def test_body_cut_once_is_resumed_and_verified(self):
        half = len(self.qcow2) // 2
        end = len(self.qcow2) - 1
        url = self.fault.add("/cut-once.qcow2", Route(self.qcow2, drops=[half]))
        run = self.deploy(manifest(url, "qcow2", algo=None))
        self.assertDone(run)
        self.assertEqual(run.status["checksum"], digest("sha256", self.qcow2))
        self.assertEqual(run.step("download")["bytesDone"], len(self.qcow2))
        got = self.fault.ranges("/cut-once.qcow2")
        self.assertEqual(got[0], FIRST)
        self.assertEqual(sorted(got[1:]), sorted([f"bytes={4 * MiB}-{8 * MiB - 1}",
                                                  f"bytes={8 * MiB}-{end}",
                                                  f"bytes={half}-{8 * MiB - 1}"]))
        self.assertTrue(run.step("verify")["comment"].startswith("qcow2, virtual size 8.0 MiB"))

    def test_resumed_206_cut_short_without_length_is_resumed(self):
        # "Content-Range: bytes N-M/*" and no Content-Length: the body ends with the connection,
        # and a connection cut before byte M is a truncated body, not the end of the image.
        url = self.fault.add("/unknown-total.raw",
                             Route(IMAGE, drops=[MiB, 2 * MiB], unknown_total=True))
        run = self.deploy(manifest(url, algo=None))
        self.assertDone(run)
        self.assertEqual(run.status["checksum"], SHA256)
        self.assertEqual(run.step("download")["bytesDone"], len(IMAGE))
        self.assertEqual(self.fault.ranges("/unknown-total.raw"),
                         [FIRST, f"bytes={MiB}-{END}", f"bytes={2 * MiB}-{END}"])
        self.assertIn(f"the body ended at byte {2 * MiB}, before byte {len(IMAGE)} its answer "
                      "announced", run.stderr)

    # --- redirects -------------------------------------------------------------------------

    def test_redirects_followed(self):
        self.fault.add("/r/image.raw", Route(IMAGE))
        self.fault.add("/r/2", Route(redirect="/r/image.raw"))
        url = self.fault.add("/r/1", Route(redirect=self.fault.url("/r/2")))
        run = self.deploy(manifest(url, httpHeader=[{"key": "X-Byoi-Test", "value": "42"}]))
        self.assertDone(run)
        # The manifest's headers reach the target of a redirect on the same origin.
        seen = [e["headers"] for e in self.fault.log if e["path"] == "/r/image.raw"]
        self.assertEqual([h.get("x-byoi-test") for h in seen], ["42"])
        run = self.deploy(manifest(self.nginx.url("/moved.raw")))
        self.assertDone(run)

    def test_too_many_redirects(self):
        self.fault.add("/loop/7", Route(IMAGE))
        for i in range(7):
            self.fault.add(f"/loop/{i}", Route(redirect=f"/loop/{i + 1}"))
        url = self.fault.url("/loop/0")
        run = self.deploy(manifest(url))
        self.assertFailed(run, download_failed(url),
                          f"more than 5 redirects, the last to {self.fault.url('/loop/6')}")
        self.assertEqual(len([e for e in self.fault.log if e["path"].startswith("/loop/")]), 6)

    def test_redirect_to_file_refused(self):
        url = self.fault.add("/to-file", Route(redirect="file:///etc/passwd"))
        run = self.deploy(manifest(url))
        self.assertFailed(run, download_failed(url), "file")
        self.assertEqual(len(self.fault.ranges("/to-file")), 1)

    def test_file_url_refused_by_manifest(self):
        run = self.deploy(manifest("file:///etc/passwd"))
        self.assertEqual(run.returncode, 1)
        self.assertTrue(run.status["message"].startswith("Invalid manifest: "), run.status)

    # --- credentials and redirects ----------------------------------------------------------
    # The manifest's headers and userinfo go to the origin of its URL only (redirect_chain.hpp).

    def test_credentials_stay_at_the_origin_on_a_redirect_elsewhere(self):
        # A presigned object-store redirect: works without the credentials, never sees them. A
        # drop on the way: the resume starts at the origin again, with Range on every request.
        sig = "5ec7e7objectsig"
        target = self.other.add("/bucket/cross.raw", Route(IMAGE, drops=[MiB]))
        url = self.fault.add("/cross.raw", Route(
            redirect=f"{target}?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature={sig}"))
        run = self.deploy(manifest(url, httpHeader=CREDENTIALS))
        self.assertDone(run)
        self.assertEqual(run.status["checksum"], SHA256)
        origin = requests_to(self.fault, "/cross.raw")
        elsewhere = requests_to(self.other, "/bucket/cross.raw")
        self.assertEqual([e["range"] for e in origin], [FIRST, f"bytes={MiB}-{END}"])
        self.assertEqual([e["range"] for e in elsewhere], [FIRST, f"bytes={MiB}-{END}"])
        for e in origin:
            self.assertEqual(credentials(e), CREDENTIALS_SENT)
        for e in elsewhere:
            self.assertEqual(credentials(e), NO_CREDENTIALS)
            self.assertIn(f"X-Amz-Signature={sig}", e["path"])
        self.assertNotIn(sig, run.stderr + json.dumps(run.status))
        self.assertIn("4 request(s)", run.stderr)

    def test_userinfo_stays_at_the_origin(self):
        basic = "Basic " + base64.b64encode(b"login:pa55word").decode()
        for where, server in (("same origin", self.fault), ("another origin", self.other)):
            with self.subTest(where):
                path = f"/userinfo/{server.port}.raw"
                target = server.add(path, Route(IMAGE))
                url = self.fault.add(f"/userinfo/from-{server.port}", Route(redirect=target))
                url = url.replace("http://", "http://login:pa55word@")
                m = manifest(url, httpHeader=CREDENTIALS[:2])
                run = self.deploy(m)
                self.assertDone(run)
                [start] = requests_to(self.fault, f"/userinfo/from-{server.port}")
                [image] = requests_to(server, path)
                self.assertEqual(credentials(start), dict(CREDENTIALS_SENT, authorization=basic))
                self.assertEqual(credentials(image), dict(CREDENTIALS_SENT, authorization=basic)
                                 if server is self.fault else NO_CREDENTIALS)

    def test_redirect_back_to_the_origin_carries_credentials_again(self):
        # origin -> elsewhere -> origin: each request is judged by its own URL; the host in the
        # middle sees nothing, the origin everything.
        image = self.fault.add("/round/image.raw", Route(IMAGE))
        check = self.other.add("/round/check", Route(redirect=image))
        url = self.fault.add("/round/start", Route(redirect=check))
        run = self.deploy(manifest(url, httpHeader=CREDENTIALS))
        self.assertDone(run)
        [start] = requests_to(self.fault, "/round/start")
        [middle] = requests_to(self.other, "/round/check")
        [end] = requests_to(self.fault, "/round/image.raw")
        self.assertEqual(credentials(start), CREDENTIALS_SENT)
        self.assertEqual(credentials(middle), NO_CREDENTIALS)
        self.assertEqual(credentials(end), CREDENTIALS_SENT)

    def test_redirect_loop_between_origins(self):
        pong = self.other.add("/pong", Route(redirect=self.fault.url("/ping")))
        url = self.fault.add("/ping", Route(redirect=pong))
        run = self.deploy(manifest(url, httpHeader=CREDENTIALS))
        self.assertFailed(run, download_failed(url),
                          f"more than 5 redirects, the last to {self.fault.url('/ping')}")
        pings = requests_to(self.fault, "/ping")
        pongs = requests_to(self.other, "/pong")
        self.assertEqual((len(pings), len(pongs)), (3, 3))  # one attempt: final
        self.assertEqual([credentials(e) for e in pings], [CREDENTIALS_SENT] * 3)
        self.assertEqual([credentials(e) for e in pongs], [NO_CREDENTIALS] * 3)

    # --- headers ---------------------------------------------------------------------------

    def test_manifest_headers_on_every_request(self):
        url = self.fault.add("/hdr.raw", Route(IMAGE, drops=[MiB]))
        m = manifest(url, httpHeader=[{"key": "X-Byoi-Test", "value": "42"},
                                      {"key": "Authorization", "value": "Bearer t0ken"}])
        run = self.deploy(m)
        self.assertDone(run)
        seen = [e["headers"] for e in self.fault.log if e["path"] == "/hdr.raw"]
        self.assertEqual(len(seen), 2)
        for h in seen:
            self.assertEqual(h.get("x-byoi-test"), "42")
            self.assertEqual(h.get("authorization"), "Bearer t0ken")
        self.assertNotIn("t0ken", run.stderr + str(run.status))

    def test_required_header(self):
        url = self.fault.add("/private.raw", Route(IMAGE, require=("X-Token", "sesame")))
        run = self.deploy(manifest(url))
        self.assertFailed(run, download_failed(url), "HTTP 403")
        self.assertEqual(len(self.fault.ranges("/private.raw")), 1)
        run = self.deploy(manifest(url, httpHeader=[{"key": "X-Token", "value": "sesame"}]))
        self.assertDone(run)

    # --- memory budget ---------------------------------------------------------------------

    def test_too_big_with_content_length_refused_before_first_byte(self):
        for type_, path in (("raw", "/image.raw"), ("qcow2", "/image.qcow2")):
            with self.subTest(type=type_):
                run = self.deploy(manifest(self.nginx.url(path), type_, algo=None),
                                  "--memory-limit", "100K", "--write-mode", "ram")
                self.assertFailed(run, f"Could not download, {type_} image is too big to "
                                       "download in memory.", "announces")
                self.assertEqual(run.step("download")["bytesDone"], 0)

    def test_too_big_without_content_length_stops_at_budget(self):
        # No ranges either: a 206's Content-Range would tell the length.
        url = self.fault.add("/big-nolength.raw", Route(IMAGE, no_length=True, ranges=False))
        run = self.deploy(manifest(url), "--memory-limit", "1M", "--write-mode", "ram")
        self.assertFailed(run, "Could not download, raw image is too big to download in memory.",
                          "passed the memory budget")
        self.assertLessEqual(run.step("download")["bytesDone"], MiB)
        self.assertEqual(len(self.fault.ranges("/big-nolength.raw")), 1)

    # --- the command itself ----------------------------------------------------------------

    def test_a_refused_disk_is_refused_before_anything_is_downloaded(self):
        # The plan step runs first: a job whose disk cannot be used costs no download.
        before = len(self.nginx.requests())
        missing = os.path.join(self.workdir, "no-such-disk")
        run = self.deploy(manifest(self.nginx.url("/image.raw")), "--disk", missing, dry_run=False)
        self.assertFailed(run, "Can't write raw on disk.", missing)
        self.assertEqual(run.step("download")["status"], "todo")
        self.assertEqual(len(self.nginx.requests()), before)

    def test_invalid_manifest(self):
        run = self.deploy({"URL": self.nginx.url("/image.raw"), "type": "vmdk"})
        self.assertFailed(run, "Bad format image, expected: qcow2, raw, ova.")


class HttpsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="byoi-fetch-tls-")
        cls.cert, key = self_signed_cert(cls.workdir)
        cls.server = FaultServer(tls=(cls.cert, key))
        cls.url = cls.server.add("/image.raw", Route(IMAGE, drops=[MiB]))
        cls.plain = FaultServer()

    @classmethod
    def tearDownClass(cls):
        cls.plain.close()
        cls.server.close()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def test_self_signed_refused_by_default(self):
        run = run_deploy(self.workdir, manifest(self.url))
        self.assertEqual(run.returncode, 1)
        self.assertEqual(run.status["message"], download_failed(self.url))
        self.assertIn("certificate", run.status["detail"])

    def test_self_signed_accepted_with_ca_bundle(self):
        run = run_deploy(self.workdir, manifest(self.url), "--ca-bundle", self.cert)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(run.status["checksum"], SHA256)

    def test_redirect_from_https_to_http_refused(self):
        # The manifest's headers (credentials, often) must not travel in clear after a redirect.
        target = self.plain.add("/clear.raw", Route(IMAGE))
        url = self.server.add("/downgrade", Route(redirect=target))
        run = run_deploy(self.workdir, manifest(url, httpHeader=[
            {"key": "Authorization", "value": "Basic c2VjcmV0"}]), "--ca-bundle", self.cert)
        self.assertEqual(run.returncode, 1, run.stderr)
        self.assertEqual(run.status["message"], download_failed(url))
        self.assertIn(f"a redirect from https to {target} refused", run.status["detail"])
        self.assertEqual(self.plain.ranges("/clear.raw"), [])
        self.assertEqual(len(self.server.ranges("/downgrade")), 1)  # final: not retried

    def test_insecure_skips_verification(self):
        run = run_deploy(self.workdir, manifest(self.url, algo="md5"), "--insecure")
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn("verification is off", run.stderr)


if __name__ == "__main__":
    unittest.main()
