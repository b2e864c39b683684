"""Compressed raw images (`.raw.xz`, `.raw.zst`, `.raw.gz`, `.raw.bz2`) through `convert` in both
write modes and through `inspect`: files made here with the real xz, zstd, gzip and bzip2 tools
(one stream and several streams one after the other, as pigz-, pbzip2- or cat-made files are),
written onto a file and a loop device pre-filled with random bytes, byte-identical to `xz -dc`
and friends; corrupt and truncated files refused with the catalogue's sentence, in ram mode before
the target is touched, in stream mode with its first MiB untouched; the declared type checked
against what the container holds."""

import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance_util import (AGENT, MIB, convert, create, loop_device, qemu_io,  # noqa: E402
                              random_file, read, run, sha256, tempdir)

TOOLS = {"xz": ("xz", "-T1", "-6"), "zstd": ("zstd", "-q", "-3"), "gzip": ("gzip", "-6"),
         "bzip2": ("bzip2", "-6")}
EXTENSION = {"xz": "xz", "zstd": "zst", "gzip": "gz", "bzip2": "bz2"}
CANT_WRITE_RAW = "Can't write raw on disk."


def compress(tool, source, out, parts=1):
    """`tool` over `source` into `out`; with parts > 1, the source cut in that many pieces, each
    its own stream, the streams one after the other (what pigz/pbzip2/cat make)."""
    data = read(source)
    step = (len(data) + parts - 1) // parts
    with open(out, "wb") as f:
        for i in range(parts):
            piece = data[i * step:(i + 1) * step]
            f.write(subprocess.run(list(TOOLS[tool]) + ["-c"], input=piece, capture_output=True,
                                   check=True).stdout)
    return out


def decompressed(tool, path, out):
    with open(out, "wb") as f:
        subprocess.run([tool, "-dc", path], stdout=f, check=True)
    return out


class CompressedRaw(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempdir()
        cls.dir = cls._tmp.name
        # A GPT disk with random data, text and zeros (some of it compresses, some not), whose
        # size is not a whole sector: the virtual disk is padded to 512 bytes.
        cls.raw = os.path.join(cls.dir, "disk.raw")
        random_file(cls.raw, 24 * MIB, "compressed-raw")
        with open(cls.raw, "r+b") as f:
            f.seek(4 * MIB)
            f.write(b"byoi-agent writes disks. " * 200000)
            f.seek(12 * MIB)
            f.write(bytes(6 * MIB))
            f.truncate(24 * MIB + 700)
        run("sgdisk", "-n1:2048:+8M", "-t1:ef00", "-n2:0:+8M", cls.raw)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def check(self, image, expected, mode):
        vsize = os.path.getsize(expected)
        out = self.path("out.raw")
        random_file(out, vsize + MIB, "out")
        r = convert(image, out, "--type", "raw", mode=mode)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(os.path.getsize(out), vsize)
        self.assertEqual(run("cmp", expected, out, check=False).returncode, 0, "differs")
        backing = self.path("disk.img")
        random_file(backing, (vsize + 4095) // 4096 * 4096 + 2 * MIB, "disk")
        past = read(backing, vsize)
        with loop_device(backing, 4096) as dev:
            r = convert(image, dev, mode=mode)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertTrue(read(dev, 0, vsize) == read(expected), "device differs")
            self.assertTrue(read(dev, vsize) == past, "bytes past the image changed")

    def test_every_tool_both_modes(self):
        for tool in TOOLS:
            for parts in (1, 3):
                image = compress(tool, self.raw, self.path(f"d{parts}.raw.{EXTENSION[tool]}"), parts)
                # The oracle: the tool's own decoder, padded to a whole sector like qemu-img.
                expected = decompressed(tool, image, self.path("expected.raw"))
                self.assertEqual(sha256(expected), sha256(self.raw))
                with open(expected, "r+b") as f:
                    f.truncate((os.path.getsize(expected) + 511) // 512 * 512)
                for mode in ("ram", "stream"):
                    with self.subTest(tool=tool, streams=parts, mode=mode):
                        self.check(image, expected, mode)

    def test_every_tool_an_image_of_whole_mib_ending_in_zeros(self):
        # The shape of most disk images (a file system's free space at the end): the decoder's
        # last output piece ends with the stream, full (zstd's decoder took that for a cut
        # stream: "zstd stream ends early").
        raw = self.path("zeros-end.raw")
        random_file(raw, 16 * MIB, "zeros-end")
        with open(raw, "r+b") as f:
            f.seek(3 * MIB)
            f.write(bytes(13 * MIB))
        run("sgdisk", "-n1:2048:+8M", "-t1:ef00", raw)
        for tool in TOOLS:
            image = compress(tool, raw, self.path(f"zeros-end.raw.{EXTENSION[tool]}"))
            for mode in ("ram", "stream"):
                with self.subTest(tool=tool, mode=mode):
                    self.check(image, raw, mode)

    def refused_untouched(self, image, mode, *reasons, args=()):
        backing = self.path("keep.img")
        random_file(backing, 30 * MIB, "keep")
        digest = sha256(backing)
        first = read(backing, 0, MIB)
        with loop_device(backing, 512) as dev:
            r = convert(image, dev, *args, mode=mode)
        self.assertEqual(r.returncode, 1, r.stderr)
        for reason in reasons:
            self.assertIn(reason, r.stderr)
        if mode == "ram":
            self.assertEqual(sha256(backing), digest, "the disk was touched")
        else:
            self.assertTrue(read(backing, 0, MIB) == first, "the first MiB was written")
        return r.stderr

    def test_truncated_file(self):
        for tool in TOOLS:
            image = compress(tool, self.raw, self.path(f"t.raw.{EXTENSION[tool]}"))
            with open(image, "r+b") as f:
                f.truncate(os.path.getsize(image) * 2 // 3)
            size = os.path.getsize(image)
            for mode in ("ram", "stream"):
                with self.subTest(tool=tool, mode=mode):
                    err = self.refused_untouched(
                        image, mode, f"{tool} stream ends early, after {size} compressed bytes")
                    self.assertTrue(err.startswith(CANT_WRITE_RAW), err)

    def test_a_stream_that_needs_more_memory_than_the_budget(self):
        # xz -7 needs 17 MiB to decode (its 16 MiB dictionary); zstd --long=24 from a pipe (its
        # size unknown) asks for a 16 MiB window. Under an 8 MiB budget (which holds the small
        # compressed file in ram mode) both are refused when their header passes, in both modes,
        # the target untouched; under 64 MiB they convert.
        data = read(self.raw)
        images = {
            "xz": subprocess.run(["xz", "-T1", "-7", "-c"], input=data, capture_output=True,
                                 check=True).stdout,
            "zstd": subprocess.run(["zstd", "-q", "--long=24", "-c"], input=data,
                                   capture_output=True, check=True).stdout,
        }
        expected = self.path("padded.raw")
        with open(expected, "wb") as f:
            f.write(data + bytes(-len(data) % 512))
        for tool, compressed in images.items():
            image = self.path(f"big-window.raw.{EXTENSION[tool]}")
            with open(image, "wb") as f:
                f.write(compressed)
            for mode in ("ram", "stream"):
                with self.subTest(tool=tool, mode=mode):
                    out = self.path("keep.raw")
                    random_file(out, MIB, "keep")
                    digest = sha256(out)
                    r = convert(image, out, "--memory-limit", "8M", mode=mode)
                    self.assertEqual(r.returncode, 1, r.stderr)
                    self.assertTrue(r.stderr.startswith(
                        "Could not download, raw image is too big to download in memory."),
                        r.stderr)
                    self.assertIn(f"{tool} stream at compressed byte", r.stderr)
                    self.assertEqual(sha256(out), digest, "the target was touched")
                    out = self.path("fits.raw")
                    r = convert(image, out, "--memory-limit", "64M", mode=mode)
                    self.assertEqual(r.returncode, 0, r.stderr)
                    self.assertEqual(sha256(out), sha256(expected))

    def test_corrupt_data_in_ram_mode_never_reaches_the_disk(self):
        image = compress("gzip", self.raw, self.path("c.raw.gz"))
        data = bytearray(read(image))
        middle = len(data) * 3 // 4
        data[middle:middle + 64] = b"\xff" * 64
        with open(image, "wb") as f:
            f.write(data)
        err = self.refused_untouched(image, "ram", "gzip data at compressed byte")
        self.assertTrue(err.startswith(CANT_WRITE_RAW), err)

    def refused_as_raw(self, image, message):
        """--type raw is refused in both modes with `message`, the target file untouched."""
        out = self.path("keep.raw")
        random_file(out, MIB, "keep")
        digest = sha256(out)
        for mode in ("ram", "stream"):
            with self.subTest(mode=mode):
                r = convert(image, out, "--type", "raw", mode=mode)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertTrue(r.stderr.startswith(message), r.stderr)
                self.assertEqual(sha256(out), digest)

    def test_declared_raw_holding_a_qcow2(self):
        qcow2 = self.path("inner.qcow2")
        create(qcow2, 4 * MIB)
        qemu_io(qcow2, "write -P 1 0 64k")
        self.refused_as_raw(compress("zstd", qcow2, self.path("inner.qcow2.zst")),
                            "image provided format is qcow2 which does not match expected raw "
                            "format")

    def test_declared_raw_holding_a_file_system(self):
        fs = self.path("fs.img")
        run("truncate", "-s", "8M", fs)
        run("mkfs.ext4", "-q", "-F", fs)
        self.refused_as_raw(compress("xz", fs, self.path("fs.img.xz")),
                            "image provided format is not of type raw because no partition table "
                            "was found. It seems to contain: an ext4 filesystem")

    def test_declared_raw_without_a_partition_table_plain_file(self):
        # The same rule for a plain file, in both modes (a job's rule for the manifest's type).
        fs = self.path("plain-fs.img")
        run("truncate", "-s", "8M", fs)
        run("mkfs.ext4", "-q", "-F", fs)
        self.refused_as_raw(fs, "image provided format is not of type raw because no partition "
                                "table was found. It seems to contain: an ext4 filesystem")

    def test_compressed_qcow2_declared_qcow2(self):
        # A qcow2 inside a container goes through the qcow2 stream reader in both modes.
        qcow2 = self.path("inner.qcow2")
        create(qcow2, 8 * MIB)
        qemu_io(qcow2, "write -P 7 5M 1M", "write -P 8 0 100k", "write -c -P 9 2M 64k")
        image = compress("xz", qcow2, self.path("inner.qcow2.xz"))
        ref = self.path("inner.raw")
        run("qemu-img", "convert", "-O", "raw", qcow2, ref)
        out = self.path("inner-out.raw")
        for mode in ("ram", "stream"):
            with self.subTest(mode=mode):
                r = convert(image, out, "--type", "qcow2", mode=mode)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(run("cmp", ref, out, check=False).returncode, 0, "differs")

    def test_a_later_stream_may_not_take_what_the_qcow2_reader_was_given(self):
        # A qcow2 cut in two xz streams: the first (xz -0, 1 MiB to decode) holds its header,
        # tables and more than the decoder's 1 MiB of output, so the qcow2 reader starts inside
        # it; the second (xz -8) asks for 33 MiB. The decoder keeps half the budget when that is
        # more than it holds, the reader the rest: under 40 MiB the second stream is refused when
        # its header passes (in stream mode after the first writes: the first MiB unwritten),
        # under 128 MiB it converts. The same qcow2 as one xz -8 stream converts under 40 MiB
        # (the reader gets what the decoder left).
        qcow2 = self.path("split.qcow2")
        create(qcow2, 8 * MIB)
        qemu_io(qcow2, "write -P 8 0 3M", "write -P 7 5M 1M")
        data = read(qcow2)
        cut = 2 * MIB
        self.assertGreater(len(data), cut + MIB)

        def xz(preset, piece):
            return subprocess.run(["xz", "-T1", preset, "-c"], input=piece, capture_output=True,
                                  check=True).stdout

        split = self.path("split.qcow2.xz")
        with open(split, "wb") as f:
            f.write(xz("-0", data[:cut]) + xz("-8", data[cut:]))
        whole = self.path("whole.qcow2.xz")
        with open(whole, "wb") as f:
            f.write(xz("-8", data))
        ref = self.path("split.raw")
        run("qemu-img", "convert", "-O", "raw", qcow2, ref)
        for mode in ("ram", "stream"):
            with self.subTest(mode=mode):
                err = self.refused_untouched(
                    split, mode, "xz stream at compressed byte", "needs more than 19 MiB to decode",
                    args=("--type", "qcow2", "--memory-limit", "40M"))
                self.assertTrue(err.startswith(
                    "Could not download, qcow2 image is too big to download in memory."), err)
                for image, limit in ((whole, "40M"), (split, "128M")):
                    out = self.path("fits.raw")
                    r = convert(image, out, "--type", "qcow2", "--memory-limit", limit, mode=mode)
                    self.assertEqual(r.returncode, 0, r.stderr)
                    self.assertEqual(sha256(out), sha256(ref))

    def test_inspect(self):
        for tool in ("xz", "zstd", "gzip"):
            with self.subTest(tool=tool):
                image = self.path(f"i.raw.{EXTENSION[tool]}")
                if tool == "zstd":  # from a file (not a pipe), zstd records the size
                    run("zstd", "-q", "-f", "-o", image, self.raw)
                else:
                    compress(tool, self.raw, image)
                r = run(AGENT, "inspect", "--json", image)
                info = json.loads(r.stdout)
                self.assertEqual(info["format"], "raw")
                self.assertEqual(info["container"], tool)
                self.assertEqual(info["partitionTable"]["type"], "gpt")
                starts = [p["start"] for p in info["partitionTable"]["partitions"]]
                self.assertEqual(starts, [MIB, 9 * MIB])
                padded = (os.path.getsize(self.raw) + 511) // 512 * 512
                if tool in ("xz", "zstd"):  # their containers say it
                    self.assertEqual(info["virtualSize"], padded)


if __name__ == "__main__":
    unittest.main()
