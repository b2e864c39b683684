"""What `byoi-agent convert` refuses, each with an image crafted by patching bytes (struct) into one
qemu-img made: exit code 1, the catalogue message, the reason in the detail, and the target
(a loop device and a file, pre-filled with random bytes) byte-for-byte untouched. Corrupt headers
are patched the way QEMU's own corruption tests do (iotests 060, 080, 108, 261): for each such
class qemu-img refuses to open the image too, and that is asserted. Compressed data that does not
inflate is found before the target is opened (every compressed cluster is inflated first)."""

import os
import struct
import subprocess
import sys
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance_util import (AGENT, COPIED, MIB, Qcow2, RefusalChecks, convert,  # noqa: E402
                              create, loop_device, qemu_img, qemu_io, random_file, read, run,
                              sha256)

CANT_WRITE = "Can't write qcow2 on disk."


class Refusals(RefusalChecks, unittest.TestCase):
    # The write mode every conversion runs in (test_qcow2_conformance_stream.py runs the refusals
    # in stream mode).
    mode = "ram"

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
        return self.assertRefused(image, CANT_WRITE, *reasons)

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
        self.refused(image, "image is truncated: the compressed cluster at virtual 0x30000 maps "
                     f"to {len(q.data) + MIB:#x}, past the end of the file")

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

    def test_bad_compressed_data_leaves_the_disk_untouched(self):
        # Every compressed cluster is inflated before the target is opened: a bad one, even past
        # the first MiB, is refused with the disk byte for byte as it was. qemu-img refuses
        # these images too, but for a deflate stream that inflates past the cluster: it keeps
        # the first cluster's bytes, where we refuse (docs/pipeline.md: exactly one cluster).
        text = b"compressible text. " * 200000
        for compression in ("zlib", "zstd"):
            for kind in ("garbage", "short", "long"):
                with self.subTest(compression=compression, stream=kind):
                    image = self.compressed_image(compression)
                    q = Qcow2(image)
                    shift = 62 - (q.cluster_bits - 8)
                    if kind == "garbage":
                        # 8 bytes: the streams are packed byte by byte, and this text
                        # compresses so well that 64 would reach into the next cluster's.
                        host = q.u64(q.l2_entry_offset(0, 40)) & ((1 << shift) - 1)
                        q.data[host:host + 8] = b"\xff" * 8
                    else:
                        size = q.cluster_size + (512 if kind == "long" else -512)
                        self.replace_stream(q, 40, self.compress(compression, text[:size]))
                    q.save()
                    qemu = run("qemu-img", "convert", "-O", "raw", image, self.path("qemu.raw"),
                               check=False)
                    self.assertEqual(qemu.returncode == 0, (compression, kind) == ("zlib", "long"))
                    backing = self.path("wipe.img")
                    random_file(backing, 8 * MIB, "wipe")
                    before = sha256(backing)
                    first_mib = read(backing, 0, MIB)
                    with loop_device(backing, 4096) as dev:
                        r = self.convert(image, dev)
                    self.assertEqual(r.returncode, 1, r.stderr)
                    self.assertTrue(r.stderr.startswith(CANT_WRITE), r.stderr)
                    self.assertIn("compressed cluster at virtual offset 0x280000", r.stderr)
                    if kind != "garbage":
                        what = "more" if kind == "long" else "less"
                        if compression == "zlib":
                            self.assertIn(f"inflates to {what} than a cluster", r.stderr)
                        elif kind == "long":
                            self.assertIn("zstd frame inflates to more than a cluster", r.stderr)
                    self.assert_untouched(backing, before, first_mib)

    # --- header tables qemu-img checks at open (its iotests 060, 080, 108, 261) ---------------

    def qemu_refuses(self, image, reason):
        """qemu-img refuses to open `image`, giving `reason`."""
        r = run("qemu-img", "convert", "-O", "raw", image, self.path("qemu.raw"), check=False)
        self.assertNotEqual(r.returncode, 0, f"qemu-img accepted {image}")
        self.assertIn(reason, r.stderr)

    def both_refuse(self, image, qemu_reason, *reasons):
        self.qemu_refuses(image, qemu_reason)
        return self.refused(image, *reasons)

    def test_refcount_table_offset_invalid(self):
        cases = (("past 2^63", 0xFFFFFFFFFFFF0000, "ends past 2^63"),
                 ("misaligned", 0x10200, "refcount table offset 0x10200 is not aligned"))
        for name, offset, reason in cases:
            with self.subTest(name):
                self.both_refuse(self.patched(lambda q: q.set_u64(48, offset)),
                                 "Reference count table offset invalid", reason)

    def test_refcount_table_too_large(self):
        # 8 MiB at most: 128 clusters of 64 KiB.
        for clusters in (129, 0xFFFFFF):
            with self.subTest(clusters=clusters):
                self.both_refuse(self.patched(lambda q: q.set_u32(56, clusters)),
                                 "Reference count table too large",
                                 f"refcount table of {clusters} clusters is larger than 8 MiB")

    def test_refcount_table_absent(self):
        self.both_refuse(self.patched(lambda q: (q.set_u32(56, 0), q.set_u64(48, 0))),
                         "Image does not contain a reference count table",
                         "image has no refcount table")

    def test_snapshot_table_offset_invalid(self):
        cases = (("misaligned, one snapshot", 1, 0x50008, "snapshot table offset 0x50008 is not"),
                 ("misaligned, no snapshot", 0, 12345, "snapshot table offset 0x3039 is not"),
                 ("past 2^63", 1, 1 << 63, "snapshot table at 0x8000000000000000 ends past"))
        for name, count, offset, reason in cases:
            with self.subTest(name):
                self.both_refuse(
                    self.patched(lambda q: (q.set_u32(60, count), q.set_u64(64, offset))),
                    "Snapshot table offset invalid", reason)

    def test_too_many_snapshots(self):
        self.both_refuse(self.patched(lambda q: (q.set_u32(60, 70000), q.set_u64(64, 0x40000))),
                         "Snapshot table too large", "70000 snapshots (at most 65536)")

    def snapshot_image(self):
        image = self.base("snap.qcow2")
        qemu_img("snapshot", "-c", "one", image)
        qemu_io(image, "write -P 0x63 512k 64k")
        qemu_img("snapshot", "-c", "two", image)
        return image

    def test_snapshot_with_too_much_extra_data(self):
        for entry in (0, 1):
            with self.subTest(entry=entry):
                image = self.snapshot_image()
                q = Qcow2(image)
                self.assertEqual(q.nb_snapshots, 2)
                pos = q.snapshots_offset
                for _ in range(entry):  # walk to the entry: 40 bytes, extra data, ID, name
                    pos = (pos + 7) & ~7
                    id_size, name_size = struct.unpack_from(">HH", q.data, pos + 12)
                    extra = struct.unpack_from(">I", q.data, pos + 36)[0]
                    pos += 40 + extra + id_size + name_size
                pos = (pos + 7) & ~7
                q.set_u32(pos + 36, 1025)
                q.save()
                self.both_refuse(image, f"Too much extra metadata in snapshot table entry {entry}",
                                 f"snapshot table entry {entry}",
                                 "1025 bytes of extra data (at most 1024)")

    def test_header_extension_header_crossing_the_cluster(self):
        # 512-byte clusters and a header_length of 508: the next extension's type and length
        # would be read across the end of the first cluster.
        def straddle(q):
            q.set_u32(100, 508)
            q.data[104:512] = bytes(408)
        self.both_refuse(self.patched(straddle, cluster_size=512,
                                      writes=("write -P 1 0 4k",)),
                         "Header extension too large", "header extension 0x0 at 0x1fc",
                         "passes the first cluster")

    def test_backing_format_extension_too_long(self):
        def long_format(q):
            end = q.extensions_end()
            q.data[end:end + 32] = struct.pack(">II", 0xE2792ACA, 16) + b"qcow2-but-longer" + bytes(8)
        self.both_refuse(self.patched(long_format), "ext_backing_format: len=16 too large",
                         "backing format extension of 16 bytes")

    def test_luks_extension_without_luks(self):
        def luks_header(q):
            end = q.extensions_end()
            q.data[end:end + 32] = struct.pack(">IIQQ", 0x0537BE77, 16, 0x50000, 4096) + bytes(8)
        self.both_refuse(self.patched(luks_header),
                         "CRYPTO header extension only expected with LUKS encryption method",
                         "LUKS header extension in an image that is not LUKS-encrypted")

    def test_data_file_raw_without_data_file(self):
        self.both_refuse(self.patched(lambda q: q.set_u64(88, q.autoclear | 2)),
                         "data-file-raw requires a data file",
                         "the data_file_raw bit is set but the image has no external data file")

    def bitmap_image(self):
        """An image with two persistent bitmaps (granularity 64 KiB and 512 B); returns it with
        the offset of its bitmaps extension's data and of its bitmap directory."""
        image = self.base("bitmaps.qcow2")
        qemu_img("bitmap", "--add", image, "b0")
        qemu_img("bitmap", "--add", "-g", "512", image, "b1")
        q = Qcow2(image)
        self.assertTrue(q.autoclear & 1)
        ext, length = q.extension(0x23852875)
        self.assertEqual(length, 24)
        return image, ext, q.u64(ext + 16)

    def test_bitmaps(self):
        # (name, patch(q, extension data offset, directory offset), qemu's reason, ours)
        cases = (
            ("directory past the end of the file",
             lambda q, ext, d: q.set_u64(ext + 16, (len(q.data) + (1 << 20)) & ~0xFFFF),
             "doesn't satisfy the constraints", "bitmap 0 '' is invalid: its table is empty"),
            ("directory cut short", lambda q, ext, d: q.set_u64(ext + 8, 40),
             "Broken bitmap directory", "an entry passes its end"),
            ("directory of 0 bytes", lambda q, ext, d: q.set_u64(ext + 8, 0),
             "Requested bitmap directory size is zero", "bitmap directory size is 0"),
            ("directory misaligned", lambda q, ext, d: q.set_u64(ext + 16, d + 8),
             "invalid bitmap directory offset", "is not aligned to the cluster size"),
            ("fewer bitmaps than announced", lambda q, ext, d: q.set_u32(ext, 3),
             "Less bitmaps found than specified", "holds 2 of the 3 bitmaps"),
            ("more bitmaps than announced", lambda q, ext, d: q.set_u32(ext, 1),
             "More bitmaps found than specified", "holds more than the 1 bitmaps"),
            ("zero bitmaps", lambda q, ext, d: q.set_u32(ext, 0),
             "found bitmaps extension with zero bitmaps", "bitmaps extension with zero bitmaps"),
            ("extension of the wrong size", lambda q, ext, d: q.set_u32(ext - 4, 16),
             "bitmaps_ext: Invalid extension length", "bitmaps extension of 16 bytes"),
            ("bitmap table of the wrong size", lambda q, ext, d: q.set_u32(d + 8, 2),
             "Could not read bitmap 'b0' from image", "its table has 2 entries, 1 expected"),
        )
        for name, mutate, qemu_reason, reason in cases:
            with self.subTest(name):
                image, ext, directory = self.bitmap_image()
                q = Qcow2(image)
                mutate(q, ext, directory)
                q.save()
                self.both_refuse(image, qemu_reason, reason)

    # --- a short upload ------------------------------------------------------------------------

    def test_truncated_image(self):
        # qemu-img reads what is missing as zeros; a cut download would install as a disk with
        # holes, so the agent refuses it. inspect gives the same reason.
        image = self.base(writes=("write -P 0x61 0 1M", "write -P 0x62 2M 64k"))
        q = Qcow2(image)
        entry = q.u64(q.l2_entry_offset(0, 32)) & 0x00FFFFFFFFFFFE00  # virtual 2 MiB
        self.assertNotEqual(entry, 0)
        with open(image, "r+b") as f:
            f.truncate(entry + 1000)
        size = os.path.getsize(image)
        self.assertEqual(run("qemu-img", "convert", "-O", "raw", image, self.path("qemu.raw"),
                             check=False).returncode, 0, "qemu-img reads zeros there")
        reason = (f"image is truncated: the cluster at virtual 0x200000 maps to {entry:#x}, past "
                  f"the end of the file ({size} bytes)")
        self.refused(image, reason)
        r = run(AGENT, "inspect", image, check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn(reason, r.stderr)

    def test_truncated_compressed_image(self):
        image = self.compressed_image()
        q = Qcow2(image)
        last = max(q.compressed_streams(), key=lambda s: s[1])
        # The file ends before the last stream's last sector: that stream lost its end.
        with open(image, "r+b") as f:
            f.truncate(last[1] - 512)
        self.refused(image, "image is truncated: the compressed cluster at virtual",
                     "past the end of the file")

    def test_declared_type_must_match(self):
        image = self.base()
        r = self.convert(image, self.file_target, "--type", "raw")
        self.assertEqual(r.returncode, 1)
        self.assertIn("image provided format is qcow2 which does not match expected raw format",
                      r.stderr)
        self.assertEqual(sha256(self.file_target), self.file_hash)

    def test_image_larger_than_disk(self):
        image = self.base(size=32 * MIB)
        with loop_device(self.backing, 512) as dev:
            r = self.convert(image, dev)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(f"image provided has a size of {32 * MIB} bytes which is larger than "
                      f"{dev} of {16 * MIB} bytes", r.stderr)
        self.assertEqual(sha256(self.backing), self.backing_hash)

    def test_memory_budget(self):
        image = self.base()
        r = self.convert(image, self.file_target, "--memory-limit", "64K", "--type", "qcow2")
        self.assertEqual(r.returncode, 1)
        self.assertIn("Could not download, qcow2 image is too big to download in memory.",
                      r.stderr)


if __name__ == "__main__":
    unittest.main()
