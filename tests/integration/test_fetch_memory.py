#!/usr/bin/python3
"""Peak memory of a download: a 512 MiB image from nginx must cost the agent at most its size plus
64 MiB (one RAM buffer, no second copy). The image lives in a memfd that the download
fills with pwrite, so RSS (from wait4(2)'s rusage) does not see it: the peak is the agent's own
memory cgroup's, which counts the memfd's pages, the anonymous memory and the kernel's."""
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fetch_servers import MemoryCgroup, Nginx, run_deploy, write_mbr_image_file  # noqa: E402

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
        self.cgroup = MemoryCgroup()

    def tearDown(self):
        self.cgroup.close()
        self.nginx.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def test_peak_memory_within_image_size_plus_64_mib(self):
        if self.cgroup.peak() is None:
            self.skipTest("no memory cgroup to measure in (neither v1 nor v2 memory.peak)")
        m = {"URL": self.nginx.url("/big.raw"), "type": "raw", "checkSum": self.sha256,
             "checkSumType": "sha256"}
        run = run_deploy(self.workdir, m, timeout=300, cgroup=self.cgroup)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(run.status["checksum"], self.sha256)
        peak = self.cgroup.peak()
        print(f"peak memory {peak / MiB:.1f} MiB (RSS {run.maxrss_bytes / MiB:.1f} MiB) for a "
              f"{SIZE // MiB} MiB image in {run.seconds:.1f} s", file=sys.stderr)
        self.assertGreaterEqual(peak, SIZE)  # it did hold the image
        self.assertLessEqual(peak, SIZE + 64 * MiB)
        self.assertLessEqual(run.maxrss_bytes, SIZE + 64 * MiB)


if __name__ == "__main__":
    unittest.main()
