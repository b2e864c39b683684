"""Stream mode (`convert --write-mode stream`: the image is written while it is read, front to back,
with bounded memory) against the same oracle as ram mode: the whole qcow2 conformance suite and
every refusal run again in stream mode, then what only stream mode meets: clusters out of order,
compressed clusters out of order, L2 tables that come after the data they map, and a budget too
small for the clusters that must wait for their L2 table."""

import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance_util import (MIB, Qcow2, convert, create, loop_device,  # noqa: E402
                              move_first_l2_table_to_the_end, qemu_img, qemu_io, random_file,
                              read, reference, run, sha256, tempdir)
# The modules, not their classes: the ram-mode suites must not be collected here a second time.
import test_qcow2_conformance as ram_conformance  # noqa: E402
import test_qcow2_conformance_refusals as ram_refusals  # noqa: E402

CANT_WRITE = ram_refusals.CANT_WRITE

TOO_BIG = "Could not download, qcow2 image is too big to download in memory."


class StreamConformance(ram_conformance.Conformance):
    mode = "stream"


class StreamRefusals(ram_refusals.Refusals):
    mode = "stream"

    # Refusals the first cluster shows: made before the target is even opened, so a file target
    # keeps its size and bytes too. The others come once tables or data have passed, when stream
    # mode may have written: there the first MiB (held back until the end) must be unchanged.
    AFTER_HEADER = {
        "test_l2_unaligned", "test_l2_outside", "test_l2_referenced_twice",
        "test_data_cluster_unaligned", "test_zero_cluster_in_version_2",
        "test_extended_l2_invalid_bitmaps", "test_compressed_descriptor_outside",
        "test_bad_compressed_data_leaves_the_disk_untouched", "test_snapshot_with_too_much_extra_data",
        "test_bitmaps", "test_truncated_image", "test_truncated_compressed_image",
    }

    def assert_untouched(self, path, digest, first_mib):
        if self._testMethodName not in self.AFTER_HEADER:
            return super().assert_untouched(path, digest, first_mib)
        self.assertTrue(read(path, 0, MIB) == first_mib, "the first MiB was written")
        return None


class OutOfOrder(unittest.TestCase):
    """Images whose file order is not the disk's order, converted in stream mode onto a file and a
    loop device (512-byte sectors), byte-identical to qemu-img's raw output."""

    def setUp(self):
        self._tmp = tempdir()
        self.dir = self._tmp.name
        self.addCleanup(self._tmp.cleanup)

    def path(self, name):
        return os.path.join(self.dir, name)

    def check(self, image, *extra):
        ref = reference(image, self.path("ref.raw"))
        out = self.path("out.raw")
        random_file(out, os.path.getsize(ref) + MIB, "out")
        r = convert(image, out, *extra, mode="stream")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(run("cmp", ref, out, check=False).returncode, 0, "differs from qemu-img")
        backing = self.path("disk.img")
        random_file(backing, os.path.getsize(ref) + MIB, "disk")
        with loop_device(backing, 512) as dev:
            r = convert(image, dev, *extra, mode="stream")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertTrue(read(dev, 0, os.path.getsize(ref)) == read(ref), "device differs")
        return r.stderr

    def reverse_image(self, compressed=False, cluster_size=65536):
        """Writes in reverse virtual order, so the file holds the disk's end first."""
        image = self.path("rev.qcow2")
        create(image, 48 * MIB, cluster_size=cluster_size)
        writes = []
        for i, offset in enumerate(range(46 * MIB, -1, -3 * MIB)):
            flag = "-c " if compressed else ""
            length = 2 * MIB if not compressed else 16 * cluster_size
            writes.append(f"write {flag}-P {0x10 + i} {offset} {length}")
        qemu_io(image, *writes)
        return image

    def test_clusters_in_reverse_order(self):
        image = self.reverse_image()
        q = Qcow2(image)
        hosts = [e & 0x00FFFFFFFFFFFE00 for _, e in q.l2_entries() if e & 0x00FFFFFFFFFFFE00]
        self.assertGreater(hosts[0], hosts[-1], "the file is not in reverse order")
        self.check(image)

    def test_compressed_clusters_in_reverse_order(self):
        for cs in (4096, 65536):
            with self.subTest(cluster_size=cs):
                image = self.reverse_image(compressed=True, cluster_size=cs)
                streams = list(Qcow2(image).compressed_streams())
                self.assertGreater(len(streams), 100)
                self.assertGreater(streams[0][0], streams[-1][0], "not in reverse order")
                self.check(image)

    def test_compressed_image_from_qemu_img_in_little_memory(self):
        # qemu-img convert -c puts compressed clusters and their L2 tables in the file in the order
        # its parallel writers finish: a table may follow some of the data it maps. Everything
        # else passes once its mapping is known and is not kept: 64 MiB of 4 KiB clusters (32 L2
        # tables), 32 MiB once compressed, stream with a 16 MiB budget.
        raw = self.path("half.raw")
        with open(raw, "wb") as f:  # clusters half random: about 32 MiB compressed
            for i in range(64 * MIB // 4096):
                f.write(os.urandom(2048) + bytes(2048))
        image = self.path("half.qcow2")
        qemu_img("convert", "-f", "raw", "-O", "qcow2", "-c", "-o", "cluster_size=4096", raw,
                 image)
        self.assertGreater(len(list(Qcow2(image).compressed_streams())), 10000)
        stderr = self.check(image, "--memory-limit", "16M")
        held = int(re.search(r"held at most ([0-9.]+) MiB", stderr)[1].split(".")[0])
        self.assertLess(held, 8, stderr)

    def test_preallocated_metadata(self):
        # Every L2 table first, then the data: one run per table, nothing waits.
        image = self.path("pre.qcow2")
        create(image, 64 * MIB, preallocation="metadata")
        qemu_io(image, "write -P 1 0 5M", "write -P 2 40M 3M")
        self.check(image)

    def l2_after_data(self):
        """An image whose first L2 table comes after the 8 MiB of data it maps: they must wait in
        memory for it."""
        image = self.path("late.qcow2")
        create(image, 32 * MIB)
        qemu_io(image, "write -P 0x41 0 8M", "write -P 0x42 20M 1M")
        new = move_first_l2_table_to_the_end(image)
        first_data = min(e & 0x00FFFFFFFFFFFE00 for _, e in Qcow2(image).l2_entries()
                         if e & 0x00FFFFFFFFFFFE00)
        self.assertLess(first_data, new, "the data does not come before its table")
        return image

    def test_l2_table_after_its_data(self):
        self.check(self.l2_after_data())

    def test_waiting_clusters_past_the_budget(self):
        # The 8 MiB waiting for their table do not fit 4 MiB: refused with the catalogue's
        # too-big sentence, and the first MiB of the target (held back) never written.
        image = self.l2_after_data()
        self.check(image, "--memory-limit", "16M")  # they fit 16 MiB
        backing = self.path("small.img")
        random_file(backing, 40 * MIB, "small")
        first_mib = read(backing, 0, MIB)
        with loop_device(backing, 4096) as dev:
            r = convert(image, dev, "--memory-limit", "4M", mode="stream")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertTrue(r.stderr.startswith(TOO_BIG), r.stderr)
        self.assertIn("memory budget of 4194304 bytes", r.stderr)
        self.assertTrue(read(backing, 0, MIB) == first_mib, "the first MiB was written")

    def test_header_refusal_leaves_the_target_as_it_was(self):
        # Refused before the target is opened: a file target keeps even its size.
        image = self.path("enc.qcow2")
        create(image, 4 * MIB)
        q = Qcow2(image)
        q.set_u32(32, 1)
        q.save()
        out = self.path("keep.raw")
        random_file(out, 3 * MIB, "keep")
        digest = sha256(out)
        r = convert(image, out, mode="stream")
        self.assertEqual(r.returncode, 1)
        self.assertTrue(r.stderr.startswith(CANT_WRITE), r.stderr)
        self.assertIn("image is encrypted (AES)", r.stderr)
        self.assertEqual(sha256(out), digest)

    def test_bitmap_table_before_its_directory(self):
        # qemu-img stores each bitmap's table before the directory that names it: stream mode
        # checks the table's entries from what it remembered of each cluster as it passed, and
        # refuses a bad one with the words of ram mode.
        image = self.path("bitmaps.qcow2")
        create(image, 4 * MIB)
        qemu_img("bitmap", "--add", image, "b0")
        qemu_io(image, "write -P 2 2M 64k")  # b0 gets a dirty cluster: a table entry
        q = Qcow2(image)
        ext, _ = q.extension(0x23852875)
        directory = q.u64(ext + 16)
        table = q.u64(directory)
        entry = q.u64(table)
        self.assertLess(table, directory)
        self.assertNotEqual(entry, 0)
        self.check(image)
        q.set_u64(table, entry | 1)  # "all ones" with an offset: invalid
        q.save()
        for mode in ("ram", "stream"):
            with self.subTest(mode=mode):
                r = convert(image, self.path("out.raw"), mode=mode)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertTrue(r.stderr.startswith(CANT_WRITE), r.stderr)
                self.assertIn(f"bitmap 0 'b0': its table entry 0 ({entry | 1:#x}) is invalid",
                              r.stderr)

    def test_auto_mode_streams_a_file_over_the_budget(self):
        image = self.l2_after_data()
        ref = reference(image, self.path("ref.raw"))
        out = self.path("auto.raw")
        r = convert(image, out, "--memory-limit", "1M", mode="auto")
        self.assertEqual(r.returncode, 1, r.stderr)  # the 8 MiB that wait do not fit 1 MiB
        self.assertTrue(r.stderr.startswith(TOO_BIG), r.stderr)
        image = self.reverse_image()
        ref = reference(image, self.path("ref.raw"))
        r = convert(image, out, "--memory-limit", "1M", mode="auto")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("stream mode", r.stderr)
        self.assertEqual(run("cmp", ref, out, check=False).returncode, 0)


if __name__ == "__main__":
    unittest.main()
