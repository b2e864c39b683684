"""The swarm (docs/pipeline.md, "Swarm downloads") with real parts on 127.0.0.1: `byoi-agent
torrent` read back by python3-libtorrent, and `deploy` of a manifest with `torrent` against an
origin that counts what it served, opentracker, and python3-libtorrent seeders, honest or not.
Each deploy writes a regular file standing for a disk, pre-filled with random bytes, and
compares it with the image (or with its old bytes when the job must leave it untouched).

Run by CTest with BYOI_AGENT set; /usr/bin/python3 only.
"""
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import libtorrent as lt  # noqa: E402

from conformance_util import loop_device, qemu_img, random_file, read  # noqa: E402
from daemon_harness import Daemon  # noqa: E402
from fetch_servers import (AGENT, FaultServer, MemoryCgroup, Route, free_port,  # noqa: E402
                           mbr_image, run_deploy, self_signed_cert)
from proxy_servers import NginxCache  # noqa: E402
from swarm_util import (Leecher, Origin, Seeder, Tracker, info_hashes,  # noqa: E402
                        make_torrent, origin_bytes)

MiB = 1 << 20
SIZE = 16 * MiB
PIECE = 256 << 10
# What byoi-swarm says when libtorrent hashes its storage to find the pieces it holds.
HASHING = "byoi-swarm: hashing the storage to find the pieces it holds"
# The auto stream test: an image over the RAM budget.
BIG = 160 * MiB
BUDGET = 96 * MiB


class TorrentCommand(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="byoi-swarm-")
        self.image = os.path.join(self.dir, "debian.raw")
        self.data = mbr_image(3 * MiB + 12345, seed=7)
        with open(self.image, "wb") as f:
            f.write(self.data)

    def tearDown(self):
        shutil.rmtree(self.dir)

    def test_the_torrent_describes_the_image_its_web_seed_and_trackers(self):
        out = os.path.join(self.dir, "out.torrent")
        lines = make_torrent(self.image, "https://images.example.net/debian.raw", out,
                             trackers=["http://tracker.example.net:6969/announce",
                                       "udp://tracker2.example.net:6969/announce"],
                             piece_length=64 << 10)
        ti = lt.torrent_info(out)
        v1 = str(ti.info_hashes().v1)
        self.assertEqual(lines, [out, "info hash v1 " + v1,
                                 "info hash v2 " + str(ti.info_hashes().v2),
                                 "magnet:?xt=urn:btih:" + v1])
        self.assertEqual(ti.num_files(), 1)
        self.assertEqual(ti.files().file_path(0), "debian.raw")
        self.assertEqual(ti.total_size(), len(self.data))
        self.assertEqual(ti.piece_length(), 64 << 10)
        hashes = [bytes(ti.hash_for_piece(i)) for i in range(ti.num_pieces())]
        expected = [hashlib.sha1(self.data[i:i + (64 << 10)]).digest()
                    for i in range(0, len(self.data), 64 << 10)]
        self.assertEqual(hashes, expected)
        self.assertEqual([w["url"] for w in ti.web_seeds()],
                         ["https://images.example.net/debian.raw"])
        self.assertEqual([(t.url, t.tier) for t in ti.trackers()],
                         [("http://tracker.example.net:6969/announce", 0),
                          ("udp://tracker2.example.net:6969/announce", 1)])

    def test_the_output_defaults_to_the_image_name_dot_torrent(self):
        r = subprocess.run([AGENT, "torrent", self.image, "--web-seed", "http://h.example/i.raw"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.splitlines()[0], self.image + ".torrent")
        self.assertEqual(lt.torrent_info(self.image + ".torrent").total_size(), len(self.data))

    def test_bad_inputs_have_clear_answers(self):
        empty = os.path.join(self.dir, "empty.raw")
        open(empty, "wb").close()
        missing = os.path.join(self.dir, "missing.raw")
        cases = [
            ([missing, "--web-seed", "http://h.example/i.raw"], 2,
             f"byoi-agent torrent: {missing}: No such file or directory\n"),
            ([empty, "--web-seed", "http://h.example/i.raw"], 2,
             f"byoi-agent torrent: {empty}: an empty file\n"),
            ([self.dir, "--web-seed", "http://h.example/i.raw"], 2,
             f"byoi-agent torrent: {self.dir}: not a regular file\n"),
            ([self.image, "--web-seed", "ftp://h.example/i.raw"], 2,
             "byoi-agent torrent: --web-seed: scheme must be http or https\n"),
            ([self.image, "--web-seed", "http:///i.raw"], 2,
             "byoi-agent torrent: --web-seed: no host\n"),
            ([self.image, "--web-seed", "http://h.example/i.raw", "--tracker", "tracker:6969"], 2,
             "byoi-agent torrent: --tracker: tracker:6969 is not an http, https or udp URL\n"),
            ([self.image, "--web-seed", "http://h.example/i.raw", "--piece-length", "1000"], 2,
             "byoi-agent torrent: the piece length must be a power of two of at least 16 KiB\n"),
            ([self.image, "--web-seed", "http://h.example/i.raw", "--output",
              "/nonexistent/x.torrent"], 1,
             "byoi-agent torrent: writing the torrent /nonexistent/x.torrent: writing "
             "/nonexistent/x.torrent: No such file or directory\n"),
        ]
        for args, code, message in cases:
            with self.subTest(args=args):
                r = subprocess.run([AGENT, "torrent"] + args, capture_output=True, text=True)
                self.assertEqual((r.returncode, r.stderr), (code, message))
                self.assertFalse(os.path.exists(missing + ".torrent"))


class SwarmDeploy(unittest.TestCase):
    """deploy with a manifest's `torrent`, ram mode, --seed-time 0."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="byoi-swarm-")
        # An image of this run's own (its info hash too): swarm tests running at the same time on
        # this machine find each other's peers through Local Service Discovery.
        self.data = mbr_image(SIZE, seed=11 + 1000 * os.getpid())
        self.sha = hashlib.sha256(self.data).hexdigest()
        self.server = FaultServer()
        self.tracker = Tracker()
        self.seeders = []
        self.disk = os.path.join(self.dir, "disk.img")
        self.old = random.Random(3).randbytes(SIZE + 4 * MiB)
        with open(self.disk, "wb") as f:
            f.write(self.old)

    def tearDown(self):
        for s in self.seeders:
            s.close()
        self.tracker.close()
        self.server.close()
        shutil.rmtree(self.dir)

    def publish(self, route, torrent_data=None, name="image.raw", server=None, piece=PIECE):
        """Serves `route` at /NAME and a torrent of `torrent_data` (default: the image) at
        /NAME.torrent, the tracker in it, on `server` (default: self.server); returns (image URL,
        torrent URL, torrent path)."""
        server = server or self.server
        url = server.add("/" + name, route)
        src = os.path.join(self.dir, name)
        with open(src, "wb") as f:
            f.write(self.data if torrent_data is None else torrent_data)
        path = os.path.join(self.dir, name + ".torrent")
        lines = make_torrent(src, url, path, trackers=[self.tracker.announce],
                             piece_length=piece)
        self.tracker.start(info_hashes(lines))
        with open(path, "rb") as f:
            turl = server.add("/" + name + ".torrent", Route(f.read()))
        return url, turl, path

    def deploy(self, url, torrent, sha=None, *extra, headers=None, stall_timeout=20):
        manifest = {"URL": url, "type": "raw", "checkSum": sha or self.sha,
                    "checkSumType": "sha256", "torrent": torrent}
        if headers:
            manifest["httpHeader"] = [{"key": k, "value": v} for k, v in headers.items()]
        # Loopback only: no Local Service Discovery multicast leaves this machine.
        return run_deploy(self.dir, manifest, "--disk", self.disk, "--seed-time", "0",
                          "--swarm-listen", "127.0.0.1:0", "--stall-timeout", str(stall_timeout),
                          *extra,
                          dry_run=False, timeout=120)

    def disk_bytes(self):
        with open(self.disk, "rb") as f:
            return f.read()

    def assert_installed(self, run):
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        self.assertEqual(run.status["status"], "done")
        self.assertEqual(run.status["checksum"], self.sha)
        self.assertEqual(self.disk_bytes()[:SIZE], self.data)

    def assert_untouched(self, run, message):
        self.assertEqual(run.returncode, 1, run.stderr[-3000:])
        self.assertEqual(run.status["status"], "error")
        self.assertEqual(run.status["message"], message)
        self.assertEqual(self.disk_bytes(), self.old)

    def test_a_swarm_of_one_downloads_from_the_web_seed_and_verifies(self):
        url, turl, _ = self.publish(Route(self.data))
        run = self.deploy(url, turl)
        self.assert_installed(run)
        comment = run.step("download")["comment"]
        self.assertRegex(comment, r"^16 MiB in \d+ s through the swarm: 0 B from peers, "
                                  r"16 MiB from the web seed$")
        # The image once, in Range requests (the web seed is the helper's own: no piece twice).
        self.assertEqual(origin_bytes(self.server, "/image.raw", SIZE), SIZE)
        # The agent's fresh buffer holds no piece: libtorrent is told so, it hashes nothing
        # (a magnet link's storage is hashed once its metadata arrived: the test below).
        self.assertNotIn(HASHING, run.stderr)
        self.assertTrue(all(r.startswith("bytes=") for r in self.server.ranges("/image.raw")))

    def publish_counted(self, rate, max_range=None, piece=PIECE, ranges=True):
        """The image on an Origin that counts what it sends, at `rate` bytes per second per
        connection, `max_range` bytes per 206 at most, or ignoring Range; its torrent (of
        `piece`-byte pieces) beside it. Returns (origin, image URL, torrent URL, path)."""
        src = os.path.join(self.dir, "image.raw")
        with open(src, "wb") as f:
            f.write(self.data)
        origin = Origin({"/image.raw": self.data}, rate=rate, max_range=max_range, ranges=ranges)
        self.addCleanup(origin.close)
        path = os.path.join(self.dir, "image.raw.torrent")
        lines = make_torrent(src, origin.url("/image.raw"), path,
                             trackers=[self.tracker.announce], piece_length=piece)
        self.tracker.start(info_hashes(lines))
        with open(path, "rb") as f:
            origin.files["/image.raw.torrent"] = f.read()
        origin.served["/image.raw.torrent"] = 0
        return origin, origin.url("/image.raw"), origin.url("/image.raw.torrent"), path

    def test_an_origin_that_ignores_range_sends_the_image_once(self):
        # Each answer is the whole image from byte 0: one answer brings every piece, in order
        # (a request for each run would have the origin send the image from its start each time).
        # 4 MB/s: after 2 s alone, the agent would open more connections.
        origin, url, turl, _ = self.publish_counted(4_000_000, ranges=False)
        run = self.deploy(url, turl)
        self.assert_installed(run)
        self.assertEqual(origin.served["/image.raw"], SIZE)
        # Stream mode too (SwarmStreamDeploy has one with a window smaller than the image).
        origin, url, turl, _ = self.publish_counted(None, ranges=False)
        self.assert_installed(self.deploy(url, turl, None, "--write-mode", "stream"))
        self.assertEqual(origin.served["/image.raw"], SIZE)

    def test_an_origin_that_caps_its_ranges_is_asked_again_for_the_rest(self):
        # A 206 shorter than asked is a complete answer, not an error to back off from: the
        # image comes once, with no failed request in the log.
        # 4 MB/s: after 2 s alone, the agent asks for runs of 4 MiB and more.
        origin, url, turl, _ = self.publish_counted(4_000_000, max_range=PIECE + 1000)
        run = self.deploy(url, turl)
        self.assert_installed(run)
        # Each answer's bytes past its first piece are all that is taken twice.
        self.assertLessEqual(origin.served["/image.raw"], SIZE + (SIZE // PIECE) * 1000)
        self.assertGreater(origin.served["/image.raw"], SIZE)
        self.assertNotIn("byoi-swarm: web seed:", run.stderr.replace(
            "byoi-swarm: web seed: fetched", ""))

    def test_the_web_seed_receives_at_most_64_mib_of_pieces_at_once(self):
        # 32 MiB pieces, 16 connections: each request holds one whole piece while it arrives, so
        # two at once, not four (the image's pieces) or sixteen.
        self.data = mbr_image(4 * 32 * MiB, seed=13 + 1000 * os.getpid())
        self.sha = hashlib.sha256(self.data).hexdigest()
        with open(self.disk, "r+b") as f:
            f.truncate(len(self.data) + 4 * MiB)
        origin, url, turl, _ = self.publish_counted(16_000_000, piece=32 * MiB)
        run = self.deploy(url, turl, None, "--connections", "16")
        self.assertEqual((run.returncode, run.status["status"]), (0, "done"), run.stderr[-3000:])
        self.assertEqual(origin.served["/image.raw"], len(self.data))
        self.assertEqual(origin.most_at_once["/image.raw"], 2)

    def test_a_seeder_spares_the_origin(self):
        # The origin gives 2 MB/s per connection; the peer on loopback is much faster.
        origin, url, turl, path = self.publish_counted(2_000_000)
        self.seeders.append(Seeder(path, self.data, self.dir))
        run = self.deploy(url, turl)
        self.assert_installed(run)
        served = origin.served["/image.raw"]
        self.assertLess(served, SIZE // 2, run.step("download")["comment"])
        self.assertGreater(self.seeders[0].uploaded(), SIZE // 2)
        swarm = run.status["swarm"]
        self.assertGreater(swarm["fromPeers"], SIZE // 2)
        self.assertEqual(swarm["fromPeers"] + swarm["fromWebSeed"], SIZE)
        self.assertEqual((swarm["hashFailures"], swarm["seeding"]), (0, True))
        self.assertRegex(run.step("download")["comment"],
                         r"through the swarm: \d+(\.\d)? MiB from peers, ")

    def start_seeding_agent(self, url, turl, *extra):
        """Agent A: deploys from the origin alone, then seeds for up to 60 s after done (the
        test's cleanup stops it). Returns (its process, the bytes the origin sent it) once its
        status file says done."""
        a_dir = os.path.join(self.dir, "a")
        os.makedirs(a_dir)
        a_disk = os.path.join(a_dir, "disk.img")
        with open(a_disk, "wb") as f:
            f.write(self.old)
        manifest = os.path.join(a_dir, "manifest.json")
        status = os.path.join(a_dir, "status.json")
        with open(manifest, "w") as f:
            json.dump({"URL": url, "type": "raw", "checkSum": self.sha, "checkSumType": "sha256",
                       "torrent": turl}, f)
        a = subprocess.Popen([AGENT, "deploy", "--manifest", manifest, "--disk", a_disk,
                              "--status-file", status, "--seed-time", "60", "--swarm-listen",
                              "127.0.0.1:0", *extra], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: a.poll() is None and (a.terminate(), a.wait()))
        deadline = time.monotonic() + 60
        while True:  # A's status file says done: it seeds from now on
            self.assertLess(time.monotonic(), deadline, "agent A did not finish")
            self.assertIsNone(a.poll(), "agent A ended before seeding")
            try:
                with open(status) as f:
                    if json.load(f)["status"] == "done":
                        return a
            except (OSError, ValueError):
                pass
            time.sleep(0.05)

    def test_a_done_agent_seeds_for_its_seed_time(self):
        # Agent B, started once A is done, takes the image from A, which is still seeding.
        origin, url, turl, _ = self.publish_counted(4_000_000)
        a = self.start_seeding_agent(url, turl)
        a_served = origin.served["/image.raw"]
        self.assertGreaterEqual(a_served, SIZE)
        run = self.deploy(url, turl)
        self.assert_installed(run)
        self.assertIsNone(a.poll(), "agent A stopped seeding before its seed time")
        self.assertLess(origin.served["/image.raw"] - a_served, SIZE // 2)
        self.assertGreater(run.status["swarm"]["fromPeers"], SIZE // 2)

    def test_the_upload_rate_caps_what_a_seeding_agent_sends(self):
        # A sends at most 4 MB/s; the origin gives B 1 MB/s. Whatever B took from A took at least
        # that long (a lower bound only: the machine may be slower, never faster).
        rate = 4_000_000
        origin, url, turl, _ = self.publish_counted(1_000_000)
        self.start_seeding_agent(url, turl, "--upload-rate", str(rate))
        run = self.deploy(url, turl)
        self.assert_installed(run)
        from_a = run.status["swarm"]["fromPeers"]
        self.assertGreater(from_a, SIZE // 2)
        self.assertGreaterEqual(run.step("download")["seconds"], 0.8 * from_a / rate)

    def test_the_web_seeds_userinfo_never_reaches_the_log_or_the_status(self):
        # The web seed's first answer is a 404, which the helper reports (and retries): the
        # report never holds the URL, whose userinfo goes to the origin as Basic credentials.
        url, turl, _ = self.publish(Route(self.data, fail_first=[404]))
        url = url.replace("http://", "http://user:s3cr3t-pw@")
        run = self.deploy(url, turl)
        self.assert_installed(run)
        self.assertNotIn("s3cr3t-pw", run.stderr + run.stdout + json.dumps(run.status))
        self.assertIn("byoi-swarm: web seed: the origin answered HTTP 404", run.stderr)
        images = [e for e in self.server.log if e["path"] == "/image.raw"]
        self.assertGreater(len(images), 1)
        for e in images:
            self.assertEqual(e["headers"].get("authorization"), "Basic dXNlcjpzM2NyM3QtcHc=")

    def test_the_origin_sees_the_manifests_headers_on_every_request(self):
        # A lying seeder makes pieces fail their hash check: they come again, from the origin
        # among others, with the manifest's headers like every other request (the web seed is
        # the helper's: nothing is banned and taken back without them, as libtorrent's was).
        url, turl, path = self.publish(Route(self.data, rate=4_000_000,
                                             require=("X-Image-Token", "t0ken")))
        bad = Seeder(path, self.data, self.dir)
        self.seeders.append(bad)
        bad.corrupt([i * 2 * PIECE + 1000 for i in range(8)])
        run = self.deploy(url, turl, headers={"X-Image-Token": "t0ken"})
        self.assert_installed(run)
        self.assertGreater(run.status["swarm"]["hashFailures"], 0)
        images = [e for e in self.server.log if e["path"] == "/image.raw"]
        self.assertGreater(len(images), 1)
        for e in images:
            self.assertEqual(e["headers"].get("x-image-token"), "t0ken")
        self.assertEqual(run.status["swarm"]["fromPeers"] + run.status["swarm"]["fromWebSeed"],
                         SIZE)

    def test_a_redirect_to_another_origin_gets_no_headers(self):
        other = FaultServer()
        self.addCleanup(other.close)
        target = other.add("/image.raw", Route(self.data))
        url, turl, _ = self.publish(Route(redirect=target))
        run = self.deploy(url, turl, headers={"X-Image-Token": "t0ken"})
        self.assert_installed(run)
        self.assertEqual(origin_bytes(other, "/image.raw", SIZE), SIZE)
        first = [e for e in self.server.log if e["path"] == "/image.raw"]
        then = [e for e in other.log if e["path"] == "/image.raw"]
        self.assertGreater(len(first), 0)
        self.assertEqual(len(first), len(then))  # each request starts at the manifest's URL
        for e in first:
            self.assertEqual(e["headers"].get("x-image-token"), "t0ken")
        for e in then:
            self.assertNotIn("x-image-token", e["headers"])

    def test_an_https_web_seed_is_never_redirected_to_http(self):
        tls = FaultServer(tls=self_signed_cert(self.dir))
        self.addCleanup(tls.close)
        plain = self.server.add("/image.raw", Route(self.data))
        url, turl, _ = self.publish(Route(redirect=plain), server=tls)
        run = self.deploy(url, turl, None, "--ca-bundle", os.path.join(self.dir, "cert.pem"),
                          stall_timeout=3)
        self.assert_untouched(run, f"Could not download image located: {url}.")
        self.assertIn("byoi-swarm: web seed: redirect refused: ", run.stderr)
        self.assertEqual(self.server.ranges("/image.raw"), [])
        self.assertGreater(len(tls.ranges("/image.raw")), 0)

    def test_the_web_seed_goes_through_the_agents_proxy(self):
        # --proxy with credentials, handed to the helper in its web seed file (never on its
        # command line) and never shown: the web seed's Range requests go through it.
        workdir = tempfile.mkdtemp(prefix="byoi-swarm-proxy-")
        self.addCleanup(shutil.rmtree, workdir, True)
        os.chmod(workdir, 0o755)  # nginx's worker runs as nobody
        cache = NginxCache(workdir, name="auth-cache", auth=("byoi", "pr0xy-pw"))
        self.addCleanup(cache.close)
        url, turl, _ = self.publish(Route(self.data))
        run = self.deploy(url, turl, None, "--proxy", cache.url("byoi:pr0xy-pw@"))
        self.assert_installed(run)
        self.assertEqual(run.status["swarm"]["fromWebSeed"], SIZE)
        through = [r for r in cache.requests() if r[1].startswith(f"GET {url} ")]
        self.assertGreater(len(through), 0)
        self.assertTrue(all(status in ("200", "206") for status, _, _ in through))
        self.assertNotIn("pr0xy-pw", run.stderr + run.stdout + json.dumps(run.status))

    def test_the_manifests_url_is_the_only_web_seed(self):
        # The torrent's url-list names another server: the agent never asks it.
        other = Origin({"/image.raw": self.data})
        self.addCleanup(other.close)
        url = self.server.add("/image.raw", Route(self.data))
        src = os.path.join(self.dir, "image.raw")
        with open(src, "wb") as f:
            f.write(self.data)
        path = os.path.join(self.dir, "image.raw.torrent")
        lines = make_torrent(src, other.url("/image.raw"), path, piece_length=PIECE)
        self.tracker.start(info_hashes(lines))
        with open(path, "rb") as f:
            turl = self.server.add("/image.raw.torrent", Route(f.read()))
        run = self.deploy(url, turl)
        self.assert_installed(run)
        self.assertEqual(other.served["/image.raw"], 0)
        self.assertGreaterEqual(origin_bytes(self.server, "/image.raw", SIZE), SIZE)

    def test_a_magnet_link_takes_the_metadata_from_the_seeder(self):
        origin, url, _, path = self.publish_counted(2_000_000)
        self.seeders.append(Seeder(path, self.data, self.dir))
        ti = lt.torrent_info(path)
        magnet = (f"magnet:?xt=urn:btih:{ti.info_hashes().v1}"
                  f"&tr={self.tracker.announce}")
        run = self.deploy(url, magnet)
        # The metadata came from the seeder (the web seed cannot give it), and most pieces.
        self.assert_installed(run)
        self.assertLess(origin.served["/image.raw"], SIZE // 2)
        self.assertGreater(run.status["swarm"]["fromPeers"], SIZE // 2)
        self.assertIn(HASHING, run.stderr)

    def test_a_seeder_serving_corrupt_pieces_is_banned_and_the_image_verifies(self):
        url, turl, path = self.publish(Route(self.data, rate=4_000_000))
        bad = Seeder(path, self.data, self.dir)
        self.seeders.append(bad)
        # One byte in each of 8 pieces, after the seeder checked its file: it announces them
        # good and serves them bad.
        bad.corrupt([i * 2 * PIECE + 1000 for i in range(8)])
        run = self.deploy(url, turl)
        self.assert_installed(run)
        self.assertRegex(run.step("download")["comment"],
                         r"; \d+ piece\(s\) failed their hash check, their senders banned$")
        self.assertGreater(run.status["swarm"]["hashFailures"], 0)

    def test_a_seeder_announcing_pieces_it_does_not_have_changes_nothing(self):
        url, turl, path = self.publish(Route(self.data, rate=4_000_000))
        # Seed mode: it claims every piece; its file holds zeros.
        self.seeders.append(Seeder(path, bytes(SIZE), self.dir, claim_all=True))
        run = self.deploy(url, turl)
        self.assert_installed(run)

    def test_a_peer_announcing_every_piece_and_never_unchoking_changes_nothing(self):
        # It holds nothing the agent can get (it chokes everyone, like a streaming agent): its
        # pieces are no reason to leave them to it, the web seed brings them.
        url, turl, path = self.publish(Route(self.data, rate=4_000_000))
        liar = Seeder(path, bytes(SIZE), self.dir, claim_all=True, choke_all=True)
        self.seeders.append(liar)
        run = self.deploy(url, turl)
        self.assert_installed(run)
        self.assertEqual(run.status["swarm"]["fromWebSeed"], SIZE)
        self.assertGreater(liar.peers_connected(), 0, "the agent never met the liar")

    def test_a_torrent_that_does_not_describe_the_web_seeds_bytes_fails_the_download(self):
        other = mbr_image(SIZE, seed=12 + 1000 * os.getpid())
        url, turl, _ = self.publish(Route(self.data), torrent_data=other)
        run = self.deploy(url, turl)
        self.assert_untouched(run, f"Could not download image located: {url}.")
        self.assertRegex(run.status["detail"],
                         r"^swarm: piece \d+ failed its hash check 3 times: the torrent does not "
                         r"match the image its web seed serves$")

    def test_a_swarm_serving_another_image_fails_the_checksum(self):
        # Everything agrees (torrent, web seed, seeder) on an image the manifest does not name.
        other = mbr_image(SIZE, seed=13 + 1000 * os.getpid())
        url = self.server.add("/other.raw", Route(other))
        src = os.path.join(self.dir, "other.raw")
        with open(src, "wb") as f:
            f.write(other)
        path = os.path.join(self.dir, "other.torrent")
        lines = make_torrent(src, url, path, trackers=[self.tracker.announce],
                             piece_length=PIECE)
        self.tracker.start(info_hashes(lines))
        with open(path, "rb") as f:
            turl = self.server.add("/other.torrent", Route(f.read()))
        self.seeders.append(Seeder(path, other, self.dir))
        run = self.deploy(url, turl)
        got = hashlib.sha256(other).hexdigest()
        self.assert_untouched(run, f"Bad sha256 for downloaded file, got: {got} while "
                                   f"expecting {self.sha}.")

    def test_a_torrent_url_that_fails_is_the_download_message(self):
        url = self.server.add("/image.raw", Route(self.data))
        turl = self.server.add("/image.raw.torrent", Route(status=404))
        run = self.deploy(url, turl)
        self.assert_untouched(run, f"Could not download image located: {url}.")
        self.assertIn("fetching the torrent", run.status["detail"])

    def test_a_torrent_url_that_is_not_a_torrent_is_the_download_message(self):
        url = self.server.add("/image.raw", Route(self.data))
        turl = self.server.add("/image.raw.torrent", Route(b"<html>not a torrent</html>"))
        run = self.deploy(url, turl)
        self.assert_untouched(run, f"Could not download image located: {url}.")
        self.assertIn("reading the .torrent", run.status["detail"])

    def test_a_torrent_of_pieces_over_64_mib_is_refused_before_the_first_write(self):
        # The web seed and libtorrent hold whole pieces while they arrive: not without bound.
        url, turl, _ = self.publish(Route(self.data), piece=128 * MiB)
        run = self.deploy(url, turl)
        self.assert_untouched(run, f"Could not download image located: {url}.")
        self.assertEqual(run.status["detail"], "swarm: the torrent's pieces are 134217728 bytes, "
                                               "more than the 67108864 taken")

    def test_a_torrent_larger_than_the_ram_budget_is_too_big(self):
        url, turl, _ = self.publish(Route(self.data))
        run = self.deploy(url, turl, None, "--memory-limit", "8M", "--write-mode", "ram")
        self.assert_untouched(run, "Could not download, raw image is too big to download in "
                                   "memory.")

    def test_a_helper_that_fails_leaves_no_work_directory(self):
        # The helper saves through a directory of its own (a symlink to the image's memfd) under
        # $TMPDIR; a failure ends it with _Exit, which runs no atexit handler.
        helper = os.path.join(os.path.dirname(os.path.realpath(AGENT)), "byoi-swarm")
        tmp = tempfile.mkdtemp(dir=self.dir)
        web_seed = os.path.join(self.dir, "web-seed")
        with open(web_seed, "w") as f:
            f.write("http://127.0.0.1:1/image.raw\n")
        torrent = os.path.join(self.dir, "bad.torrent")
        with open(torrent, "wb") as f:
            f.write(b"<html>not a torrent</html>")
        with open(os.path.join(self.dir, "image"), "w+b") as image:
            fd = image.fileno()
            run = subprocess.run([helper, "fetch", "--capacity", str(MiB), "--web-seed-file",
                                  web_seed, "--torrent", torrent],
                                 stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                 timeout=60, env=dict(os.environ, TMPDIR=tmp), close_fds=False,
                                 preexec_fn=lambda: os.dup2(fd, 3))
        self.assertEqual(run.returncode, 1, run.stderr)
        self.assertIn("error kind=invalid reading the .torrent: ", run.stdout)
        self.assertEqual(os.listdir(tmp), [])

    def test_a_cancel_stops_the_swarm_and_its_helper(self):
        origin, url, turl, _ = self.publish_counted(1_000_000)
        helper = os.path.join(os.path.dirname(os.path.realpath(AGENT)), "byoi-swarm")

        def helpers():
            found = []
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if os.readlink(f"/proc/{pid}/exe") == helper:
                        found.append(pid)
                except OSError:
                    pass
            return found

        def helper_runs(_):
            self.assertNotEqual(helpers(), [], "no helper while the swarm downloads")

        manifest = {"URL": url, "type": "raw", "checkSum": self.sha, "checkSumType": "sha256",
                    "torrent": turl}
        run = run_deploy(self.dir, manifest, "--disk", self.disk, "--swarm-listen",
                         "127.0.0.1:0", dry_run=False, signal_after=2, before_signal=helper_runs)
        self.assert_untouched(run, "Deployment cancelled.")
        self.assertLess(run.seconds, 5)
        self.assertEqual(helpers(), [])


DISK_BYTES = 64 * MiB
SECTOR_SIZES = (512, 4096)


class SwarmStreamDeploy(unittest.TestCase):
    """Stream mode through the swarm (docs/pipeline.md, "Swarm downloads"): onto loop devices of
    512- and 4096-byte sectors pre-filled with random bytes, a raw image and a qcow2 image from
    an origin that counts what it sends, a seeder holding the image file."""

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root (loop devices)")
        cls._tmp = tempfile.TemporaryDirectory(prefix="byoi-swarm-stream-", dir="/var/tmp")
        cls.dir = cls._tmp.name
        cls.images = {}  # name -> (bytes of the file, bytes of its virtual disk per qemu-img)
        # One MBR partition at LBA 256 of 2048 sectors: within the disk whether its sectors are
        # 512 or 4096 bytes, so the same images deploy onto both kinds of loop device.
        raw = bytearray(mbr_image(24 * MiB, seed=21))
        raw[446 + 8:446 + 16] = (256).to_bytes(4, "little") + (2048).to_bytes(4, "little")
        cls.images["image.raw"] = (bytes(raw), bytes(raw))
        disk = os.path.join(cls.dir, "qcow2-source.raw")
        random_file(disk, 40 * MiB, "swarm-stream-qcow2")
        subprocess.run(["sfdisk", "-q", disk], input="label: dos\nstart=256, size=2048, type=83\n",
                       text=True, check=True, capture_output=True)
        qcow2 = os.path.join(cls.dir, "image.qcow2")
        qemu_img("convert", "-f", "raw", "-O", "qcow2", disk, qcow2)
        virtual = os.path.join(cls.dir, "qcow2-virtual.raw")
        qemu_img("convert", "-f", "qcow2", "-O", "raw", qcow2, virtual)
        cls.images["image.qcow2"] = (read(qcow2), read(virtual))

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def setUp(self):
        self.seeders = []
        self.addCleanup(lambda: [s.close() for s in self.seeders])
        self.work = tempfile.mkdtemp(dir=self.dir)

    def publish(self, name, rate=2_000_000, torrent_data=None, seeder=True, piece=PIECE,
                **origin_args):
        """`name` on an Origin at `rate` bytes per second per connection (with `origin_args`),
        its torrent beside it (made from `torrent_data` when given), a seeder of it when asked.
        Returns (origin, image URL, torrent URL, torrent path)."""
        data = self.images[name][0]
        work = tempfile.mkdtemp(dir=self.work)
        src = os.path.join(work, name)
        with open(src, "wb") as f:
            f.write(data if torrent_data is None else torrent_data)
        origin = Origin({"/" + name: data}, rate=rate, **origin_args)
        self.addCleanup(origin.close)
        tracker = Tracker()
        self.addCleanup(tracker.close)
        path = src + ".torrent"
        lines = make_torrent(src, origin.url("/" + name), path, trackers=[tracker.announce],
                             piece_length=piece)
        tracker.start(info_hashes(lines))
        with open(path, "rb") as f:
            origin.files["/" + name + ".torrent"] = f.read()
        origin.served["/" + name + ".torrent"] = 0
        if seeder:
            self.seeders.append(Seeder(path, data, work))
        return origin, origin.url("/" + name), origin.url("/" + name + ".torrent"), path

    def manifest(self, name, url, turl, checksum=None):
        data = self.images[name][0]
        return {"URL": url, "type": name.rsplit(".", 1)[-1], "checkSumType": "sha256",
                "checkSum": checksum or hashlib.sha256(data).hexdigest(), "torrent": turl}

    def fresh_disk(self, sector_size, seed="disk"):
        """A loop device over DISK_BYTES of random bytes (the same for the same seed)."""
        backing = os.path.join(self.work, f"{seed}-{sector_size}-{time.monotonic_ns()}.img")
        random_file(backing, DISK_BYTES, f"{seed}{sector_size}")
        return self.enterContext(loop_device(backing, sector_size))

    def deploy(self, manifest, disk, *extra, cgroup=None, listen="127.0.0.1:0", seed_time=0):
        """Returns (exit code, final status, stderr)."""
        run = run_deploy(tempfile.mkdtemp(dir=self.work), manifest, "--disk", disk,
                         "--seed-time", str(seed_time), "--swarm-listen", listen,
                         "--stall-timeout", "20",
                         *extra, dry_run=False, timeout=180, cgroup=cgroup)
        return run.returncode, run.status, run.stderr

    def step(self, status, name):
        return next(p for p in status["progress"] if p["step"] == name)

    def assertInstalled(self, result, name, disk):
        code, status, stderr = result
        self.assertEqual(code, 0, stderr[-3000:])
        self.assertEqual(status["status"], "done")
        virtual = self.images[name][1]
        self.assertTrue(read(disk, 0, len(virtual)) == virtual, "the disk differs from qemu-img's")
        return status

    def assertFailed(self, result, message):
        code, status, stderr = result
        self.assertEqual(code, 1, stderr[-3000:])
        self.assertEqual((status["status"], status["message"]), ("error", message), stderr[-3000:])
        return status

    def assertUnbootable(self, dev):
        zeros = bytes(MiB)
        self.assertEqual(read(dev, 0, MiB), zeros, "first MiB not zeroed")
        self.assertEqual(read(dev, DISK_BYTES - MiB, MiB), zeros, "last MiB not zeroed")

    # --- what lands ----------------------------------------------------------------------------

    def test_stream_mode_through_the_swarm_writes_what_ram_mode_writes(self):
        for name in ("image.raw", "image.qcow2"):
            origin, url, turl, _ = self.publish(name)
            size = len(self.images[name][0])
            for ss in SECTOR_SIZES:
                with self.subTest(image=name, sector_size=ss):
                    disks = {}
                    for mode in ("stream", "ram"):
                        before = origin.served["/" + name]
                        disks[mode] = self.fresh_disk(ss, seed="same")
                        status = self.assertInstalled(
                            self.deploy(self.manifest(name, url, turl), disks[mode],
                                        "--write-mode", mode), name, disks[mode])
                        self.assertIn(f"{mode} mode: --write-mode {mode}",
                                      self.step(status, "verify")["comment"])
                        self.assertRegex(self.step(status, "download")["comment"],
                                         r" through the swarm: \d+(\.\d)? MiB from peers, ")
                        # The seeder spares the origin.
                        self.assertLess(origin.served["/" + name] - before, size // 2)
                        self.assertGreater(status["swarm"]["fromPeers"], size // 2)
                        self.assertEqual(status["swarm"]["fromPeers"] +
                                         status["swarm"]["fromWebSeed"], size)
                        if mode == "stream":
                            # Nothing whole to seed, nothing sent (docs/pipeline.md).
                            self.assertEqual((status["swarm"]["seeding"],
                                              status["swarm"]["uploaded"]), (False, 0))
                            self.assertEqual(status["warnings"], [])
                    self.assertTrue(read(disks["stream"]) == read(disks["ram"]),
                                    "stream mode's disk differs from ram mode's")

    def test_auto_streams_an_image_over_the_budget_through_the_swarm_within_it(self):
        cgroup = MemoryCgroup()
        self.addCleanup(cgroup.close)
        if cgroup.peak() is None:
            self.skipTest("no memory cgroup on this machine")
        name = "big.raw"
        data = mbr_image(BIG, seed=22)
        self.images[name] = (data, data)
        self.addCleanup(self.images.pop, name)
        origin, url, turl, _ = self.publish(name, rate=8_000_000)
        disk = os.path.join(self.work, "big-disk.img")
        with open(disk, "wb") as f:
            f.truncate(BIG + 16 * MiB)
        status = self.assertInstalled(
            self.deploy(self.manifest(name, url, turl), disk, "--memory-limit", str(BUDGET),
                        cgroup=cgroup), name, disk)
        self.assertIn("stream mode: the image does not fit the RAM budget",
                      self.step(status, "verify")["comment"])
        peak = cgroup.peak()
        print(f"\n{BIG // MiB} MiB image through the swarm, --memory-limit {BUDGET // MiB}M: "
              f"peak {peak / MiB:.1f} MiB; {origin.served['/' + name] / MiB:.1f} MiB from the "
              f"origin", file=sys.stderr)
        self.assertLess(peak, BUDGET)
        self.assertLess(origin.served["/" + name], BIG // 2)

    def test_a_magnet_link_streams_with_the_metadata_from_the_seeder(self):
        name = "image.raw"
        origin, url, _, path = self.publish(name)
        ti = lt.torrent_info(path)
        magnet = f"magnet:?xt=urn:btih:{ti.info_hashes().v1}&tr={next(iter(ti.trackers())).url}"
        dev = self.fresh_disk(4096)
        status = self.assertInstalled(
            self.deploy(self.manifest(name, url, magnet), dev, "--write-mode", "stream"), name,
            dev)
        self.assertIn("stream mode: --write-mode stream", self.step(status, "verify")["comment"])
        self.assertLess(origin.served["/" + name], len(self.images[name][0]) // 2)

    # --- what a peer gets from a streaming agent ------------------------------------------------

    def test_a_peer_never_gets_a_piece_from_a_streaming_agent(self):
        # The only source of a leecher is the streaming agent, which sends HAVEs as pieces pass
        # and punches them out of RAM once written: it must send nothing, never zeros.
        name = "image.raw"
        _, url, turl, path = self.publish(name, rate=6_000_000, seeder=False)
        port = free_port()
        leecher = Leecher(path, os.path.join(self.work, "leecher"))
        self.addCleanup(leecher.close)
        dev = self.fresh_disk(512)
        result = []
        job = threading.Thread(target=lambda: result.append(self.deploy(
            self.manifest(name, url, turl), dev, "--write-mode", "stream",
            listen=f"127.0.0.1:{port}")))
        job.start()
        while job.is_alive():
            leecher.poll(("127.0.0.1", port))
            time.sleep(0.05)
        self.assertInstalled(result[0], name, dev)
        leecher.poll(None)
        self.assertGreater(leecher.max_pieces_seen, 0, "the leecher never saw the agent's pieces")
        # Choked throughout (so it never asks); a request would be dropped unanswered anyway.
        self.assertEqual((leecher.unchoked, leecher.hash_failures, leecher.downloaded()),
                         (False, 0, 0))

    def deploy_together(self, count, rate, *extra, staggered=False, seed_time=0, each=None,
                        **origin_args):
        """`count` agents deploy image.raw (from an origin at `rate` bytes per second per
        connection, with `origin_args`, no seeder) on fresh disks with `extra` arguments (and
        agent i with each[i] after them), at once or, `staggered`, the others once the origin sent
        the first a byte. All must install it: returns (origin, image size, results)."""
        name = "image.raw"
        origin, url, turl, _ = self.publish(name, rate=rate, seeder=False, **origin_args)
        devs = [self.fresh_disk(512, seed=f"agent{i}") for i in range(count)]
        results = [None] * count

        def run(i):
            results[i] = self.deploy(self.manifest(name, url, turl), devs[i], *extra,
                                     *(each[i] if each else ()), seed_time=seed_time)

        jobs = [threading.Thread(target=run, args=(i,)) for i in range(count)]
        jobs[0].start()
        deadline = time.monotonic() + 30
        while staggered and origin.served["/" + name] == 0 and jobs[0].is_alive():
            self.assertLess(time.monotonic(), deadline, "the first agent never asked the origin")
            time.sleep(0.01)
        for job in jobs[1:]:
            job.start()
        for job in jobs:
            job.join()
        for i in range(count):
            with self.subTest(agent=i):
                self.assertInstalled(results[i], name, devs[i])
        return origin, len(self.images[name][0]), results

    def test_two_streaming_agents_each_get_the_whole_image(self):
        # Neither sends the other a byte (a streaming agent chokes every peer), though each
        # announces the pieces it holds: each takes from the origin what the other holds.
        origin, size, results = self.deploy_together(2, 4_000_000, "--write-mode", "stream")
        for i in range(2):
            self.assertEqual(results[i][1]["swarm"]["fromPeers"], 0)
        # Twice the image, and what was in flight when a run asked before the other agent was seen
        # was cut at the other's first unit (the connection closed).
        self.assertGreaterEqual(origin.served["/image.raw"], 2 * size)
        self.assertLessEqual(origin.served["/image.raw"], 2 * size + (1 << 20))

    def test_stream_mode_takes_the_image_once_from_an_origin_that_ignores_range(self):
        # Each answer is the whole image from byte 0, and the window (a 16 MiB budget) is smaller
        # than the image: one answer pauses at the window's end until it moves (asking for each
        # run would have the origin send from byte 0 to the run's end each time).
        name = "image.raw"
        origin, url, turl, _ = self.publish(name, rate=None, seeder=False, ranges=False)
        dev = self.fresh_disk(4096)
        self.assertInstalled(self.deploy(self.manifest(name, url, turl), dev, "--write-mode",
                                         "stream", "--memory-limit", "16M"), name, dev)
        self.assertEqual(origin.served["/" + name], len(self.images[name][0]))

    def test_stream_mode_asks_again_for_a_piece_that_failed_behind_a_paused_answer(self):
        # The origin ignores Range and its first answer has a byte of piece 5 wrong: the answer
        # goes on to the window's end and pauses there, and the window cannot move past the
        # piece that failed. That answer ends and a new one, from byte 0, brings the piece.
        name = "image.raw"
        size = len(self.images[name][0])
        origin, url, turl, _ = self.publish(name, rate=None, seeder=False, ranges=False,
                                            corrupt_once=5 * PIECE + 100)
        dev = self.fresh_disk(512)
        self.assertInstalled(self.deploy(self.manifest(name, url, turl), dev, "--write-mode",
                                         "stream", "--memory-limit", "16M"), name, dev)
        self.assertIsNone(origin.corrupt_once)
        self.assertGreater(origin.served["/" + name], size)
        self.assertLess(origin.served["/" + name], 2 * size)

    def test_a_rack_takes_the_image_once_from_an_origin_that_ignores_range(self):
        # Each answer is the whole image from byte 0. Three agents start together and each takes
        # an answer; once they see each other, one answer goes on and feeds the others, whose
        # answers end (each would otherwise bring the whole image: 3 x). 2 MB/s a connection: 12 s
        # for the image, the agents see each other within a second or two. Seeding 5 s after
        # done: the last pieces reach the others before the first leaves.
        origin, size, results = self.deploy_together(3, 2_000_000, "--write-mode", "ram",
                                                     ranges=False, seed_time=5)
        left = [r[2].count("this answer from the origin ends, the image comes from the swarm")
                for r in results]
        print(f"\n3 agents, an origin that ignores Range: {origin.served['/image.raw'] / size:.2f}"
              f" x the image from it; answers left to another: {left}", file=sys.stderr)
        self.assertGreaterEqual(sum(left), 2)
        self.assertLessEqual(origin.served["/image.raw"], 1.5 * size)

    def test_a_rack_of_ram_and_stream_agents_behind_an_origin_that_ignores_range(self):
        # Two ram-mode agents and one in stream mode start together; each answer is the whole
        # image from byte 0. One answer feeds the ram pair (the other's ends once they see each
        # other); the streaming agent, which feeds nobody (it chokes every peer), keeps an answer
        # of its own, paused while its window is full (docs/pipeline.md, "Swarm downloads"). Every
        # disk holds the image, the streaming agent sent nothing, the ram pair took at most 1.5 x
        # the image from the origin (as a rack of three does) and the origin sent at most one
        # image more (2.00-2.23 x in runs here).
        origin, size, results = self.deploy_together(
            3, 2_000_000, ranges=False, seed_time=5,
            each=[("--write-mode", "ram"), ("--write-mode", "ram"), ("--write-mode", "stream")])
        swarm = [r[1]["swarm"] for r in results]
        print(f"\n2 ram agents and 1 streaming, an origin that ignores Range: "
              f"{origin.served['/image.raw'] / size:.2f} x the image from it; from the web seed "
              f"{[s['fromWebSeed'] for s in swarm]}, uploaded {[s['uploaded'] for s in swarm]}",
              file=sys.stderr)
        self.assertEqual(swarm[2]["uploaded"], 0)
        self.assertEqual([s["fromPeers"] + s["fromWebSeed"] for s in swarm], [size] * 3)
        self.assertLessEqual(swarm[0]["fromWebSeed"] + swarm[1]["fromWebSeed"], 1.5 * size)
        self.assertLessEqual(origin.served["/image.raw"], 2.5 * size)

    def test_a_rack_takes_over_one_at_a_time_from_an_answer_that_stalls(self):
        # The origin ignores Range, and the answer that feeds the rack stops after 8 MiB with its
        # connection open. The rack's front stands still; the agents take the image from the
        # origin in turn: one new answer brings the 8 MiB again and the rest (two at once would
        # both bring the 8 MiB again before one is ahead: 32 MiB).
        stall = 8 * MiB
        origin, size, results = self.deploy_together(3, 2_000_000, "--write-mode", "ram",
                                                     ranges=False, seed_time=5, stall_after=stall)
        self.assertTrue(origin.stalled.is_set())
        after = origin.served["/image.raw"] - origin.served_at_stall["/image.raw"]
        print(f"\n3 agents, an answer that stalls after {stall // MiB} MiB: {after / size:.2f} x "
              f"the image from the origin after the stall", file=sys.stderr)
        self.assertLessEqual(after, 1.15 * size)

    def test_an_agent_that_meets_another_mid_run_leaves_it_the_rest(self):
        # Alone, the first agent asks for a long run; the second appears while it arrives: the
        # first stops at the first unit the second ranks above it for and leaves it the rest.
        # One connection at 1 MB/s: alone, the first would take 24 s, time enough for the second
        # to start on a loaded machine.
        _, size, results = self.deploy_together(2, 1_000_000, "--write-mode", "ram",
                                                "--connections", "1", staggered=True)
        self.assertRegex(results[0][2], r"web seed: another agent appeared: pieces \d+-\d+ of a "
                                        r"run are left to their owners")
        fetched = re.search(r"web seed: fetched (\d+) bytes alone, (\d+) as the owner, (\d+) taken",
                            results[0][2])
        self.assertLess(sum(int(g) for g in fetched.groups()), size)

    # --- failures --------------------------------------------------------------------------------

    def test_failures_once_writing_began_leave_nothing_bootable(self):
        name = "image.raw"
        data = self.images[name][0]
        # The torrent describes the image but for its last 4 MiB: the first pieces pass and are
        # written, then a piece fails its hash check from every source. A budget of 32M makes
        # the window 8 MiB: the bad pieces are not asked for before the front was written.
        tail_differs = data[:-4 * MiB] + random.Random(23).randbytes(4 * MiB)
        for ss in SECTOR_SIZES:
            with self.subTest(sector_size=ss, case="checksum mismatch"):
                _, url, turl, _ = self.publish(name)
                dev = self.fresh_disk(ss, seed="fail")
                self.assertFailed(
                    self.deploy(self.manifest(name, url, turl, checksum="0" * 64), dev,
                                "--write-mode", "stream"),
                    f"Bad sha256 for downloaded file, got: {hashlib.sha256(data).hexdigest()} "
                    f"while expecting {'0' * 64}.")
                self.assertUnbootable(dev)
            with self.subTest(sector_size=ss, case="a torrent that does not match the web seed"):
                _, url, turl, _ = self.publish(name, rate=None, torrent_data=tail_differs,
                                               seeder=False)
                dev = self.fresh_disk(ss, seed="fail")
                status = self.assertFailed(
                    self.deploy(self.manifest(name, url, turl), dev, "--write-mode", "stream",
                                "--memory-limit", "32M"),
                    f"Could not download image located: {url}.")
                self.assertRegex(status["detail"],
                                 r"^swarm: (piece \d+ failed its hash check 3 times|the web seed "
                                 r"sent pieces that failed their hash check 5 times): the torrent "
                                 r"does not match the image its web seed serves$")
                self.assertGreater(self.step(status, "write")["bytesDone"], 0)
                self.assertUnbootable(dev)

    def test_a_piece_larger_than_the_window_is_refused_before_the_first_write(self):
        name = "image.raw"
        _, url, turl, _ = self.publish(name, seeder=False, piece=4 * MiB)
        dev = self.fresh_disk(4096, seed="untouched")
        before = read(dev)
        status = self.assertFailed(
            self.deploy(self.manifest(name, url, turl), dev, "--write-mode", "stream",
                        "--memory-limit", "8M"),
            f"Could not download image located: {url}.")
        self.assertEqual(status["detail"], "swarm: the torrent's pieces are 4194304 bytes, "
                                           "larger than stream mode's window of 2097152 bytes")
        self.assertTrue(read(dev) == before, "the disk was touched")

    def test_a_delete_mid_stream_leaves_nothing_bootable(self):
        name = "image.raw"
        _, url, turl, _ = self.publish(name, rate=1_000_000, seeder=False)
        for ss in SECTOR_SIZES:
            with self.subTest(sector_size=ss):
                dev = self.fresh_disk(ss, seed="cancel")
                workdir = tempfile.mkdtemp(dir=self.work)
                d = Daemon(workdir, disk=dev, extra_args=["--swarm-listen", "127.0.0.1:0"])
                self.addCleanup(d.stop)
                manifest = dict(self.manifest(name, url, turl), writeMode="stream")
                code, _, body = d.request("POST", "/v1/bringYourOwnImage", manifest)
                self.assertEqual(code, 202, body)
                d.wait_status(lambda s: s["status"] != "doing" or
                              self.step(s, "write")["bytesDone"] > 0, timeout=60)
                code, _, body = d.request("DELETE", "/v1/bringYourOwnImage")
                self.assertEqual((code, body), (204, b""))
                self.assertIn("byoi-agent: ERROR: Deployment cancelled.\n", d.read_console())
                self.assertUnbootable(dev)
                d.stop()


if __name__ == "__main__":
    unittest.main()
