"""What `byoi-agent convert` refuses, each with an image crafted by patching bytes (struct) into one
qemu-img made: exit code 1, the catalogue message, the reason in the detail, and the target
(a loop device and a file, pre-filled with random bytes) byte-for-byte untouched. Compressed data
that does not inflate is only found while writing: then the first and last MiB of the disk are
zeroed."""

import os
import subprocess
import sys
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance_util import (MIB, Qcow2, convert, create, loop_device, qemu_img, qemu_io,  # noqa: E402
                              random_file, read, run, sha256, tempdir)

CANT_WRITE = "Can't write qcow2 on disk."
COPIED = 1 << 63


class Refusals(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempdir()
        cls.dir = cls._tmp.name
        cls.backing = os.path.join(cls.dir, "disk.img")
        random_file(cls.backing, 16 * MIB, "refusals")
        cls.backing_hash = sha256(cls.backing)
        cls.file_target = os.path.join(cls.dir, "target.raw")
        random_file(cls.file_target, 3 * MIB, "file-target")
        cls.file_hash = sha256(cls.file_target)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def base(self, name="base.qcow2", size=4 * MIB, writes=("write -P 0x61 0 1M",
                                                            "write -P 0x62 2M 64k"), **opts):
        p = self.path(name)
        if os.path.exists(p):
            os.unlink(p)
        create(p, size, **opts)
        if writes:
            qemu_io(p, *writes)
        return p

    def refused(self, image, *reasons):
        """convert must fail before touching either target, naming every reason."""
        with loop_device(self.backing, 512) as dev:
            r = convert(image, dev)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertTrue(r.stderr.startswith(CANT_WRITE), r.stderr)
        for reason in reasons:
            self.assertIn(reason, r.stderr)
        self.assertEqual(sha256(self.backing), self.backing_hash, "the disk was touched")
        r = convert(image, self.file_target)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(sha256(self.file_target), self.file_hash, "the file was touched")
        return r.stderr

    def patched(self, mutate, **kw):
        image = self.base(**kw)
        q = Qcow2(image)
        mutate(q)
        q.save()
        return image

    def test_backing_file(self):
        base = self.base("backing.qcow2")
        overlay = self.path("overlay.qcow2")
        qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay)
        self.refused(overlay, "backing file")

    def test_external_data_file(self):
        image = self.path("ext.qcow2")
        qemu_img("create", "-f", "qcow2", "-o", f"data_file={self.path('ext.data')}", image, "4M")
        self.refused(image, "external data file")

    def test_encryption_aes(self):
        self.refused(self.patched(lambda q: q.set_u32(32, 1)), "encrypted (AES)")

    def test_encryption_luks(self):
        # A real LUKS image. qemu-img times 32768 PBKDF2 rounds by the thread's CPU time to choose
        # the iteration count; with tick-based CPU accounting that measures 0 ms now and then and
        # qemu-img gives up ("Unable to get accurate CPU usage", seen in CI): so try again.
        image = self.path("luks.qcow2")
        argv = ["qemu-img", "create", "--object", "secret,id=s0,data=secret", "-f", "qcow2", "-o",
                "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", image, "4M"]
        for _ in range(20):
            r = run(*argv, check=False)
            if "Unable to get accurate CPU usage" not in r.stderr:
                break
        self.assertEqual(r.returncode, 0, r.stderr)
        self.refused(image, "encrypted (LUKS)")

    def test_unknown_incompatible_bit(self):
        self.refused(self.patched(lambda q: q.set_u64(72, q.incompatible | (1 << 5))),
                     "unknown incompatible features 0x20")

    def test_versions(self):
        for version in (1, 4):
            with self.subTest(version=version):
                self.refused(self.patched(lambda q: q.set_u32(4, version)),
                             f"qcow2 version {version}")

    def test_cluster_bits(self):
        for bits in (8, 22):
            with self.subTest(cluster_bits=bits):
                self.refused(self.patched(lambda q: q.set_u32(20, bits)), f"cluster_bits {bits}")

    def test_l1_larger_than_32_mib(self):
        self.refused(self.patched(lambda q: q.set_u32(36, 4 * MIB + 1)), "larger than 32 MiB")

    def test_l1_too_small(self):
        self.refused(self.patched(lambda q: q.set_u32(36, 0)), "too small")

    def test_l1_unaligned(self):
        self.refused(self.patched(lambda q: q.set_u64(40, q.l1_offset + 512)), "L1 table",
                     "not aligned")

    def test_l1_outside(self):
        self.refused(self.patched(lambda q: q.set_u64(40, 1 << 40)), "L1 table",
                     "outside the image")

    def test_l2_unaligned(self):
        self.refused(self.patched(
            lambda q: q.set_u64(q.l1_entry_offset(0), (q.l2_offset() + 512) | COPIED)),
            "L2 table", "not aligned")

    def test_l2_outside(self):
        self.refused(self.patched(lambda q: q.set_u64(q.l1_entry_offset(0), (1 << 40) | COPIED)),
                     "L2 table", "outside the image")

    def test_l2_referenced_twice(self):
        def twice(q):
            q.set_u64(q.l1_entry_offset(1), q.u64(q.l1_entry_offset(0)))
        # 512-byte clusters: one L2 table covers 32 KiB, so the 4 MiB disk has many L1 entries.
        self.refused(self.patched(twice, cluster_size=512,
                                  writes=("write -P 1 0 4k", "write -P 2 32k 4k")),
                     "referenced twice")

    def test_data_cluster_unaligned(self):
        def unaligned(q):
            at = q.l2_entry_offset(0, 0)
            q.set_u64(at, (q.u64(at) & 0x00FFFFFFFFFFFE00) + 512 | COPIED)
        self.refused(self.patched(unaligned), "cluster offset not aligned")

    def test_zero_cluster_in_version_2(self):
        def zero(q):
            at = q.l2_entry_offset(0, 0)
            q.set_u64(at, q.u64(at) | 1)
        self.refused(self.patched(zero, compat="0.10"), "zero cluster in a version 2 image")

    def test_extended_l2_invalid_bitmaps(self):
        def both(q):
            q.set_u64(q.l2_entry_offset(0, 0) + 8, 1 | (1 << 32))
        self.refused(self.patched(both, extended_l2="on"), "both allocated and zero")

        def no_offset(q):
            q.set_u64(q.l2_entry_offset(0, 5), 0)
            q.set_u64(q.l2_entry_offset(0, 5) + 8, 1)
        self.refused(self.patched(no_offset, extended_l2="on"), "without a cluster offset")

    def compressed_image(self, compression="zlib"):
        raw = self.path("c.raw")
        with open(raw, "wb") as f:
            f.write(b"compressible text. " * (4 * MIB // 19) + bytes(4 * MIB % 19))
        image = self.path("c.qcow2")
        qemu_img("convert", "-f", "raw", "-O", "qcow2", "-c", "-o",
                 f"compression_type={compression}", raw, image)
        return image

    def test_compressed_descriptor_outside(self):
        image = self.compressed_image()
        q = Qcow2(image)
        shift = 62 - (q.cluster_bits - 8)
        at = q.l2_entry_offset(0, 3)
        entry = q.u64(at)
        self.assertTrue(entry & (1 << 62))
        q.set_u64(at, (entry & ~((1 << shift) - 1)) | (len(q.data) + MIB))
        q.save()
        self.refused(image, "compressed cluster", "outside the image")

    def test_unknown_compression_type(self):
        def zstd_plus(q):
            q.set_u64(72, q.incompatible | 8)
            q.data[104] = 7
        self.refused(self.patched(zstd_plus, compression_type="zstd"), "compression type 7")

    def test_header_extension_passing_the_cluster(self):
        def bad(q):
            q.set_u32(q.header_length + 4, 1 << 20)
        self.refused(self.patched(bad), "header extension", "passes the first cluster")

    def test_truncated_header(self):
        image = self.path("short.qcow2")
        with open(image, "wb") as f:
            f.write(read(self.base())[:60])
        self.refused(image, "too small for a qcow2 header")

    @staticmethod
    def compress(compression, data):
        if compression == "zlib":
            c = zlib.compressobj(9, zlib.DEFLATED, -15)  # qcow2 stores raw deflate
            return c.compress(data) + c.flush()
        return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True,
                              check=True).stdout

    @staticmethod
    def replace_stream(q, index, stream):
        """Points the compressed L2 entry `index` at `stream`, appended to the image."""
        shift = 62 - (q.cluster_bits - 8)
        at = q.l2_entry_offset(0, index)
        assert q.u64(at) & (1 << 62)
        offset = len(q.data)
        q.data += stream + bytes(-len(stream) % 512)
        sectors = (offset + len(stream) - 1) // 512 - offset // 512 + 1
        q.set_u64(at, (1 << 62) | ((sectors - 1) << shift) | offset)

    def test_bad_compressed_data_wipes_the_disk(self):
        # Compressed payloads are inflated while the disk is written (inflating them all twice
        # would cost a second pass over the image): a bad one fails the write, and the disk ends
        # are zeroed. qemu-img refuses these images too, but for a deflate stream that inflates
        # past the cluster: it keeps the first cluster's bytes, where we refuse (issue 4: exactly
        # one cluster).
        text = b"compressible text. " * 200000
        for compression in ("zlib", "zstd"):
            for kind in ("garbage", "short", "long"):
                with self.subTest(compression=compression, stream=kind):
                    image = self.compressed_image(compression)
                    q = Qcow2(image)
                    shift = 62 - (q.cluster_bits - 8)
                    # A cluster past the first MiB: found while the rest of the disk is written.
                    if kind == "garbage":
                        host = q.u64(q.l2_entry_offset(0, 40)) & ((1 << shift) - 1)
                        q.data[host:host + 64] = b"\xff" * 64
                    else:
                        size = q.cluster_size + (512 if kind == "long" else -512)
                        self.replace_stream(q, 40, self.compress(compression, text[:size]))
                    q.save()
                    qemu = run("qemu-img", "convert", "-O", "raw", image, self.path("qemu.raw"),
                               check=False)
                    self.assertEqual(qemu.returncode == 0, (compression, kind) == ("zlib", "long"))
                    backing = self.path("wipe.img")
                    random_file(backing, 8 * MIB, "wipe")
                    with loop_device(backing, 4096) as dev:
                        r = convert(image, dev)
                    self.assertEqual(r.returncode, 1, r.stderr)
                    self.assertTrue(r.stderr.startswith(CANT_WRITE), r.stderr)
                    self.assertIn("compressed cluster at virtual offset 0x280000", r.stderr)
                    if kind != "garbage":
                        what = "more" if kind == "long" else "less"
                        if compression == "zlib":
                            self.assertIn(f"inflates to {what} than a cluster", r.stderr)
                        elif kind == "long":
                            self.assertIn("zstd frame inflates to more than a cluster", r.stderr)
                    self.assertEqual(read(backing, 0, MIB), bytes(MIB))
                    self.assertEqual(read(backing, 7 * MIB, MIB), bytes(MIB))

    def test_declared_type_must_match(self):
        image = self.base()
        r = convert(image, self.file_target, "--type", "raw")
        self.assertEqual(r.returncode, 1)
        self.assertIn("image provided format is qcow2 which does not match expected raw format",
                      r.stderr)
        self.assertEqual(sha256(self.file_target), self.file_hash)

    def test_image_larger_than_disk(self):
        image = self.base(size=32 * MIB)
        with loop_device(self.backing, 512) as dev:
            r = convert(image, dev)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(f"image provided has a size of {32 * MIB} bytes which is larger than "
                      f"{dev} of {16 * MIB} bytes", r.stderr)
        self.assertEqual(sha256(self.backing), self.backing_hash)

    def test_memory_budget(self):
        image = self.base()
        r = convert(image, self.file_target, "--memory-limit", "64K", "--type", "qcow2")
        self.assertEqual(r.returncode, 1)
        self.assertIn("Could not download, qcow2 image is too big to download in memory.",
                      r.stderr)


if __name__ == "__main__":
    unittest.main()
