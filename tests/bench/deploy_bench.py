#!/usr/bin/python3
"""Benchmark (not a test): a whole job, from the start to `done`, downloading from nginx on
127.0.0.1 and writing a loop device (O_DIRECT), in ram mode and in stream mode, against what the
same work costs with the usual tools, all timed in one run, in rotating order.

Images (built once under --dir/byoi-bench, shared with convert_bench.py):
  raw     2 GiB of random data behind an MBR
  qcow2   4 GiB virtual / 1.5 GiB data, uncompressed (convert_bench.py's source)
  zlib    the same, zlib-compressed clusters
  raw.zst the 2 GiB raw, zstd -3
  fs.raw  2 GiB shaped like a file system: runs of 64 KiB to 1 MiB of random data among holes
          of up to 4 MiB (about 600 MiB of data), behind an MBR
  fs.qcow2 the same, uncompressed qcow2 (qemu-img convert)
Variants, each timed from launch to exit:
  ram       byoi-agent deploy --write-mode ram (download into RAM, verify, write)
  stream    byoi-agent deploy --write-mode stream (download, convert and write at once)
  curl+qemu curl -o /dev/shm/x && qemu-img convert -n -W -t none (OVHcloud's guide, by hand)
  curl|dd   curl | dd oflag=direct conv=fdatasync (raw only: what coreos-installer-style
            streaming costs)
  curl      curl -o /dev/null (the network's floor)
  dd        dd of the image's data to the device, O_DIRECT, from the page cache, then fdatasync
            (the disk's floor: a job ends with the same flush, and on a loop device over a file
            the flush is where its bytes reach the disk under the file)
Each agent run happens in a memory cgroup of its own; its peak (memory.max_usage_in_bytes) is
reported. The job's config drive, boot entry and reboot are off (a bare disk, --reboot none, no
efivars) so the figures are the image's path only.

Prints min / median / max per variant and image, and the ratios the stream issue asks for:
stream / max(curl, dd) (target <= 1.15) and ram / (curl+qemu) (target < 1).

Usage: sudo tests/bench/deploy_bench.py [--agent build/byoi-agent] [--reps 3] [--dir /var/tmp]
                                        [--images raw,qcow2,zlib,raw.zst,fs.raw,fs.qcow2]
                                        [--direct-io]
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import convert_bench  # noqa: E402
from fetch_servers import MemoryCgroup, Nginx  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30


def run(*argv, **kw):
    return subprocess.run([str(a) for a in argv], check=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, **kw)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(16 * MIB)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)


def make_fs_like(path):
    """fs.raw: the same runs and holes every time (a fixed seed), random bytes in the runs."""
    if os.path.exists(path):
        return
    rng = random.Random(7)
    with open(path + ".tmp", "wb") as f:
        f.truncate(2 * GIB)
        f.write(mbr(2 * GIB))
        pos = MIB
        while pos < 2 * GIB - 4 * MIB:
            n = rng.choice([64, 128, 256, 512, 1024]) * 1024
            f.seek(pos)
            f.write(os.urandom(n))
            pos += n + rng.choice([0, 64, 128, 256, 512, 1024, 2048, 4096]) * 1024
    os.rename(path + ".tmp", path)


def mbr(size):
    """A sector with one MBR partition from 1 MiB to `size`: a raw image the verify step
    accepts."""
    sector = bytearray(512)
    sector[446 + 4] = 0x83
    sector[446 + 8:446 + 16] = (2048).to_bytes(4, "little") + \
        (size // 512 - 2048).to_bytes(4, "little")
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def make_images(work, names):
    raw_src = os.path.join(work, "source.raw")
    convert_bench.make_raw(raw_src)
    images = {}
    raw2g = os.path.join(work, "deploy-2g.raw")
    if not os.path.exists(raw2g):
        with open(raw2g + ".tmp", "wb") as f:
            for i in range(2 * GIB // (16 * MIB)):
                piece = bytearray(os.urandom(16 * MIB))
                if i == 0:
                    piece[446:512] = mbr(2 * GIB)[446:512]
                f.write(piece)
        os.rename(raw2g + ".tmp", raw2g)
    if "raw" in names:
        images["raw"] = (raw2g, "raw")
    if "raw.zst" in names:
        zst = raw2g + ".zst"
        if not os.path.exists(zst):
            with open(zst + ".tmp", "wb") as f:
                subprocess.run(["zstd", "-3", "-T0", "-c", raw2g], stdout=f, check=True)
            os.rename(zst + ".tmp", zst)
        images["raw.zst"] = (zst, "raw")
    if "fs.raw" in names or "fs.qcow2" in names:
        fs_raw = os.path.join(work, "fs.raw")
        make_fs_like(fs_raw)
        if "fs.raw" in names:
            images["fs.raw"] = (fs_raw, "raw")
        fs_qcow2 = os.path.join(work, "fs.qcow2")
        if "fs.qcow2" in names and not os.path.exists(fs_qcow2):
            run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", fs_raw, fs_qcow2 + ".tmp")
            os.rename(fs_qcow2 + ".tmp", fs_qcow2)
        if "fs.qcow2" in names:
            images["fs.qcow2"] = (fs_qcow2, "qcow2")
    for name, form in (("qcow2", "none"), ("zlib", "zlib")):
        if name not in names:
            continue
        path = os.path.join(work, f"image-{form}.qcow2")
        if not os.path.exists(path):
            opts = ["-c", "-o", f"compression_type={form}"] if form != "none" else []
            run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", *opts, raw_src, path + ".tmp")
            os.rename(path + ".tmp", path)
        images[name] = (path, "qcow2")
    return images


def agent_job(agent, url, checksum, type_, dev, mode, workdir):
    """(wall seconds, peak bytes) of one deploy in its own memory cgroup."""
    manifest = os.path.join(workdir, "manifest.json")
    with open(manifest, "w") as f:
        json.dump({"URL": url, "type": type_, "checkSumType": "sha256", "checkSum": checksum}, f)
    cgroup = MemoryCgroup()
    try:
        start = time.monotonic()
        r = subprocess.run([agent, "deploy", "--manifest", manifest, "--disk", dev,
                            "--write-mode", mode, "--efivars", os.path.join(workdir, "none"),
                            "--reboot", "none"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, preexec_fn=cgroup.enter)
        seconds = time.monotonic() - start
        if r.returncode != 0:
            raise RuntimeError(f"deploy ({mode}) failed: {r.stderr[-2000:]}")
        return seconds, cgroup.peak()
    finally:
        cgroup.close()


def timed(*argv, pipe=None):
    """Wall seconds of argv, or of `pipe` (two argvs, the first's output into the second)."""
    start = time.monotonic()
    if pipe:
        a = subprocess.Popen(pipe[0], stdout=subprocess.PIPE)
        b = subprocess.Popen(pipe[1], stdin=a.stdout, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        a.stdout.close()
        if b.wait() != 0 or a.wait() != 0:
            raise RuntimeError("pipe failed: %s | %s" % (pipe[0], pipe[1]))
    else:
        run(*argv)
    return time.monotonic() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", default=os.environ.get("BYOI_AGENT", "build/byoi-agent"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--images", default="raw,qcow2,zlib,raw.zst,fs.raw,fs.qcow2")
    ap.add_argument("--direct-io", action="store_true",
                    help="the loop device reads and writes its file with O_DIRECT (losetup "
                         "--direct-io=on): what is written reaches the file's disk as it comes, "
                         "as on a real disk, instead of waiting in the page cache for the flush")
    args = ap.parse_args()
    agent = os.path.abspath(args.agent)
    work = os.path.join(args.dir, "byoi-bench")
    os.makedirs(work, exist_ok=True)
    os.chmod(args.dir, os.stat(args.dir).st_mode | 0o005)
    os.chmod(work, 0o755)
    print("making the images...", file=sys.stderr)
    images = make_images(work, args.images.split(","))
    sums = {name: sha256_file(path) for name, (path, _) in images.items()}

    scratch = tempfile.mkdtemp(prefix="byoi-deploy-bench-", dir=args.dir)
    nginx = Nginx(scratch, work)
    disk = os.path.join(scratch, "disk.img")
    with open(disk, "wb") as f:
        f.truncate(4 * GIB + 64 * MIB)
    loop_opts = ["--direct-io=on"] if args.direct_io else []
    dev = subprocess.run(["losetup", "-f", "--show", *loop_opts, disk], check=True,
                         capture_output=True, text=True).stdout.strip()
    if args.direct_io:
        with open(f"/sys/block/{os.path.basename(dev)}/loop/dio") as f:
            if f.read().strip() != "1":
                sys.exit(f"{dev}: the kernel did not turn direct I/O on")
    shm = "/dev/shm/byoi-deploy-bench.img"
    results = {}  # (image, variant) -> [seconds]
    peaks = {}  # (image, mode) -> [bytes]
    try:
        for rep in range(args.reps):
            for name, (path, type_) in images.items():
                url = nginx.url("/" + os.path.basename(path))
                variants = {
                    "ram": lambda: agent_job(agent, url, sums[name], type_, dev, "ram", scratch),
                    "stream": lambda: agent_job(agent, url, sums[name], type_, dev, "stream",
                                                scratch),
                    "curl": lambda: (timed("curl", "-sSf", "-o", "/dev/null", url), None),
                    "dd": lambda: (timed("dd", f"if={path}", f"of={dev}", "bs=4M",
                                         "oflag=direct", "conv=fdatasync", "status=none"), None),
                }
                if name != "raw.zst":
                    fmt_ = "raw" if type_ == "raw" else "qcow2"
                    variants["curl+qemu"] = lambda: (
                        timed("curl", "-sSf", "-o", shm, url) +
                        timed("qemu-img", "convert", "-f", fmt_, "-O", "raw", "-n", "-W", "-t",
                              "none", shm, dev) + timed("sync"), None)
                if name in ("raw", "fs.raw"):
                    variants["curl|dd"] = lambda: (
                        timed(pipe=(["curl", "-sSf", url],
                                          ["dd", f"of={dev}", "bs=4M", "iflag=fullblock",
                                           "oflag=direct", "conv=fdatasync", "status=none"])),
                        None)
                order = list(variants)
                order = order[rep % len(order):] + order[:rep % len(order)]
                for variant in order:
                    run("blkdiscard", "-f", dev)
                    convert_bench.into_page_cache(path)  # nginx and dd read from memory
                    seconds, peak = variants[variant]()
                    if os.path.exists(shm):
                        os.unlink(shm)
                    results.setdefault((name, variant), []).append(seconds)
                    if peak is not None:
                        peaks.setdefault((name, variant), []).append(peak)
                    print(f"rep {rep + 1} {name:8} {variant:10} {seconds:7.2f} s" +
                          (f"  peak {peak / MIB:.0f} MiB" if peak else ""), file=sys.stderr)
    finally:
        run("losetup", "-d", dev)
        nginx.close()
        shutil.rmtree(scratch, ignore_errors=True)
        if os.path.exists(shm):
            os.unlink(shm)

    print(f"\n{args.reps} runs each; nginx on 127.0.0.1 -> loop device over {disk} (O_DIRECT)"
          + (", the loop device with direct I/O" if args.direct_io else ""))
    print(f"{'image':9} {'variant':10} {'min':>7} {'median':>7} {'max':>7} {'peak MiB':>9}")
    for (name, variant), times in results.items():
        peak = peaks.get((name, variant))
        print(f"{name:9} {variant:10} {min(times):7.2f} {statistics.median(times):7.2f} "
              f"{max(times):7.2f} {max(peak) / MIB if peak else float('nan'):9.0f}")
    print()
    for name in images:
        med = {v: statistics.median(t) for (n, v), t in results.items() if n == name}
        floor = max(med["curl"], med["dd"])
        line = f"{name:9} stream / max(curl, dd) = {med['stream'] / floor:.2f}"
        if "curl+qemu" in med:
            line += f"; ram / (curl+qemu) = {med['ram'] / med['curl+qemu']:.2f}"
            line += f"; stream / (curl+qemu) = {med['stream'] / med['curl+qemu']:.2f}"
        if "curl|dd" in med:
            line += f"; stream / (curl|dd) = {med['stream'] / med['curl|dd']:.2f}"
        print(line)


if __name__ == "__main__":
    main()
