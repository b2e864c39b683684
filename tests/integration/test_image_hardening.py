#!/usr/bin/python3
"""Hostile and broken qcow2 images, end to end through `byoi-agent inspect`, `convert` and `deploy`:

* Memory: a qcow2 with extended L2 entries whose every entry points at one host cluster with
  alternating allocated and zero subclusters describes 32 runs per 16 bytes of L2 table. inspect and
  convert run in a memory cgroup of their own with a limit of the image's size + 64 MiB and must
  succeed below it (the map is decoded from the image's tables, never stored as a run list); the
  converted disk is byte-identical to qemu-img's conversion of the same file.
* A corrupt compressed cluster at the end of the disk: deploy inflates every compressed cluster
  before the first write, so the job fails with the catalogue message, the cluster named in the
  detail, and the disk (a loop device of 512- or 4096-byte sectors, pre-filled with random bytes)
  byte-for-byte as it was.

Images are made here (struct, sfdisk, qemu-img); nothing binary is checked in. Needs root (loop
devices, cgroups), qemu-utils and fdisk.
"""

import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance_util import (AGENT, MIB, Qcow2, loop_device, qemu_img, random_file,  # noqa: E402
                              run, sha256, tempdir)
from daemon_harness import ImageServer, step  # noqa: E402
from fetch_servers import MemoryCgroup  # noqa: E402

GIB = 1 << 30
CANT_WRITE = "Can't write qcow2 on disk."


def alternating_qcow2(path, virtual_size):
    """A qcow2 (v3, 16 KiB clusters, extended L2) of `virtual_size` bytes whose every L2 entry maps
    its cluster to the same host cluster, subclusters (512 bytes) alternately allocated and zero.
    Returns the bytes of that host cluster."""
    cb = 14
    cs = 1 << cb
    coverage = cs * (cs // 16)  # virtual bytes per L2 table of 16-byte entries
    l1_entries = (virtual_size + coverage - 1) // coverage
    l1_offset = 2 * cs          # cluster 0: header; cluster 1: the (empty) refcount table
    l2_first = l1_offset + (l1_entries * 8 + cs - 1) // cs * cs
    data_offset = l2_first + l1_entries * cs
    image = bytearray(data_offset + cs)
    struct.pack_into(">IIQIIQIIQQIIQQQQII", image, 0,
                     0x514649FB, 3,                # magic, version
                     0, 0, cb, virtual_size, 0,    # no backing file, cluster_bits, size, no crypt
                     l1_entries, l1_offset,
                     cs, 1,                        # refcount table at cluster 1, one cluster
                     0, 0,                         # no snapshots
                     16, 0, 0,                     # incompatible: extended L2
                     4, 104)                       # refcount_order, header_length
    for i in range(l1_entries):
        struct.pack_into(">Q", image, l1_offset + 8 * i, (1 << 63) | (l2_first + i * cs))
    entry = struct.pack(">QQ", (1 << 63) | data_offset, 0x55555555 | (0xAAAAAAAA << 32))
    image[l2_first:data_offset] = entry * (l1_entries * cs // 16)
    data = bytes((i // 512 * 37 + 1) % 255 + 1 for i in range(cs))
    image[data_offset:] = data
    with open(path, "wb") as f:
        f.write(image)
    return data


class MemoryBound(unittest.TestCase):
    """inspect and convert of the alternating-subcluster shape, in a memory cgroup with a limit."""

    def setUp(self):
        self.dir = self.enterContext(tempdir())

    def path(self, name):
        return os.path.join(self.dir, name)

    def run_limited(self, limit, *argv):
        """Runs argv in a memory cgroup of its own limited to `limit` bytes; returns
        (CompletedProcess-like returncode/stdout/stderr, peak bytes)."""
        cgroup = MemoryCgroup()
        if cgroup.peak() is None:
            self.skipTest("no memory cgroup to measure in")
        self.addCleanup(cgroup.close)
        for name in ("memory.limit_in_bytes", "memory.max"):  # v1, v2
            if os.path.exists(os.path.join(cgroup.path, name)):
                with open(os.path.join(cgroup.path, name), "w") as f:
                    f.write(str(limit))
                break
        else:
            self.fail("the memory cgroup has no limit file")
        proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                              preexec_fn=cgroup.enter, timeout=600)
        return proc, cgroup.peak()

    def test_inspect_of_a_16_mib_image_of_32_runs_per_entry(self):
        image = self.path("alt16g.qcow2")
        alternating_qcow2(image, 16 * GIB)
        size = os.path.getsize(image)
        self.assertGreater(size, 16 * MIB)
        info = json.loads(qemu_img("info", "--output=json", image).stdout)
        self.assertEqual(info["virtual-size"], 16 * GIB)  # qemu-img accepts the shape
        limit = size + 64 * MIB
        r, peak = self.run_limited(limit, AGENT, "inspect", "--json", image)
        self.assertEqual(r.returncode, 0, r.stderr)
        got = json.loads(r.stdout)
        self.assertEqual((got["virtualSize"], got["extendedL2"], got["allocatedBytes"],
                          got["zeroBytes"], got["unallocatedBytes"]),
                         (16 * GIB, True, 8 * GIB, 8 * GIB, 0))
        print(f"inspect: peak {peak / MIB:.1f} MiB for a {size / MIB:.1f} MiB image "
              f"(16 GiB virtual, 2^25 runs)", file=sys.stderr)
        self.assertLess(peak, limit)

    def test_convert_of_the_same_shape_matches_qemu_img(self):
        # 512 MiB virtual: one million runs, small enough for qemu-img to convert in seconds.
        image = self.path("alt512m.qcow2")
        alternating_qcow2(image, 512 * MIB)
        size = os.path.getsize(image)
        out = self.path("out.raw")
        limit = size + 64 * MIB
        r, peak = self.run_limited(limit, AGENT, "convert", image, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        print(f"convert: peak {peak / MIB:.1f} MiB for a {size / MIB:.1f} MiB image "
              f"(512 MiB virtual, 2^20 runs)", file=sys.stderr)
        self.assertLess(peak, limit)
        ref = self.path("ref.raw")
        # -m 8 -W: qemu-img takes a minute with its defaults on this shape.
        qemu_img("convert", "-f", "qcow2", "-O", "raw", "-m", "8", "-W", image, ref)
        self.assertEqual(run("cmp", ref, out, check=False).returncode, 0,
                         "output differs from qemu-img")


def mbr_disk(path, size):
    """A raw disk of `size` bytes: an MBR with one Linux partition, filled with text that
    compresses (each cluster differs, so every cluster is stored compressed)."""
    with open(path, "wb") as f:
        for i in range(size // 4096):
            f.write((b"block %08d of the byoi hardening disk. " % i * 100)[:4096])
    run("sfdisk", "-q", path, input="label: dos\nstart=2048, type=83\n")


def corrupt_last_compressed_cluster(image):
    """Overwrites the start of the stream of the compressed cluster at the highest virtual
    offset with garbage; returns that virtual offset."""
    q = Qcow2(image)
    x = 62 - (q.cluster_bits - 8)
    last = max(index for index, entry in q.l2_entries() if entry & (1 << 62))
    per_table = q.cluster_size // 8
    entry = q.u64(q.l2_entry_offset(last // per_table, last % per_table))
    host = entry & ((1 << x) - 1)
    q.data[host:host + 64] = b"\xff" * 64
    q.save()
    return last * q.cluster_size


class CorruptLastCompressedCluster(unittest.TestCase):
    """deploy of a qcow2 whose last compressed cluster is corrupt: refused before the first write."""

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root (loop devices)")
        cls._tmp = tempdir()
        cls.dir = cls._tmp.name
        raw = os.path.join(cls.dir, "disk.raw")
        mbr_disk(raw, 16 * MIB)
        cls.images = {}
        files = {}
        for compression in ("zlib", "zstd"):
            image = os.path.join(cls.dir, f"{compression}.qcow2")
            qemu_img("convert", "-f", "raw", "-O", "qcow2", "-c", "-o",
                     f"compression_type={compression}", raw, image)
            virtual = corrupt_last_compressed_cluster(image)
            with open(image, "rb") as f:
                files["/" + os.path.basename(image)] = f.read()
            cls.images[compression] = (image, virtual)
        cls.server = ImageServer(files)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls._tmp.cleanup()

    def deploy(self, image, disk):
        """`byoi-agent deploy` of `image` onto `disk`; returns (returncode, final status, stderr)."""
        work = self.enterContext(tempfile.TemporaryDirectory(dir=self.dir))
        manifest = os.path.join(work, "manifest.json")
        with open(manifest, "w") as f:
            json.dump({"URL": self.server.url("/" + os.path.basename(image)), "type": "qcow2"}, f)
        status_path = os.path.join(work, "status.json")
        r = subprocess.run([AGENT, "deploy", "--manifest", manifest, "--disk", disk,
                            "--efivars", os.path.join(work, "no-efivars"), "--status-file",
                            status_path, "--json", "--reboot", "none", "--memory-limit", "1G",
                            "--retry-delay", "0"], capture_output=True, text=True, timeout=300)
        with open(status_path) as f:
            return r.returncode, json.load(f), r.stderr

    def test_refused_before_the_first_write(self):
        for compression in ("zlib", "zstd"):
            image, virtual = self.images[compression]
            # qemu-img finds it too, but only when it reaches that cluster.
            r = run("qemu-img", "convert", "-O", "raw", image, os.path.join(self.dir, "q.raw"),
                    check=False)
            self.assertNotEqual(r.returncode, 0)
            for sector_size in (512, 4096):
                with self.subTest(compression=compression, sector_size=sector_size):
                    backing = os.path.join(self.dir, "backing.img")
                    random_file(backing, 64 * MIB, f"{compression}{sector_size}")
                    with loop_device(backing, sector_size) as dev:
                        run("partx", "-d", dev, check=False)
                        before = sha256(dev)
                        code, status, stderr = self.deploy(image, dev)
                        self.assertEqual(sha256(dev), before, "the disk was touched")
                    self.assertEqual((code, status["status"], status["message"]),
                                     (1, "error", CANT_WRITE), stderr)
                    self.assertIn(f"compressed cluster at virtual offset {virtual:#x}",
                                  status["detail"])
                    self.assertEqual(step(status, "verify")["status"], "error")
                    self.assertEqual(step(status, "write")["status"], "todo")


if __name__ == "__main__":
    unittest.main()
