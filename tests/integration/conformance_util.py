"""Shared helpers of the qcow2 conformance tests: images made with qemu-img/qemu-io at test time,
targets (files and loop devices pre-filled with random bytes), and a small qcow2 header/L1/L2
reader for patching crafted images with struct. Never checks in a binary image."""

import contextlib
import hashlib
import os
import struct
import subprocess
import tempfile
import time

AGENT = os.environ.get("BYOI_AGENT", "byoi-agent")
MIB = 1 << 20
COPIED = 1 << 63  # an L1/L2 entry's "copied" flag (refcount 1)


def run(*args, check=True, **kw):
    """Runs argv (never a shell); returns the CompletedProcess with text output. With `check`, a
    failure raises AssertionError carrying the program's stderr (CalledProcessError hides it)."""
    r = subprocess.run([str(a) for a in args], check=False, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise AssertionError("%s exited %d: %s%s" % (" ".join(str(a) for a in args), r.returncode,
                                                     r.stderr, r.stdout))
    return r


def qemu_img(*args):
    return run("qemu-img", *args)


def qemu_io(image, *commands, fmt="qcow2"):
    argv = ["qemu-io", "-f", fmt]
    for c in commands:
        argv += ["-c", c]
    argv.append(image)
    return run(*argv)


def create(path, size, **opts):
    """qemu-img create -f qcow2 with -o key=value options."""
    argv = ["create", "-f", "qcow2"]
    if opts:
        argv += ["-o", ",".join(f"{k}={v}" for k, v in opts.items())]
    qemu_img(*argv, path, str(size))


def convert(source, target, *extra, mode=None):
    """byoi-agent convert; `mode` is its --write-mode (ram, stream, auto), left to the default
    when None."""
    if mode is not None:
        extra = ("--write-mode", mode) + tuple(extra)
    return run(AGENT, "convert", *extra, source, target, check=False)


def reference(image, out, fmt="qcow2"):
    """qemu-img's raw conversion: the oracle."""
    qemu_img("convert", "-f", fmt, "-O", "raw", image, out)
    return out


def random_file(path, size, seed):
    """A file of `size` pseudo-random bytes (fast: a hash-expanded block repeated with a counter)."""
    block = hashlib.sha512(seed.encode()).digest() * 2048  # 128 KiB
    with open(path, "wb") as f:
        done = 0
        n = 0
        while done < size:
            chunk = (struct.pack("<Q", n) + block)[: min(len(block) + 8, size - done)]
            f.write(chunk)
            done += len(chunk)
            n += 1


def read(path, offset=0, length=None):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read() if length is None else f.read(length)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def loop_device(backing, sector_size):
    # Other tests may grab the free device between losetup's lookup and its attach: retry.
    for attempt in range(5):
        r = run("losetup", "-f", "--show", "-b", str(sector_size), backing, check=attempt == 4)
        if r.returncode == 0:
            break
        time.sleep(0.2)
    dev = r.stdout.strip()
    try:
        yield dev
    finally:
        run("losetup", "-d", dev, check=False)


class Qcow2:
    """Just enough of the format to find and patch metadata in images qemu-img made."""

    def __init__(self, path):
        self.path = path
        self.data = bytearray(read(path))
        h = self.data
        (self.magic, self.version, self.backing_offset, self.backing_size, self.cluster_bits,
         self.size, self.crypt, self.l1_size, self.l1_offset, self.refcount_offset,
         self.refcount_clusters, self.nb_snapshots, self.snapshots_offset) = struct.unpack_from(
             ">IIQIIQIIQQIIQ", h, 0)
        self.cluster_size = 1 << self.cluster_bits
        if self.version >= 3:
            (self.incompatible, self.compatible, self.autoclear, self.refcount_order,
             self.header_length) = struct.unpack_from(">QQQII", h, 72)
        else:
            self.incompatible = self.compatible = self.autoclear = 0
            self.header_length = 72
        self.extended_l2 = bool(self.incompatible & 16)

    def u64(self, offset):
        return struct.unpack_from(">Q", self.data, offset)[0]

    def set_u64(self, offset, value):
        struct.pack_into(">Q", self.data, offset, value)

    def set_u32(self, offset, value):
        struct.pack_into(">I", self.data, offset, value)

    def l1_entry_offset(self, index):
        return self.l1_offset + 8 * index

    def l2_offset(self, l1_index=0):
        return self.u64(self.l1_entry_offset(l1_index)) & 0x00FFFFFFFFFFFE00

    def l2_entry_offset(self, l1_index, l2_index):
        size = 16 if self.extended_l2 else 8
        return self.l2_offset(l1_index) + size * l2_index

    def l2_entries(self):
        """(virtual cluster index, L2 entry) for every entry of every allocated L2 table (the
        first 64-bit word of an extended entry)."""
        size = 16 if self.extended_l2 else 8
        per_table = self.cluster_size // size
        for l1 in range(self.l1_size):
            table = self.l2_offset(l1)
            if table == 0:
                continue
            for i in range(per_table):
                yield l1 * per_table + i, self.u64(table + size * i)

    def compressed_streams(self):
        """(host offset, end) of every compressed cluster's stream, as its descriptor gives it
        (qcow2.rst: the offset, then the count of 512-byte sectors it occupies less one)."""
        x = 62 - (self.cluster_bits - 8)
        for _, entry in self.l2_entries():
            if not entry & (1 << 62):
                continue
            offset = entry & ((1 << x) - 1)
            sectors = ((entry >> x) & ((1 << (self.cluster_bits - 8)) - 1)) + 1
            yield offset, (offset & ~511) + sectors * 512

    def extension(self, ext_type):
        """(offset of the data, length) of the first header extension of `ext_type`, or None."""
        pos = self.header_length
        while pos + 8 <= self.cluster_size:
            t, length = struct.unpack_from(">II", self.data, pos)
            if t == 0:
                return None
            if t == ext_type:
                return pos + 8, length
            pos += 8 + ((length + 7) & ~7)
        return None

    def extensions_end(self):
        """Offset of the end-of-extensions marker (type 0)."""
        pos = self.header_length
        while True:
            ext_type, length = struct.unpack_from(">II", self.data, pos)
            if ext_type == 0:
                return pos
            pos += 8 + ((length + 7) & ~7)

    def save(self, path=None):
        with open(path or self.path, "wb") as f:
            f.write(self.data)


TARGETS = ("file", 512, 4096)


class ConversionChecks:
    """For a unittest.TestCase with a `path(name)` method: `byoi-agent convert` onto a regular
    file and onto loop devices of 512- and 4096-byte sectors, each pre-filled with random bytes
    (so a zero range that is skipped, or a byte written past the virtual size, is caught), must
    give exactly the bytes of a reference raw file (qemu-img's output). `mode` is convert's
    --write-mode (None: its default)."""

    n = 0
    mode = None

    def convert(self, image, target, *extra):
        return convert(image, target, *extra, mode=self.mode)

    def assertConvertsLike(self, image, ref, targets=TARGETS):
        expected = read(ref)
        vsize = len(expected)
        for target in targets:
            self.n += 1
            with self.subTest(target=target):
                if target == "file":
                    out = self.path("out.raw")
                    random_file(out, vsize + MIB, f"file{self.n}")  # convert truncates it
                    r = self.convert(image, out)
                    self.assertEqual(r.returncode, 0, r.stderr)
                    self.assertEqual(os.path.getsize(out), vsize)
                    self.assertEqual(run("cmp", ref, out, check=False).returncode, 0,
                                     "output differs from qemu-img")
                    continue
                backing = self.path("disk.img")
                disk_size = (vsize + 4095) // 4096 * 4096 + 2 * MIB
                random_file(backing, disk_size, f"disk{self.n}")
                past_end = read(backing, vsize)
                with loop_device(backing, target) as dev:
                    r = self.convert(image, dev)
                    self.assertEqual(r.returncode, 0, r.stderr)
                    got = read(dev, 0, vsize)
                    self.assertTrue(got == expected, "device content differs from qemu-img")
                    self.assertTrue(read(dev, vsize) == past_end, "bytes past the image changed")


class RefusalChecks:
    """For a unittest.TestCase class: a loop device's backing file (16 MiB) and a file (3 MiB),
    pre-filled with random bytes once, that a refused conversion must leave byte for byte as they
    were (assert_untouched: a subclass in stream mode may require less). `mode` is convert's
    --write-mode (None: its default)."""

    mode = None

    def convert(self, image, target, *extra):
        return convert(image, target, *extra, mode=self.mode)

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempdir()
        cls.dir = cls._tmp.name
        cls.backing = os.path.join(cls.dir, "disk.img")
        random_file(cls.backing, 16 * MIB, "refusals")
        cls.backing_hash = sha256(cls.backing)
        cls.backing_first_mib = read(cls.backing, 0, MIB)
        cls.file_target = os.path.join(cls.dir, "target.raw")
        random_file(cls.file_target, 3 * MIB, "file-target")
        cls.file_hash = sha256(cls.file_target)
        cls.file_first_mib = read(cls.file_target, 0, MIB)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def assert_untouched(self, path, digest, first_mib):
        """The target is byte for byte as it was (`digest`). Stream mode (subclasses) writes while
        it reads, so a refusal the header does not show may come after bytes were written: there
        only the first MiB (held back until the end) is required unchanged."""
        self.assertEqual(sha256(path), digest, "the disk was touched")

    def assertRefused(self, image, message, *reasons, args=()):
        """`convert [args] image TARGET` fails (exit 1) with `message` and every reason in its
        detail, on a loop device of 512-byte sectors and on a file, touching neither; returns
        stderr."""
        # Targets an earlier (failed) case wrote to are made again, so one failure stays one.
        if sha256(self.backing) != self.backing_hash:
            random_file(self.backing, 16 * MIB, "refusals")
        if sha256(self.file_target) != self.file_hash:
            random_file(self.file_target, 3 * MIB, "file-target")
        with loop_device(self.backing, 512) as dev:
            r = self.convert(image, dev, *args)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertTrue(r.stderr.startswith(message), r.stderr)
        for reason in reasons:
            self.assertIn(reason, r.stderr)
        self.assert_untouched(self.backing, self.backing_hash, self.backing_first_mib)
        r = self.convert(image, self.file_target, *args)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assert_untouched(self.file_target, self.file_hash, self.file_first_mib)
        return r.stderr


def tempdir():
    # Not /dev/shm: the writer's O_DIRECT and fallocate paths need a real file system.
    return tempfile.TemporaryDirectory(prefix="byoi-conformance-", dir="/var/tmp")


def move_first_l2_table_to_the_end(image):
    """Moves the L2 table of L1 entry 0 to the end of `image` (L1 patched, the old place zeroed):
    the data it maps then passes before it in the file, as when qemu reallocates a table. Returns
    the table's new offset."""
    q = Qcow2(image)
    old = q.l2_offset(0)
    table = bytes(q.data[old:old + q.cluster_size])
    new = (len(q.data) + q.cluster_size - 1) // q.cluster_size * q.cluster_size
    q.data += bytes(new - len(q.data)) + table
    q.data[old:old + q.cluster_size] = bytes(q.cluster_size)
    q.set_u64(q.l1_entry_offset(0), new | COPIED)
    q.save()
    return new
