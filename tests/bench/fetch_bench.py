#!/usr/bin/python3
"""Download benchmark: `byoi-agent deploy --dry-run` (sha256) against curl alone and curl + sha256sum.

Serves a 2 GiB raw image (MBR + random data, in /dev/shm) from nginx on 127.0.0.1 with a config of
its own in a temp dir, then runs each variant several times, interleaved, and prints the medians
and the ratios. Target: the agent within 1.15x of curl alone, and faster than curl +
sha256sum. Not a test: run it by hand on an otherwise idle machine.

  tests/bench/fetch_bench.py [--agent build/byoi-agent] [--size-mib 2048] [--runs 3]
                             [--connections 1,4] [--baseline OLD-AGENT]

With --connections, the agent runs once per count in each round (--connections N); --baseline adds
another agent binary (an older build, run without --connections) to compare before and after.
nginx on loopback caps no connection, so more connections gain nothing here: this measures that
they cost nothing.
"""
import argparse
import hashlib
import json
import resource
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_image(path, size):
    """An MBR with one partition, then pseudo-random data (64 MiB of urandom, repeated)."""
    block = os.urandom(64 << 20)
    mbr = bytearray(512)
    mbr[446:462] = bytes([0x00, 0, 0, 0, 0x83, 0, 0, 0]) + (2048).to_bytes(4, "little") + \
        (size // 512 - 2048).to_bytes(4, "little")
    mbr[510:512] = b"\x55\xaa"
    h = hashlib.sha256()
    with open(path, "wb") as f:
        written = 0
        first = True
        while written < size:
            chunk = block[: min(len(block), size - written)]
            if first:
                chunk = bytes(mbr) + chunk[512:]
                first = False
            f.write(chunk)
            h.update(chunk)
            written += len(chunk)
    return h.hexdigest()


def start_nginx(workdir, root, port):
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path {workdir}/tmp; proxy_temp_path {workdir}/tmp;
  fastcgi_temp_path {workdir}/tmp; uwsgi_temp_path {workdir}/tmp; scgi_temp_path {workdir}/tmp;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
""")
    os.makedirs(os.path.join(workdir, "tmp"), exist_ok=True)
    proc = subprocess.Popen(["nginx", "-c", conf, "-p", workdir], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nginx did not start: " + open(os.path.join(workdir, "error.log")).read())


def machine_busy():
    """CPU seconds the whole machine has spent busy (all cores, /proc/stat): nginx, softirqs
    and kernel threads included."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def timed(argv_list):
    """Runs the commands one after the other (like `a && b`): (wall seconds, CPU seconds of the
    commands (user + system), CPU seconds of the whole machine). CPU time suffers less than
    wall time from a busy machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = machine_busy()
    start = time.monotonic()
    for argv in argv_list:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - start
    busy = machine_busy() - busy
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, busy


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_agent = os.environ.get("BYOI_AGENT") or os.path.join(here, "..", "..", "build", "byoi-agent")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agent", default=default_agent)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--connections", default="",
                    help="comma-separated connection counts, one agent variant each")
    ap.add_argument("--baseline", help="another agent binary to compare, without --connections")
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness for nginx and every variant (e.g. -10 on a shared, busy host)")
    args = ap.parse_args()
    if args.nice:
        os.nice(args.nice)

    workdir = tempfile.mkdtemp(prefix="byoi-bench-")
    root = tempfile.mkdtemp(prefix="byoi-bench-root-", dir="/dev/shm")
    os.chmod(root, 0o755)  # nginx workers run as nobody
    out = root + ".out"
    nginx = None
    try:
        size = args.size_mib << 20
        print(f"making a {args.size_mib} MiB image in {root} ...", flush=True)
        digest = make_image(os.path.join(root, "image.raw"), size)
        port = free_port()
        nginx = start_nginx(workdir, root, port)
        url = f"http://127.0.0.1:{port}/image.raw"
        manifest = os.path.join(workdir, "manifest.json")
        with open(manifest, "w") as f:
            json.dump({"URL": url, "type": "raw", "checkSum": digest, "checkSumType": "sha256"}, f)
        status = os.path.join(workdir, "status.json")

        deploy = ["deploy", "--manifest", manifest, "--dry-run", "--status-file", status]
        variants = {
            "curl -o /dev/shm/x": [["curl", "-sfo", out, url]],
            "curl -o /dev/shm/x && sha256sum": [["curl", "-sfo", out, url], ["sha256sum", out]],
        }
        if args.baseline:
            variants["baseline deploy --dry-run"] = [[args.baseline] + deploy]
        agent = "byoi-agent deploy --dry-run"
        if args.connections:
            for n in args.connections.split(","):
                agent = f"byoi-agent deploy --dry-run --connections {n}"
                variants[agent] = [[args.agent] + deploy + ["--connections", n]]
        else:
            variants[agent] = [[args.agent] + deploy]
        times = {name: [] for name in variants}
        cpus = {name: [] for name in variants}
        busies = {name: [] for name in variants}
        timed(variants["curl -o /dev/shm/x"])  # warm-up: page cache, nginx
        for run in range(args.runs):
            for name, argv_list in variants.items():
                if os.path.exists(out):
                    os.unlink(out)
                wall, cpu, busy = timed(argv_list)
                times[name].append(wall)
                cpus[name].append(cpu)
                busies[name].append(busy)
            print(f"run {run + 1}: " + ", ".join(f"{n}: {t[-1]:.2f} s" for n, t in times.items()),
                  flush=True)
        with open(status) as f:
            final = json.load(f)
        if final["status"] != "done":
            print("agent did not finish: " + final["message"], file=sys.stderr)
            return 1

        med = {name: statistics.median(t) for name, t in times.items()}
        base = med["curl -o /dev/shm/x"]
        print(f"\n{args.size_mib} MiB from nginx on 127.0.0.1, median of {args.runs} runs "
              f"(nproc {os.cpu_count()}, load {os.getloadavg()[0]:.2f}, nice {os.nice(0)}):")
        for name, m in med.items():
            cpu = statistics.median(cpus[name])
            busy = statistics.median(busies[name])
            print(f"  {name:36s} {m:7.2f} s  {size / m / 1e6:7.0f} MB/s  {m / base:5.2f}x curl"
                  f"   (CPU {cpu:5.2f} s, machine busy {busy:5.2f} s of "
                  f"{m * os.cpu_count():5.2f}, wall min {min(times[name]):6.2f} s, "
                  f"max {max(times[name]):6.2f} s)")
        both = med["curl -o /dev/shm/x && sha256sum"]
        for name in variants:
            if name.startswith("byoi-agent"):
                print(f"{name}: agent / curl = {med[name] / base:.2f} (target <= 1.15); "
                      f"agent / (curl + sha256sum) = {med[name] / both:.2f} (target < 1)")
        return 0
    finally:
        if nginx:
            nginx.terminate()
            nginx.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        if os.path.exists(out):
            os.unlink(out)


if __name__ == "__main__":
    sys.exit(main())
