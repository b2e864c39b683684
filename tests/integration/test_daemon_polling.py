#!/usr/bin/python3
"""The real daemon in polling mode (docs/backend.md) against a small backend of ours: it takes one job,
reports its status with every step change, retries reports the backend refuses (503), and delivers
the final status."""

import hashlib
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon_backend  # noqa: E402
import fetch_servers  # noqa: E402
import daemon_harness as h  # noqa: E402

AGENT_ID = "agent-0042"


class PollingTest(unittest.TestCase):
    def setUp(self):
        self.workdir = h.new_workdir(self)
        self.images = h.ImageServer()
        self.addCleanup(self.images.stop)

    def start(self, backend, **kwargs):
        d = h.Daemon(self.workdir, extra_args=["--backend-url", backend.url, "--agent-id", AGENT_ID],
                     **kwargs)
        self.addCleanup(d.stop)
        return d

    def backend(self, jobs, fail_puts=0, tls=None):
        b = daemon_backend.Backend(AGENT_ID, h.TOKEN, jobs, fail_puts, tls)
        self.addCleanup(b.stop)
        return b

    def test_an_https_backend_is_trusted_through_the_ca_bundle(self):
        # The agent's --ca-bundle is for the backend too: without it the self-signed backend is
        # refused (the log says why, no job is taken); with it, the job is taken and reported.
        cert, key = fetch_servers.self_signed_cert(self.workdir)
        manifest = {"URL": self.images.url("/missing.raw"), "type": "raw"}
        untrusted = self.backend([{"jobId": "job-u", "manifest": manifest}], tls=(cert, key))
        workdir = os.path.join(self.workdir, "untrusted")
        os.makedirs(workdir)
        d = h.Daemon(workdir, extra_args=["--backend-url", untrusted.url, "--agent-id", AGENT_ID])
        try:
            h.wait_for(lambda: "certificate" in d.read_log().lower(), 30,
                       "a refused certificate in the log")
            self.assertEqual(untrusted.polls, 0)
        finally:
            d.stop()
        trusted = self.backend([{"jobId": "job-t", "manifest": manifest}], tls=(cert, key))
        d = h.Daemon(self.workdir, extra_args=["--backend-url", trusted.url, "--agent-id",
                                               AGENT_ID, "--ca-bundle", cert])
        self.addCleanup(d.stop)
        self.assertTrue(trusted.wait(lambda b: any(s["status"] == "error"
                                                   for s in b.statuses("job-t"))), d.read_log())
        self.assertEqual(trusted.statuses("job-t")[-1]["message"],
                         "Could not download image located: %s." % manifest["URL"])

    def test_takes_one_job_reports_doing_and_the_final_status_despite_503s(self):
        manifest = {"URL": self.images.url("/missing.raw"), "type": "raw",
                    "configdrive": {"enable": True, "hostname": "web-7"}}
        b = self.backend([{"jobId": "job-1", "manifest": manifest}], fail_puts=3)
        d = self.start(b)
        self.assertTrue(b.wait(lambda b: any(s["status"] != "doing" for s in b.statuses("job-1"))),
                        "no final status; log:\n" + d.read_log())
        self.assertEqual(b.refused, 3)
        self.assertEqual(b.unauthorized, 0)
        statuses = b.statuses("job-1")
        self.assertEqual(statuses[0]["status"], "doing")
        self.assertEqual(statuses[0]["message"], "starting")
        self.assertEqual(statuses[0]["servername"], "web-7")
        final = statuses[-1]
        self.assertIn(final["status"], ("done", "error"))
        # What the backend got last is what the agent says.
        code, status = d.status()
        self.assertEqual(code, 200)
        self.assertEqual((final["status"], final["message"]), (status["status"], status["message"]))
        # The job was handed out once and is not run again; polling goes on.
        polls = b.polls
        self.assertTrue(b.wait(lambda b: b.polls > polls + 2, timeout=10))
        self.assertEqual(len([s for s in b.statuses("job-1") if s["message"] == "starting"]), 1)
        self.assertIn("poller: deployment accepted from the backend: job job-1", d.read_log())

    def test_an_invalid_manifest_is_answered_with_the_catalogue_message(self):
        b = self.backend([{"jobId": "job-2", "manifest": {"URL": "http://127.0.0.1:1/x", "type": "iso"}}],
                         fail_puts=1)
        d = self.start(b)
        self.assertTrue(b.wait(lambda b: b.statuses("job-2")), d.read_log())
        final = b.statuses("job-2")[-1]
        self.assertEqual(final["status"], "error")
        self.assertEqual(final["message"], "Bad format image, expected: qcow2, raw, ova.")
        self.assertEqual(d.status()[0], 404)  # nothing ran

    def test_a_job_interrupted_by_a_restart_is_reported_to_the_backend(self):
        manifest = {"URL": self.images.url("/slow.raw"), "type": "raw"}
        b = self.backend([{"jobId": "job-3", "manifest": manifest}])
        d = self.start(b)
        status = h.wait_download_or_end(d)
        self.assertEqual(status["status"], "doing")
        self.assertTrue(b.wait(lambda b: any(s["message"] != "starting" for s in b.statuses("job-3"))))
        d.kill9()
        d2 = self.start(b)
        self.assertTrue(b.wait(lambda b: b.statuses("job-3")[-1]["status"] == "error"), d2.read_log())
        self.assertEqual(b.statuses("job-3")[-1]["message"],
                         "Deployment interrupted: the agent restarted.")

    def test_reports_at_least_every_5_s_during_a_long_step(self):
        manifest = {"URL": self.images.url("/slow.raw"), "type": "raw"}
        b = self.backend([{"jobId": "job-4", "manifest": manifest}])
        d = self.start(b)
        status = h.wait_download_or_end(d)
        self.assertEqual(status["status"], "doing")
        time.sleep(11)
        times = [t for (j, s, t) in b.puts if j == "job-4"]
        gaps = [b2 - a for a, b2 in zip(times, times[1:])]
        self.assertGreaterEqual(len(times), 3)
        self.assertLessEqual(max(gaps), 5.5, gaps)

    def test_full_job_done_is_delivered(self):
        image = os.path.join(self.workdir, "image.raw")
        h.make_gpt_image(image)
        with open(image, "rb") as f:
            data = f.read()
        self.images.httpd.files["/image.raw"] = data
        disk = os.path.join(self.workdir, "disk-full.img")
        with open(disk, "wb") as f:
            f.truncate(128 << 20)
        manifest = {"URL": self.images.url("/image.raw"), "type": "raw",
                    "checkSum": hashlib.sha256(data).hexdigest(), "checkSumType": "sha256"}
        b = self.backend([{"jobId": "job-5", "manifest": manifest}], fail_puts=3)
        d = self.start(b, disk=disk)
        self.assertTrue(b.wait(lambda b: any(s["status"] != "doing" for s in b.statuses("job-5")),
                               timeout=120), d.read_log())
        final = b.statuses("job-5")[-1]
        self.assertEqual(final["status"], "done", final)
        steps_seen = {p["step"] for s in b.statuses("job-5") for p in s["progress"]
                      if p["status"] == "doing"}
        self.assertIn("download", steps_seen)
        self.assertIn("write", steps_seen)


if __name__ == "__main__":
    unittest.main()
