"""Real parts of a swarm for the swarm tests (test_swarm.py, tests/fleet): a tracker (Debian's
opentracker), a seeder (python3-libtorrent, the same libtorrent as the agent's helper), .torrent
files made by `byoi-agent torrent`, and the bytes an origin served, read from its request log.

Everything listens on 127.0.0.1 (or in a network namespace of the fleet test); close() stops it.
"""
import http.server
import os
import shutil
import socketserver
import subprocess
import tempfile
import threading
import time

import libtorrent as lt

from fetch_servers import AGENT, free_port, wait_listening


class Tracker:
    """opentracker on `ip`:PORT (HTTP and UDP), in network namespace `netns` when given.

    Debian's opentracker serves only the info hashes of its whitelist: the port is chosen first
    (`announce` is known, for the torrents), then start(hashes) writes the list and starts it."""

    def __init__(self, ip="127.0.0.1", netns=None):
        self.ip = ip
        self.netns = netns
        # opentracker reads its whitelist as nobody: a directory of its own that nobody may enter
        # (a test's mkdtemp directory is 0700).
        self.dir = tempfile.mkdtemp(prefix="byoi-tracker-")
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.proc = None

    @property
    def announce(self):
        return f"http://{self.ip}:{self.port}/announce"

    def start(self, hashes):
        """`hashes`: the 40-hex-digit info hashes to serve (a v2 hash is cut to 40 digits, as
        BitTorrent v2 announces it)."""
        with open(os.path.join(self.dir, "whitelist"), "w") as f:
            for h in hashes:
                f.write(h[:40] + "\n")
        argv = ["opentracker", "-i", self.ip, "-p", str(self.port), "-P", str(self.port),
                "-w", os.path.join(self.dir, "whitelist")]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns] + argv
        # opentracker chroots to its working directory and drops to nobody.
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     cwd=self.dir)
        if self.netns is None:
            wait_listening(self.port, self.proc, "opentracker")

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def make_torrent(image, web_seed, out, trackers=(), piece_length=None):
    """`byoi-agent torrent IMAGE --web-seed URL [--tracker T]... --output OUT`; returns its
    stdout lines (the path, the info hashes, the magnet link)."""
    argv = [AGENT, "torrent", image, "--web-seed", web_seed, "--output", out]
    for t in trackers:
        argv += ["--tracker", t]
    if piece_length:
        argv += ["--piece-length", str(piece_length)]
    r = subprocess.run(argv, capture_output=True, text=True, check=True)
    return r.stdout.splitlines()


def info_hashes(lines):
    """The v1 and v2 info hashes of make_torrent's output."""
    return [line.split()[-1] for line in lines if line.startswith("info hash ")]


class Seeder:
    """A python3-libtorrent seed of `torrent` whose data is `data` (bytes), on 127.0.0.1.

    The torrent is checked against `data` (so the seeder has what it announces) unless
    `claim_all` is set: then it starts in seed mode and announces every piece whatever its file
    holds, as a lying peer would. After start, `corrupt(offsets)` alters its file: it then serves
    bad bytes for pieces it announced good. With `choke_all`, it never unchokes a peer (nor
    offers an allowed-fast piece), as a streaming agent does. Trackers come from the torrent;
    `web_seeds` off. `settings`: more libtorrent settings for its session (a DHT, say)."""

    def __init__(self, torrent, data, workdir, claim_all=False, name="seeder", settings=None,
                 choke_all=False):
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.ti = lt.torrent_info(torrent)
        self.path = os.path.join(self.dir, self.ti.files().file_path(0))
        with open(self.path, "wb") as f:
            f.write(data)
        self.port = free_port()
        self.session = lt.session({
            "listen_interfaces": f"127.0.0.1:{self.port}", "enable_dht": False,
            "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
            "allow_multiple_connections_per_ip": True, "alert_mask": 0,
            "min_announce_interval": 5, **(settings or {})})
        if choke_all:
            self.session.apply_settings({"unchoke_slots_limit": 0, "allowed_fast_set_size": 0,
                                         "alert_mask": lt.alert.category_t.connect_notification})
            # Peers on loopback are in the "local" class, which ignores the unchoke slots.
            local = self.session.get_peer_class(lt.session.local_peer_class_id)
            local["ignore_unchoke_slots"] = False
            self.session.set_peer_class(lt.session.local_peer_class_id, local)
        atp = lt.add_torrent_params()
        atp.ti = self.ti
        atp.save_path = self.dir
        atp.url_seeds = []
        if claim_all:
            atp.flags |= lt.torrent_flags.seed_mode
        self.handle = self.session.add_torrent(atp)
        self.handle.remove_url_seed(self.ti.web_seeds()[0]["url"]) if self.ti.web_seeds() else None
        # Seeding, and known to its tracker (when the torrent names one): an agent started now
        # finds it in its first announce's answer.
        deadline = time.monotonic() + 30
        while not self.handle.status().is_seeding or not self._announced():
            if time.monotonic() > deadline:
                raise RuntimeError("the seeder did not check its file and announce it")
            time.sleep(0.05)

    def _announced(self):
        trackers = self.handle.trackers()
        return not trackers or any(t["verified"] for t in trackers)

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.port}"

    def corrupt(self, offsets):
        """Flips the byte at each offset of the seeder's file (after it checked it)."""
        with open(self.path, "r+b") as f:
            for off in offsets:
                f.seek(off)
                b = f.read(1)
                f.seek(off)
                f.write(bytes([b[0] ^ 0xFF]))

    def peers_connected(self):
        """Peers that connected since the last call (counted with `choke_all` only)."""
        return sum(isinstance(a, lt.peer_connect_alert) for a in self.session.pop_alerts())

    def uploaded(self):
        return self.handle.status().total_payload_upload

    def close(self):
        self.session.pause()
        del self.handle
        del self.session


class Leecher:
    """A python3-libtorrent peer of `torrent` without trackers or web seeds: its one source is
    the peer poll() connects it to. Counts the pieces it saw that peer announce, and the pieces
    that failed their hash check; notes whether that peer ever unchoked it."""

    def __init__(self, torrent, workdir):
        os.makedirs(workdir, exist_ok=True)
        self.session = lt.session({
            "listen_interfaces": f"127.0.0.1:{free_port()}", "enable_dht": False,
            "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
            "allow_multiple_connections_per_ip": True, "enable_outgoing_utp": False,
            "alert_mask": lt.alert.category_t.status_notification})
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(torrent)
        atp.save_path = workdir
        atp.url_seeds = []
        self.handle = self.session.add_torrent(atp)
        self.handle.replace_trackers([])
        for w in atp.ti.web_seeds():
            self.handle.remove_url_seed(w["url"])
        self.max_pieces_seen = 0
        self.unchoked = False  # the peer unchoked us at some poll
        self.hash_failures = 0

    def poll(self, endpoint):
        if endpoint and not self.handle.get_peer_info():
            self.handle.connect_peer(endpoint)
        for p in self.handle.get_peer_info():
            self.max_pieces_seen = max(self.max_pieces_seen, sum(1 for b in p.pieces if b))
            if not p.flags & lt.peer_info.connecting and not p.flags & lt.peer_info.remote_choked:
                self.unchoked = True
        for a in self.session.pop_alerts():
            if isinstance(a, lt.hash_failed_alert):
                self.hash_failures += 1

    def downloaded(self):
        return self.handle.status().total_payload_download

    def close(self):
        self.session.pause()
        del self.handle
        del self.session


class Origin:
    """The image's origin on 127.0.0.1: GET (with `Range: bytes=N-M` answered 206) of `files`
    ({path: bytes}), each connection limited to `rate` bytes per second when given, each 206
    carrying at most `max_range` bytes when given (as some CDNs cap a range); with `ranges=False`
    every GET gets the whole file (200), Range or not; with `stall_after`, the first answer to
    reach that many body bytes sends nothing more until close (a stuck origin); with
    `corrupt_once`, the first answer holding that offset sends its byte flipped. `served` counts
    the body bytes actually written to the sockets, per path; `most_at_once` the most bodies of
    a path being sent at the same time."""

    def __init__(self, files, rate=None, max_range=None, ranges=True, stall_after=None,
                 corrupt_once=None):
        self.files = dict(files)
        self.corrupt_once = corrupt_once  # the first answer that holds this offset has it wrong
        self.stall_after = stall_after  # the first answer sends this many bytes, then nothing
        self.stalled = threading.Event()
        self.served_at_stall = {}  # `served` when the answer stalled
        self.closing = threading.Event()
        self.rate = rate
        self.max_range = max_range
        self.ranges = ranges
        self.served = {p: 0 for p in self.files}
        self.sending = {}
        self.most_at_once = {}
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 (http.server's naming)
                path = self.path.split("?")[0]
                body = owner.files.get(path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end = 0, len(body)
                rng = self.headers.get("Range", "")
                if owner.ranges and rng.startswith("bytes=") and "," not in rng:
                    first, _, last = rng[6:].partition("-")
                    start = int(first)
                    end = min(int(last) + 1, len(body)) if last else len(body)
                    if owner.max_range:
                        end = min(end, start + owner.max_range)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(end - start))
                self.end_headers()
                pos = start
                began = time.monotonic()
                with owner.lock:
                    owner.sending[path] = owner.sending.get(path, 0) + 1
                    owner.most_at_once[path] = max(owner.most_at_once.get(path, 0),
                                                   owner.sending[path])
                try:
                    while pos < end:
                        if owner.stall_after is not None and pos - start >= owner.stall_after \
                                and not owner.stalled.is_set():
                            with owner.lock:
                                owner.served_at_stall = dict(owner.served)
                            owner.stalled.set()
                            owner.closing.wait()  # a stuck origin: the connection stays open
                            break
                        n = min(16 << 10, end - pos)
                        chunk = body[pos:pos + n]
                        with owner.lock:
                            bad = owner.corrupt_once
                            if bad is not None and pos <= bad < pos + n:
                                owner.corrupt_once = None
                                chunk = bytearray(chunk)
                                chunk[bad - pos] ^= 0xFF
                        self.wfile.write(chunk)
                        pos += n
                        with owner.lock:
                            owner.served[path] += n
                        if owner.rate:
                            ahead = (pos - start) / owner.rate - (time.monotonic() - began)
                            if ahead > 0:
                                time.sleep(ahead)  # pacing, not synchronisation
                except OSError:
                    self.close_connection = True
                finally:
                    with owner.lock:
                        owner.sending[path] -= 1

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 64

            def handle_error(self, request, client_address):
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def origin_bytes(server, path, size):
    """Bytes the FaultServer was asked for on `path`: the sum of the ranges requested (a whole
    body for a request without Range)."""
    total = 0
    for e in server.log:
        if e["path"].split("?")[0] != path:
            continue
        rng = e["range"]
        if not rng or not rng.startswith("bytes="):
            total += size
            continue
        first, _, last = rng[len("bytes="):].partition("-")
        first = int(first)
        last = int(last) if last else size - 1
        total += min(last, size - 1) - first + 1
    return total


__all__ = ["Tracker", "Seeder", "Leecher", "Origin", "make_torrent", "info_hashes", "origin_bytes"]
