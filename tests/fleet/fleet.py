"""A rack in network namespaces, for the swarm's proof (test_fleet.py) and benchmark
(tests/bench/fleet_bench.py).

One namespace holds a bridge (the rack's switch); the origin (nginx serving the image and its
.torrent, its link rate-limited with `tc tbf`) and the tracker (Debian's opentracker) live in a
second; each agent in one of its own, on a veth to the bridge, running `byoi-agent deploy
--reboot none` into a regular file of its own. Nothing touches the host's interfaces: every
address is in 10.231.0.0/24 inside the namespaces. Needs root.

Rack(n).run(torrent=True|False) starts the n agents at once and returns per-agent deploy times
(process start to the status file saying done), the bytes the origin's nginx sent for the image,
and whether every disk holds the image.
"""
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

from fetch_servers import AGENT, mbr_image, nginx_conf  # noqa: E402
from swarm_util import Tracker, info_hashes, make_torrent  # noqa: E402

SUBNET = "10.231.0"
ORIGIN_IP = f"{SUBNET}.1"
HTTP_PORT = 8080


def sh(*argv, netns=None, check=True):
    if netns:
        argv = ("ip", "netns", "exec", netns) + argv
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def cpu_seconds():
    """(busy, total) CPU seconds of the machine since boot, every core (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / hz, sum(fields) / hz


def percentile(values, p):
    """The p-th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


class Rack:
    def __init__(self, agents, image_mib=64, origin_mbit=200, seed=1, piece_length=1 << 20,
                 ranges=True):
        self.n = agents
        self.ranges = ranges  # False: the origin ignores Range (nginx's max_ranges 0)
        self.tag = f"bf{os.getpid() % 100000}"
        self.dir = tempfile.mkdtemp(prefix="byoi-fleet-")
        os.chmod(self.dir, 0o755)  # nginx's worker runs as nobody
        self.image_size = image_mib << 20
        self.origin_mbit = origin_mbit
        self.piece_length = piece_length
        self.namespaces = []
        self.procs = []
        self.data = mbr_image(self.image_size, seed=seed)
        self.sha = hashlib.sha256(self.data).hexdigest()
        self.www = os.path.join(self.dir, "www")
        os.makedirs(self.www)
        os.chmod(self.www, 0o755)
        self.image = os.path.join(self.www, "image.raw")
        with open(self.image, "wb") as f:
            f.write(self.data)
        os.chmod(self.image, 0o644)
        try:
            self._network()
            self._origin()
        except BaseException:
            self.close()
            raise

    # --- the network ---------------------------------------------------------------------------

    def _ns(self, name):
        ns = f"{self.tag}-{name}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "link", "set", "lo", "up", netns=ns)
        return ns

    def _attach(self, ns, ip, short):
        """A veth from `ns` (address `ip`) to the switch's bridge; returns the ns-side name."""
        inner, outer = f"v{self.tag}{short}"[:15], f"p{self.tag}{short}"[:15]
        sh("ip", "link", "add", inner, "type", "veth", "peer", "name", outer)
        sh("ip", "link", "set", inner, "netns", ns)
        sh("ip", "link", "set", outer, "netns", self.switch)
        sh("ip", "link", "set", outer, "master", "br0", "up", netns=self.switch)
        sh("ip", "addr", "add", f"{ip}/24", "dev", inner, netns=ns)
        sh("ip", "link", "set", inner, "up", netns=ns)
        # Multicast (Local Service Discovery) needs a route out of the namespace.
        sh("ip", "route", "add", "224.0.0.0/4", "dev", inner, netns=ns)
        return inner

    def _neighbour_table(self):
        """The kernel's ARP table is one for every namespace, 1024 entries by default
        (net.ipv4.neigh.default.gc_thresh3): n agents that all talk to each other need n x n.
        Past it the kernel drops packets to new neighbours ("neighbor table overflow"): 50
        agents saw most of their peer connections time out and took the image alone. Raised for
        the rack's life when too low, put back by close()."""
        self.neigh_saved = {}
        need = 4 * (self.n + 2) ** 2
        for key, value in (("gc_thresh2", need // 2), ("gc_thresh3", need)):
            path = f"/proc/sys/net/ipv4/neigh/default/{key}"
            with open(path) as f:
                old = int(f.read())
            if old < value:
                self.neigh_saved[path] = old
                with open(path, "w") as f:
                    f.write(str(value))

    def _network(self):
        self._neighbour_table()
        self.switch = self._ns("sw")
        sh("ip", "link", "add", "br0", "type", "bridge", netns=self.switch)
        sh("ip", "link", "set", "br0", "up", netns=self.switch)
        self.origin_ns = self._ns("origin")
        dev = self._attach(self.origin_ns, ORIGIN_IP, "o")
        # The origin's uplink: what it sends is capped, as a customer's web server is.
        sh("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{self.origin_mbit}mbit",
           "burst", "256kb", "latency", "100ms", netns=self.origin_ns)
        self.agent_ns = []
        for i in range(self.n):
            ns = self._ns(f"a{i}")
            self._attach(ns, self.agent_ip(i), f"a{i}")
            self.agent_ns.append(ns)

    def agent_ip(self, i):
        return f"{SUBNET}.{10 + i}"

    # --- the origin and the tracker ------------------------------------------------------------

    def _origin(self):
        ng = os.path.join(self.dir, "nginx")
        os.makedirs(os.path.join(ng, "tmp"))
        self.access_log = os.path.join(ng, "access.log")
        conf = os.path.join(ng, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(ng, "$uri $status $body_bytes_sent", self.access_log,
                               f"{ORIGIN_IP}:{HTTP_PORT}", self.www, worker_connections=256,
                               extra="" if self.ranges else "max_ranges 0;"))
        self.nginx = subprocess.Popen(["ip", "netns", "exec", self.origin_ns, "nginx", "-c", conf,
                                       "-p", ng], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        self.procs.append(self.nginx)
        self.tracker = Tracker(ip=ORIGIN_IP, netns=self.origin_ns)
        self.image_url = f"http://{ORIGIN_IP}:{HTTP_PORT}/image.raw"
        self.torrent_url = self.image_url + ".torrent"
        lines = make_torrent(self.image, self.image_url, self.image + ".torrent",
                             trackers=[self.tracker.announce], piece_length=self.piece_length)
        os.chmod(self.image + ".torrent", 0o644)
        self.tracker.start(info_hashes(lines))
        self._wait_answers(self.image_url, ["-r", "0-0"])
        self._wait_answers(self.tracker.announce, [])

    def _wait_answers(self, url, extra):
        """Polls `url` from the first agent's namespace until it answers over HTTP."""
        deadline = time.monotonic() + 10
        while True:
            r = sh("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *extra, url,
                   netns=self.agent_ns[0], check=False)
            if r.stdout not in ("", "000"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} does not answer: {r.stderr}")
            time.sleep(0.1)

    def origin_bytes(self):
        """Bytes nginx sent for the image since the last call (its access log, then emptied)."""
        total = 0
        with open(self.access_log, "r+") as f:
            for line in f:
                uri, _, sent = line.split()
                if uri == "/image.raw":
                    total += int(sent)
            f.truncate(0)
        return total

    # --- the agents ------------------------------------------------------------------------------

    def run(self, torrent=True, agents=None, seed_time=300, timeout=300):
        """Deploys on `agents` (default all) at once; returns a dict of the figures."""
        agents = list(range(self.n)) if agents is None else agents
        self.origin_bytes()  # from zero
        cpu0 = cpu_seconds()
        manifest = {"URL": self.image_url, "type": "raw", "checkSum": self.sha,
                    "checkSumType": "sha256"}
        if torrent:
            manifest["torrent"] = self.torrent_url
        runs = []
        for i in agents:
            d = os.path.join(self.dir, f"agent{i}")
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            disk = os.path.join(d, "disk.img")
            with open(disk, "wb") as f:
                f.truncate(self.image_size + (4 << 20))
            mpath = os.path.join(d, "manifest.json")
            with open(mpath, "w") as f:
                json.dump(manifest, f)
            status = os.path.join(d, "status.json")
            argv = ["ip", "netns", "exec", self.agent_ns[i], AGENT, "deploy", "--manifest", mpath,
                    "--disk", disk, "--reboot", "none", "--status-file", status,
                    "--memory-limit", "512M", "--seed-time", str(seed_time),
                    "--swarm-listen", f"{self.agent_ip(i)}:6881", "--write-mode", "ram"]
            log = open(os.path.join(d, "log"), "w")
            runs.append({"i": i, "disk": disk, "status": status, "log": log,
                         "start": time.monotonic(), "done": None,
                         "proc": subprocess.Popen(argv, stdout=log, stderr=log)})
        deadline = time.monotonic() + timeout
        pending = list(runs)
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} agent(s) not done in {timeout} s")
            for r in list(pending):
                state = None
                try:
                    with open(r["status"]) as f:
                        state = json.load(f)["status"]
                except (OSError, ValueError, KeyError):
                    pass
                if state == "done":
                    r["done"] = time.monotonic() - r["start"]
                    pending.remove(r)
                elif state == "error" or r["proc"].poll() is not None and state != "done":
                    with open(os.path.join(os.path.dirname(r["status"]), "log")) as f:
                        tail = f.read()[-2000:]
                    raise RuntimeError(f"agent {r['i']} failed: {tail}")
            time.sleep(0.05)
        cpu1 = cpu_seconds()
        # Every agent is done: their seeding ends now.
        for r in runs:
            if r["proc"].poll() is None:
                r["proc"].terminate()
        for r in runs:
            r["proc"].wait(30)
            r["log"].close()
        verified = all(self._disk_holds_image(r["disk"]) for r in runs)
        times = [r["done"] for r in runs]
        swarm = []
        shares = [0, 0, 0]  # bytes the agents took from the origin alone, as owners, taken over
        for r in runs:
            with open(r["status"]) as f:
                swarm.append(json.load(f).get("swarm"))
            with open(os.path.join(os.path.dirname(r["status"]), "log")) as f:
                for m in re.finditer(r"web seed: fetched (\d+) bytes alone, (\d+) as the owner, "
                                     r"(\d+) taken over", f.read()):
                    shares = [a + int(b) for a, b in zip(shares, m.groups())]
        return {"agents": len(runs), "torrent": torrent, "origin_bytes": self.origin_bytes(),
                "image_bytes": self.image_size, "times": times,
                "p50": statistics.median(times), "p95": percentile(times, 95),
                "max": max(times), "verified": verified, "swarm": swarm, "shares": shares,
                "cpu_busy": (cpu1[0] - cpu0[0]) / max(1e-9, cpu1[1] - cpu0[1]),
                "cpu_per_agent": (cpu1[0] - cpu0[0]) / len(runs)}

    def _disk_holds_image(self, disk):
        with open(disk, "rb") as f:
            return hashlib.sha256(f.read(self.image_size)).hexdigest() == self.sha

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        if getattr(self, "tracker", None):
            self.tracker.close()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        for path, old in getattr(self, "neigh_saved", {}).items():
            with open(path, "w") as f:
                f.write(str(old))
        shutil.rmtree(self.dir, ignore_errors=True)


def describe(figures):
    f = figures
    return (f"{f['agents']} agent(s), {'swarm' if f['torrent'] else 'HTTP only'}: origin sent "
            f"{f['origin_bytes'] / (1 << 20):.1f} MiB ({f['origin_bytes'] / f['image_bytes']:.2f} "
            f"x the image); deploy time p50 {f['p50']:.1f} s, p95 {f['p95']:.1f} s, "
            f"max {f['max']:.1f} s; CPU {100 * f['cpu_busy']:.0f} % busy, "
            f"{f['cpu_per_agent']:.2f} CPU-s per agent (the machine's, until the last done)" + (
                "; web seed requests: {:.0f} MiB alone, {:.0f} as owners, {:.0f} taken over".format(
                    *(b / (1 << 20) for b in f["shares"])) if f["torrent"] else ""))


__all__ = ["Rack", "describe", "percentile", "random"]
