"""Conformance of `byoi-agent convert` with `qemu-img convert -O raw`: for every kind of qcow2 image
qemu can make, the bytes written must be identical, onto a regular file and onto loop devices with
512- and 4096-byte sectors that are pre-filled with random bytes (so a zero range that is skipped,
or a byte written past the virtual size, is caught). Images are made here with qemu-img/qemu-io."""

import os
import sys
import time
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance_util import (MIB, TARGETS, ConversionChecks, Qcow2, convert, create,  # noqa: E402
                              qemu_img, qemu_io, random_file, read, reference, run,
                              tempdir)


def mixed_raw(path, size):
    """A raw disk with incompressible, compressible, zero and sparse stretches, for -c images."""
    random_file(path, size, "mixed")
    with open(path, "r+b") as f:
        text = (b"byoi-agent writes disks. " * 4096)
        for off in range(size // 4, size // 2, len(text)):
            f.seek(off)
            f.write(text[: min(len(text), size // 2 - off)])
        f.seek(size // 2)
        f.write(bytes(size // 8))  # zeros, qemu-img leaves them unallocated
        f.seek(size * 3 // 4 + 777)
        f.write(b"\x01" * 3000)  # a small change in otherwise compressible data
    return path


def half_compressible_raw(path, size, cluster_size):
    """Clusters of 45% random bytes and 55% text: each compresses to about half a cluster."""
    text = b"byoi-agent writes disks. " * (cluster_size // 25 + 1)
    with open(path, "wb") as f:
        for _ in range(0, size, cluster_size):
            noise = os.urandom(cluster_size * 45 // 100)
            f.write(noise + text[: cluster_size - len(noise)])
    return path


class Conformance(ConversionChecks, unittest.TestCase):
    # The write mode every conversion runs in (test_qcow2_conformance_stream.py runs the suite in
    # stream mode).
    mode = "ram"

    def setUp(self):
        self._tmp = tempdir()
        self.dir = self._tmp.name
        self.addCleanup(self._tmp.cleanup)
        self.n = 0

    def path(self, name):
        return os.path.join(self.dir, name)

    def check(self, image, targets=TARGETS, fmt="qcow2"):
        """Converts `image` onto every target and compares with qemu-img's raw output."""
        self.assertConvertsLike(image, reference(image, self.path("ref.raw"), fmt), targets)

    def image(self, size, *writes, **opts):
        p = self.path("img.qcow2")
        if os.path.exists(p):
            os.unlink(p)
        create(p, size, **opts)
        if writes:
            qemu_io(p, *writes)
        return p

    # Writes touching partial clusters, cluster and L2 boundaries, and the last bytes of the disk.
    WRITES = ("write -P 0x5a 0 3000", "write -P 0xa5 1049088 133120", "write -P 0x33 4190208 4096",
              "write -P 0x77 2097152 512")

    def test_version_2(self):
        self.check(self.image(4 * MIB, *self.WRITES, compat="0.10"))

    def test_version_3(self):
        self.check(self.image(4 * MIB, *self.WRITES, compat="1.1"))

    def test_every_cluster_size(self):
        for bits in range(9, 22):
            with self.subTest(cluster_size=1 << bits):
                self.check(self.image(4 * MIB, *self.WRITES, cluster_size=1 << bits))

    def compressed(self, compression, cluster_size):
        raw = mixed_raw(self.path("src.raw"), 6 * MIB)
        out = self.path("c.qcow2")
        qemu_img("convert", "-f", "raw", "-O", "qcow2", "-c", "-o",
                 f"cluster_size={cluster_size},compression_type={compression}", raw, out)
        return out

    def test_zlib(self):
        for cs in (512, 4096, 65536, 2 * MIB):
            with self.subTest(cluster_size=cs):
                self.check(self.compressed("zlib", cs))

    def test_zstd(self):
        for cs in (512, 4096, 65536, 2 * MIB):
            with self.subTest(cluster_size=cs):
                self.check(self.compressed("zstd", cs))

    def test_compressed_streams_crossing_host_clusters(self):
        # qemu-img packs compressed streams back to back, so a stream that does not fit in what is
        # left of a host cluster runs on into the next one. Clusters that compress to about half
        # their size make that happen at every cluster size.
        for compression in ("zlib", "zstd"):
            for cs in (512, 4096, 65536, 2 * MIB):
                with self.subTest(compression=compression, cluster_size=cs):
                    raw = half_compressible_raw(self.path("half.raw"), max(4 * MIB, 4 * cs), cs)
                    image = self.path("half.qcow2")
                    qemu_img("convert", "-f", "raw", "-O", "qcow2", "-c", "-o",
                             f"cluster_size={cs},compression_type={compression}", raw, image)
                    crossing = [(o, e) for o, e in Qcow2(image).compressed_streams()
                                if o // cs != (e - 1) // cs]
                    self.assertGreater(len(crossing), 0, "no stream crosses a host cluster")
                    self.check(image)

    def test_compressed_stream_ending_inside_its_last_sector(self):
        # A file may end where its last compressed stream ends, inside the stream's last 512-byte
        # sector: that is not a truncated image (the data past the end was never written).
        image = self.compressed("zlib", 65536)
        q = Qcow2(image)
        host, sectors_end = max(q.compressed_streams(), key=lambda s: s[1])
        self.assertEqual(sectors_end, len(q.data), "the last stream is not at the end")
        inflater = zlib.decompressobj(-15)  # qcow2 stores raw deflate
        inflater.decompress(q.data[host:sectors_end])
        self.assertTrue(inflater.eof)
        end = sectors_end - len(inflater.unused_data)
        self.assertGreater(end, sectors_end - 512)
        self.assertLess(end, sectors_end, "the stream fills its last sector: nothing to cut")
        with open(image, "r+b") as f:
            f.truncate(end)
        self.check(image)

    def test_compressed_then_overwritten(self):
        image = self.compressed("zlib", 65536)
        qemu_io(image, "write -P 0x42 100000 70000", "write -c -P 0x43 3211264 65536",
                "write -z 1179648 65536")
        self.check(image)

    def test_extended_l2(self):
        for cs in (16384, 65536, 2 * MIB):
            with self.subTest(cluster_size=cs):
                sc = cs // 32
                size = max(6 * MIB, 7 * cs)
                image = self.image(
                    size, f"write -P 1 {sc} {sc * 2}", f"write -P 2 {cs + 3 * sc} {sc * 40}",
                    f"write -z {2 * cs + sc} {sc}", f"write -z -u {3 * cs} {cs}",
                    f"write -P 3 {4 * cs} {cs}", f"discard {4 * cs + 2 * sc} {sc}",
                    f"write -z {4 * cs + 5 * sc} {sc * 3}", f"write -c -P 4 {5 * cs} {cs}",
                    f"write -P 5 {size - sc} {sc}", extended_l2="on", cluster_size=cs)
                self.assertTrue(Qcow2(image).extended_l2)
                self.check(image)

    def test_zero_clusters(self):
        # -z on allocated clusters keeps the allocation (ZERO_ALLOC); -z -u drops it (ZERO_PLAIN).
        image = self.image(8 * MIB, "write -P 9 0 8M", "write -z 1M 1M", "write -z -u 3M 1M",
                           "write -z 5000000 100000", "discard 6M 512k")
        self.check(image)
        image = self.image(8 * MIB, "write -z 1M 2M", "write -P 1 4M 64k")
        self.check(image)

    def test_preallocation(self):
        for mode in ("metadata", "falloc", "full"):
            with self.subTest(preallocation=mode):
                self.check(self.image(8 * MIB, "write -P 8 1M 300k", "write -z 5M 1M",
                                      preallocation=mode))

    def test_lazy_refcounts_dirty(self):
        image = self.image(4 * MIB, *self.WRITES, lazy_refcounts="on")
        q = Qcow2(image)
        q.set_u64(72, q.incompatible | 1)  # the dirty bit, as a crash would leave it
        q.save()
        self.assertTrue(Qcow2(image).incompatible & 1)
        self.check(image)

    def test_refcount_widths(self):
        for bits in (1, 2, 4, 8, 16, 32, 64):
            with self.subTest(refcount_bits=bits):
                self.check(self.image(4 * MIB, *self.WRITES, refcount_bits=bits), targets=("file",))

    def test_internal_snapshots(self):
        image = self.image(4 * MIB, "write -P 1 0 2M")
        qemu_img("snapshot", "-c", "one", image)
        qemu_io(image, "write -P 2 512k 1M", "write -z 1900k 100k")
        qemu_img("snapshot", "-c", "two", image)
        qemu_io(image, "discard 0 64k", "write -P 3 3M 4k")
        self.assertEqual(Qcow2(image).nb_snapshots, 2)
        self.check(image)

    def test_virtual_size_not_cluster_multiple(self):
        for size in (MIB + 1536, 5 * MIB + 512, 3 * MIB + 3584):
            with self.subTest(size=size):
                self.check(self.image(size, "write -P 6 0 64k", f"write -P 7 {size - 4608} 4608"))
        raw = self.path("odd.raw")
        random_file(raw, 2 * MIB + 1536, "odd")
        out = self.path("odd.qcow2")
        for compression in ("zlib", "zstd"):
            with self.subTest(compressed=compression):
                qemu_img("convert", "-f", "raw", "-O", "qcow2", "-c", "-o",
                         f"compression_type={compression}", raw, out)
                self.check(out)

    def test_virtual_size_not_sector_multiple(self):
        # qemu sees whole 512-byte sectors only: a size of 1 MiB + 1000 reads as 1 MiB + 512.
        image = self.image(2 * MIB, "write -P 4 0 2M")
        q = Qcow2(image)
        q.set_u64(24, MIB + 1000)
        q.save()
        self.check(image)
        self.assertEqual(os.path.getsize(self.path("ref.raw")), MIB + 512)

    def test_raw_images(self):
        # A raw image is its own virtual disk, whatever its size (here not a sector multiple).
        for size in (1000, 3 * MIB + 1000, 2 * MIB):
            with self.subTest(size=size):
                raw = self.path("src.raw")
                random_file(raw, size, f"raw{size}")
                self.check(raw, fmt="raw")
                self.assertEqual(os.path.getsize(self.path("ref.raw")), (size + 511) // 512 * 512)

    def test_empty_image(self):
        self.check(self.image(0))

    def test_bitmaps(self):
        image = self.image(4 * MIB, "write -P 1 0 1M")
        qemu_img("bitmap", "--add", image, "b0")
        qemu_img("bitmap", "--add", "-g", "65536", image, "b1")
        qemu_io(image, "write -P 2 2M 1M")
        self.assertTrue(Qcow2(image).autoclear & 1)
        self.check(image)

    def test_unknown_extension_and_feature_bits(self):
        image = self.image(4 * MIB, *self.WRITES)
        q = Qcow2(image)
        end = q.extensions_end()
        payload = b"future"
        ext = (bytes.fromhex("1234abcd") + len(payload).to_bytes(4, "big") + payload +
               bytes(-len(payload) % 8))
        q.data[end:end + len(ext) + 8] = ext + bytes(8)
        q.set_u64(80, q.compatible | (1 << 40))  # unknown compatible bit
        q.set_u64(88, q.autoclear | (1 << 33))   # unknown autoclear bit
        q.save()
        self.check(image)

    def test_one_tib_mostly_empty(self):
        image = self.image(1 << 40, "write -P 1 0 1M", "write -P 2 549755813888 64k",
                           f"write -P 3 {(1 << 40) - 65536} 65536")
        out = self.path("big.raw")
        start = time.monotonic()
        r = self.convert(image, out)
        elapsed = time.monotonic() - start
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertLess(elapsed, 30, "a 1 TiB empty image must take seconds")
        self.assertEqual(os.path.getsize(out), 1 << 40)
        self.assertLess(os.stat(out).st_blocks * 512, 64 * MIB, "the output should stay sparse")
        # qemu-img compare skips holes on both sides, so it is fast on sparse files.
        r = run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", image, out, check=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(read(out, 549755813888, 65536), b"\x02" * 65536)


if __name__ == "__main__":
    unittest.main()
