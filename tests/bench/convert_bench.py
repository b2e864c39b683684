#!/usr/bin/python3
"""Benchmark (not a test): `byoi-agent convert` against qemu-img writing a qcow2 image to a loop
device over a file, with O_DIRECT on every side.

The image: 4 GiB virtual, ~1.5 GiB of data (half random, half compressible text), in three forms:
uncompressed, zlib and zstd. Each tool writes it onto the same loop device, several repetitions in
rotating order, in the same run:
  byoi      byoi-agent convert --write-mode ram IMAGE DEV (O_DIRECT, fdatasync before it returns)
  stream    byoi-agent convert --write-mode stream IMAGE DEV (read front to back, written while
            read, bounded memory; the same writer guarantees)
  qemu      qemu-img convert -f qcow2 -O raw -n -W -t none IMAGE DEV; sync
  ipa       qemu-img convert -f qcow2 -O host_device -t directsync -S 0 -W IMAGE DEV
            (the flags ironic-python-agent uses)
The source image is read from the page cache by every tool (it is read before each run, untimed:
stream mode tells the kernel to drop the pages it read), and every run starts from an empty disk
(blkdiscard, untimed).
Prints medians of wall time, the ratio of the best qemu-img time to byoi's (> 1 means byoi is
faster), and the CPU seconds each tool used (user + system; on a machine shared with other work
the wall times mostly measure how much CPU each tool was given). For the compressed forms, how long
byoi's check that every compressed cluster inflates took (it runs before the target is opened, and
is part of byoi's time), from the line convert prints.
With --baseline OTHER-BYOI, that build of the agent runs as a fourth tool ("base") in the same
rotation: a before/after comparison that the VM's swings affect alike.

Usage: sudo tests/bench/convert_bench.py [--agent build/byoi-agent] [--reps 3] [--dir /var/tmp]
                                         [--disk-dir /dev/shm] [--baseline OLD/byoi-agent]
Needs about 10 GiB free in --dir (4 GiB of it in --disk-dir when given). With the disk on the
host's disk, every tool may be bound by that disk's write speed; on a tmpfs the tools' own speed
shows. Run it on an otherwise idle machine, e.g. with `nice`.
"""

import argparse
import hashlib
import os
import re
import resource
import statistics
import subprocess
import sys
import time

MIB = 1 << 20
GIB = 1 << 30


def run(*argv):
    """Runs argv; returns its standard error (text)."""
    return subprocess.run([str(a) for a in argv], check=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True).stderr


BLOCKS = 24      # data blocks in the 4 GiB source
BLOCK_MIB = 64   # MiB per data block


def block_offset(i):
    return i * 160 * MIB + (i % 5) * MIB


def make_raw(path):
    """4 GiB: 24 blocks of 64 MiB data (12 random, 12 text) spread among zeros."""
    if os.path.exists(path) and os.path.getsize(path) == 4 * GIB:
        return
    words = [hashlib.sha1(str(i).encode()).hexdigest()[: 3 + i % 9].encode() for i in range(5000)]
    with open(path, "wb") as f:
        f.truncate(4 * GIB)
        for i in range(BLOCKS):
            f.seek(block_offset(i))
            if i % 2 == 0:
                for _ in range(BLOCK_MIB):
                    f.write(os.urandom(MIB))
            else:
                state = i
                out = bytearray()
                while len(out) < BLOCK_MIB * MIB:
                    state = (state * 1103515245 + 12345) & 0x7FFFFFFF
                    out += words[state % len(words)] + (b"\n" if state % 11 == 0 else b" ")
                f.write(out[: BLOCK_MIB * MIB])


def make_data_only(raw, path):
    """The 1.5 GiB of data blocks of the source, back to back: what dd writes as the floor."""
    if os.path.exists(path) and os.path.getsize(path) == BLOCKS * BLOCK_MIB * MIB:
        return
    with open(raw, "rb") as src, open(path + ".tmp", "wb") as out:
        for i in range(BLOCKS):
            src.seek(block_offset(i))
            for _ in range(BLOCK_MIB):
                out.write(src.read(MIB))
    os.rename(path + ".tmp", path)


def into_page_cache(path):
    """Reads the file once, so that every tool then reads it from memory."""
    with open(path, "rb") as f:
        while f.read(64 * MIB):
            pass


def cpu_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_it(argv, then_sync=False):
    """(wall seconds, CPU seconds of the tool: user + system, kernel worker threads excluded,
    seconds byoi spent inflating compressed clusters before writing or None)."""
    cpu = cpu_children()
    start = time.monotonic()
    stderr = run(*argv)
    if then_sync:
        run("sync")
    verify = re.search(r"of compressed clusters in ([0-9.]+) s", stderr)
    return time.monotonic() - start, cpu_children() - cpu, float(verify[1]) if verify else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", default=os.environ.get("BYOI_AGENT", "build/byoi-agent"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--forms", default="none,zlib,zstd")
    ap.add_argument("--baseline", default=None,
                    help="another byoi-agent build, timed in the same rotation as 'base'")
    ap.add_argument("--disk-dir", default=None,
                    help="where the loop device's backing file lives (default: --dir); a tmpfs "
                         "such as /dev/shm takes the host's disk out of the measurement")
    args = ap.parse_args()
    work = os.path.join(args.dir, "byoi-bench")
    os.makedirs(work, exist_ok=True)
    raw = os.path.join(work, "source.raw")
    print("making the source image...", file=sys.stderr)
    make_raw(raw)
    data_only = os.path.join(work, "data-only.bin")
    make_data_only(raw, data_only)
    images = {}
    for form in args.forms.split(","):
        path = os.path.join(work, f"image-{form}.qcow2")
        if not os.path.exists(path):
            print(f"making the {form} qcow2...", file=sys.stderr)
            opts = ["-c", "-o", f"compression_type={form}"] if form != "none" else []
            run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", *opts, raw, path + ".tmp")
            os.rename(path + ".tmp", path)
        images[form] = path
    disk_dir = args.disk_dir or work
    disk = os.path.join(disk_dir, "byoi-bench-disk.img")
    with open(disk, "wb") as f:
        f.truncate(4 * GIB + 64 * MIB)
    dev = subprocess.run(["losetup", "-f", "--show", disk], check=True, capture_output=True,
                         text=True).stdout.strip()
    tools = {
        "byoi": lambda img: time_it([args.agent, "convert", "--write-mode", "ram", img, dev]),
        "stream": lambda img: time_it([args.agent, "convert", "--write-mode", "stream", img, dev]),
        "qemu": lambda img: time_it(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", "-n",
                                     "-W", "-t", "none", img, dev], then_sync=True),
        "ipa": lambda img: time_it(["qemu-img", "convert", "-f", "qcow2", "-O", "host_device",
                                    "-t", "directsync", "-S", "0", "-W", img, dev]),
    }
    if args.baseline:
        tools["base"] = lambda img: time_it([args.baseline, "convert", img, dev])
    results = {}
    cpus = {}
    verifies = {}
    floor = []
    try:
        # The device's own speed for the image's 1.5 GiB of data: four dd writing a quarter
        # each at once (O_DIRECT, 4 MiB writes; a single dd keeps only one write in flight),
        # then sync. A tool that has to write those bytes cannot beat it by much.
        into_page_cache(data_only)
        quarter = BLOCKS * BLOCK_MIB // 4 // 4  # 4 MiB blocks per dd
        for rep in range(args.reps):
            run("blkdiscard", dev)
            start = time.monotonic()
            dds = [subprocess.Popen(["dd", f"if={data_only}", f"of={dev}", "bs=4M",
                                     f"count={quarter}", f"skip={k * quarter}",
                                     f"seek={k * quarter}", "oflag=direct", "conv=notrunc"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for k in range(4)]
            if any([p.wait() != 0 for p in dds]):  # a list: every dd is waited for
                raise RuntimeError("dd failed")
            run("sync")
            floor.append(time.monotonic() - start)
            print(f"dd floor    rep {rep + 1}: {floor[-1]:6.2f} s", file=sys.stderr)
        for form, img in images.items():
            into_page_cache(img)
            size = os.path.getsize(img)
            order = list(tools)
            for rep in range(args.reps):
                shift = rep % len(order)
                for name in order[shift:] + order[:shift]:
                    # Every tool starts from the same empty disk: what the previous one left
                    # (allocated blocks or holes in the backing file) would otherwise decide
                    # much of the next one's time.
                    run("blkdiscard", dev)
                    # stream mode drops the pages of the file it read (POSIX_FADV_DONTNEED):
                    # every tool starts with the image in the page cache again.
                    into_page_cache(img)
                    t, cpu, verify = tools[name](img)
                    results.setdefault((form, name), []).append(t)
                    cpus.setdefault((form, name), []).append(cpu)
                    if verify is not None and name == "byoi":
                        verifies.setdefault(form, []).append(verify)
                    checked = f"  (inflate check {verify:5.2f} s)" if verify is not None else ""
                    print(f"{form:5} {name:6} rep {rep + 1}: {t:6.2f} s  (cpu {cpu:5.2f} s)"
                          f"{checked}", file=sys.stderr)
            print(f"{form}: image file {size / GIB:.2f} GiB", file=sys.stderr)
        # byoi's output is checked once against qemu-img's reference.
        ref = os.path.join(work, "ref.raw")
        form, img = next(iter(images.items()))
        run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", img, ref)
        for mode in ("ram", "stream"):
            run(args.agent, "convert", "--write-mode", mode, img, dev)
            run("cmp", "-n", str(4 * GIB), ref, dev)
        os.unlink(ref)
    finally:
        subprocess.run(["losetup", "-d", dev])
        os.unlink(disk)

    base = "base" in tools
    print(f"\n{'image':6} {'byoi':>8} {'stream':>8} {'qemu -t none':>13} {'ipa flags':>10} "
          f"{'best qemu/byoi':>15}   cpu: {'byoi':>6} {'stream':>6} {'qemu':>6} {'ipa':>6}" +
          ("   base (cpu)" if base else ""))
    for form in images:
        med = {name: statistics.median(results[(form, name)]) for name in tools}
        cpu = {name: statistics.median(cpus[(form, name)]) for name in tools}
        best = min(med["qemu"], med["ipa"])
        print(f"{form:6} {med['byoi']:7.2f}s {med['stream']:7.2f}s {med['qemu']:12.2f}s "
              f"{med['ipa']:9.2f}s {best / med['byoi']:14.2f}x        {cpu['byoi']:5.2f}s "
              f"{cpu['stream']:5.2f}s {cpu['qemu']:5.2f}s "
              f"{cpu['ipa']:5.2f}s" + (f"   {med['base']:5.2f}s ({cpu['base']:5.2f}s)"
                                       if base else ""))
    print("\nwall time, min/median/max:")
    for form in images:
        for name in [n for n in ("byoi", "stream", "qemu", "ipa", "base") if n in tools]:
            t = results[(form, name)]
            print(f"  {form:6} {name:5} {min(t):6.2f}s {statistics.median(t):6.2f}s {max(t):6.2f}s")
    for form, v in verifies.items():
        share = statistics.median(v) / statistics.median(results[(form, "byoi")])
        print(f"  {form:6} inflate check before writing: {min(v):5.2f}s {statistics.median(v):5.2f}s "
              f"{max(v):5.2f}s, {share:.0%} of byoi's median convert")
    print(f"(medians of {args.reps} runs; 4 GiB virtual, loop device over a file on "
          f"{os.path.realpath(disk_dir)}, O_DIRECT writes)")
    print(f"device floor: 4 parallel dd of the 1.5 GiB of data alone (O_DIRECT) + sync "
          f"{statistics.median(floor):.2f}s; a tool bound by it cannot be much faster than that")


if __name__ == "__main__":
    main()
