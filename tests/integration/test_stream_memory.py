"""Peak memory of stream mode (`convert --write-mode stream`): a qcow2 of 4 GiB virtual size with
1.5 GiB of data, and a 2 GiB raw disk as .raw.zst, each converted inside a memory cgroup of its own
(cgroup v1 memory.max_usage_in_bytes: anonymous memory, the kernel's and the page cache the
process fills, which RSS leaves out) must peak under 512 MiB, whatever the file's size: ram mode
holds the whole file. The output is compared with qemu-img's / zstd's."""

import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance_util import AGENT, MIB, qemu_img, run, tempdir  # noqa: E402
from fetch_servers import MemoryCgroup  # noqa: E402

GIB = 1 << 30
LIMIT = 512 * MIB


def fill_random(path, offset, length, seed):
    """Writes `length` pseudo-random (incompressible) bytes at `offset`, 16 MiB at a time."""
    with open(path, "r+b") as f, open("/dev/urandom", "rb") as rnd:
        f.seek(offset)
        block = rnd.read(16 * MIB)
        for i in range(length // (16 * MIB)):
            f.write(block[i % 7:] + block[:i % 7])  # no two blocks alike


class StreamMemory(unittest.TestCase):

    def setUp(self):
        self.dir = self.enterContext(tempdir())

    def path(self, name):
        return os.path.join(self.dir, name)

    def peak_of(self, *argv):
        cgroup = MemoryCgroup()
        if cgroup.peak() is None:
            self.skipTest("no memory cgroup to measure in")
        self.addCleanup(cgroup.close)
        proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                              preexec_fn=cgroup.enter, timeout=900)
        return proc, cgroup.peak()

    def convert_within(self, image, expected_cmd):
        out = self.path("out.raw")
        r, peak = self.peak_of(AGENT, "convert", "--write-mode", "stream", image, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        print(f"\n{os.path.basename(image)} ({os.path.getsize(image) / MIB:.0f} MiB): stream mode "
              f"peak {peak / MIB:.1f} MiB; {r.stderr.strip()}", file=sys.stderr)
        self.assertLess(peak, LIMIT)
        ref = self.path("ref.raw")
        run(*expected_cmd, ref)
        self.assertEqual(run("cmp", ref, out, check=False).returncode, 0, "differs")
        os.unlink(ref)
        os.unlink(out)
        return peak

    def test_qcow2_4_gib_virtual_1_5_gib_data(self):
        raw = self.path("src.raw")
        with open(raw, "wb") as f:
            f.truncate(4 * GIB)
        for i, offset in enumerate((0, GIB + 512 * MIB, 3 * GIB)):
            fill_random(raw, offset, 512 * MIB, f"s{i}")
        image = self.path("big.qcow2")
        qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, image)
        os.unlink(raw)
        self.assertGreater(os.path.getsize(image), 1536 * MIB)
        r, qemu_peak = self.peak_of("qemu-img", "convert", "-O", "raw", image, self.path("q.raw"))
        os.unlink(self.path("q.raw"))
        print(f"\nqemu-img convert peak {qemu_peak / MIB:.1f} MiB", file=sys.stderr)
        self.convert_within(image, ("qemu-img", "convert", "-O", "raw", image))

    def test_raw_zst_2_gib(self):
        raw = self.path("src.raw")
        with open(raw, "wb") as f:
            f.truncate(2 * GIB)
        fill_random(raw, 0, 16 * MIB, "mbr")
        run("sgdisk", "-n1:2048:+1G", raw)
        fill_random(raw, 64 * MIB, 768 * MIB, "data")
        image = self.path("big.raw.zst")
        run("zstd", "-q", "-T2", "-3", "-o", image, raw)
        os.unlink(raw)
        self.convert_within(image, ("zstd", "-q", "-d", "-f", image, "-o"))


if __name__ == "__main__":
    unittest.main()
