#!/usr/bin/python3
"""Peak memory of a download: a 512 MiB image from nginx must cost the agent at most its size plus
64 MiB (issue 3: one RAM buffer, no second copy). Peak RSS comes from wait4(2)'s rusage."""
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fetch_servers import Nginx, run_deploy, write_mbr_image_file  # noqa: E402

MiB = 1 << 20
SIZE = 512 * MiB


class PeakMemoryTest(unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="byoi-fetch-mem-")
        os.chmod(self.workdir, 0o755)
        self.root = os.path.join(self.workdir, "www")
        os.makedirs(self.root)
        self.sha256 = write_mbr_image_file(os.path.join(self.root, "big.raw"), SIZE)
        self.nginx = Nginx(self.workdir, self.root)

    def tearDown(self):
        self.nginx.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def test_peak_rss_within_image_size_plus_64_mib(self):
        m = {"URL": self.nginx.url("/big.raw"), "type": "raw", "checkSum": self.sha256,
             "checkSumType": "sha256"}
        run = run_deploy(self.workdir, m, timeout=300)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(run.status["checksum"], self.sha256)
        print(f"peak RSS {run.maxrss_bytes / MiB:.1f} MiB for a {SIZE // MiB} MiB image "
              f"in {run.seconds:.1f} s", file=sys.stderr)
        self.assertGreaterEqual(run.maxrss_bytes, SIZE)  # it did hold the image
        self.assertLessEqual(run.maxrss_bytes, SIZE + 64 * MiB)


if __name__ == "__main__":
    unittest.main()
