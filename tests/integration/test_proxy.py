#!/usr/bin/python3
"""Image downloads through a caching proxy (--proxy, agent/fetch/proxy.hpp), with the caches of
packaging/proxy/ as shipped (nginx with slice, squid) between `byoi-agent deploy --dry-run` and an
origin (nginx) whose access log counts the bytes it sends.

A rack reinstalled at once: 8 agents started together, 4 connections each, fetch one image; through
a cache the origin sends it about once, without one 8 times. Also: proxy credentials, which never
show; the environment's proxy variables and the option that wins over them; a dead proxy; the
manifest's headers, which reach the image's origin only (the proxy is not the origin); an https
image, which is tunnelled and cannot be cached; an https proxy."""
import json
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fetch_servers import (digest, free_port, mbr_image, self_signed_cert,  # noqa: E402
                           write_mbr_image_file)
from proxy_servers import NginxCache, Origin, Squid, run_agents  # noqa: E402
import daemon_harness  # noqa: E402

MiB = 1 << 20
RACK = 8                # agents started at once
BIG = 128 * MiB         # the rack's image
SMALL = 16 * MiB        # the other tests' image
USER, PASSWORD = "byoi", "pw-Zq8vK2mfT"
API_KEY = "key-3c9e0d71"  # a manifest header's value


def manifest(url, sha256, headers=None):
    m = {"URL": url, "type": "raw", "checkSumType": "sha256", "checkSum": sha256}
    if headers:
        m["httpHeader"] = [{"key": k, "value": v} for k, v in headers.items()]
    return m


def download_failed(url):
    return f"Could not download image located: {url}."


class ProxyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="byoi-proxy-")
        os.chmod(cls.workdir, 0o755)  # nginx's and squid's workers run as nobody and proxy
        cls.servers = []
        try:
            cls._start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def _start(cls):
        root = os.path.join(cls.workdir, "root")
        os.makedirs(root)
        cls.root = root
        cls.big_sha = write_mbr_image_file(os.path.join(root, "big.raw"), BIG, seed=11)
        small = mbr_image(SMALL, seed=12)
        with open(os.path.join(root, "small.raw"), "wb") as f:
            f.write(small)
        cls.small_sha = digest("sha256", small)
        for name in os.listdir(root):
            os.chmod(os.path.join(root, name), 0o644)
        cls.cert, cls.key = self_signed_cert(cls.workdir)
        os.chmod(cls.key, 0o644)

        def start(server):
            cls.servers.append(server)
            return server

        cls.elsewhere = start(Origin(cls.workdir, root, name="elsewhere"))
        cls.origin = start(Origin(cls.workdir, root, redirects={
            "/moved.raw": cls.elsewhere.url("/small.raw")}))
        cls.https_origin = start(Origin(cls.workdir, root, name="https-origin",
                                        tls=(cls.cert, cls.key)))
        cls.cache = start(NginxCache(cls.workdir))
        cls.auth_cache = start(NginxCache(cls.workdir, name="auth-cache", auth=(USER, PASSWORD),
                                          tls=(cls.cert, cls.key)))
        cls.squid = start(Squid(cls.workdir, tls_port=cls.https_origin.port))

    @classmethod
    def tearDownClass(cls):
        for server in reversed(cls.servers):
            server.close()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def image(self, name, big=False):
        """A fresh name for the big or the small image (so no cache has it yet): its URL at the
        origin."""
        os.link(os.path.join(self.root, "big.raw" if big else "small.raw"),
                os.path.join(self.root, name))
        return self.origin.url("/" + name)

    def assertAllVerified(self, runs, sha256):
        for i, run in enumerate(runs):
            self.assertEqual(run.returncode, 0, f"agent {i}: {run.stderr}")
            self.assertEqual(run.status["status"], "done", run.status)
            self.assertEqual(run.status["checksum"], sha256)

    def assertFailedToDownload(self, run, url):
        self.assertEqual(run.returncode, 1, run.stderr)
        self.assertEqual(run.status["status"], "error")
        self.assertEqual(run.status["message"], download_failed(url))
        return run.status["detail"]

    def assertNoSecret(self, runs):
        for run in runs:
            self.assertNotIn(PASSWORD, run.everything())
            self.assertNotIn(f"{USER}:", run.everything())

    def rack(self, url, sha256, *extra, what):
        """RACK agents at once on `url`: the bytes the origin sent for them."""
        path = url[url.index("/", len("http://")):]
        sent_before = self.origin.bytes_sent(path)
        requests_before = len(self.origin.requests(path))
        runs, seconds = run_agents(self.workdir, manifest(url, sha256), RACK, *extra)
        self.assertAllVerified(runs, sha256)
        sent = self.origin.bytes_sent(path) - sent_before
        requests = len(self.origin.requests(path)) - requests_before
        print(f"{RACK} agents, {what}: the origin sent {sent / MiB:.0f} MiB "
              f"({sent / BIG:.2f} x the {BIG // MiB} MiB image) in {requests} requests; "
              f"{seconds:.1f} s wall", file=sys.stderr)
        return sent

    # --- a rack at once -------------------------------------------------------------------------

    def test_a_rack_through_the_nginx_cache_costs_the_origin_one_image(self):
        through = self.image("rack-nginx.raw", big=True)
        sent = self.rack(through, self.big_sha, "--proxy", self.cache.url(),
                         what="through the nginx cache (slice)")
        self.assertLessEqual(sent, 1.2 * BIG)
        self.assertGreaterEqual(sent, BIG)
        # Every agent's requests went through it, most answered from the cache.
        lines = [r for r in self.cache.requests() if "/rack-nginx.raw" in r[1]]
        self.assertGreaterEqual(len(lines), RACK * 4)
        self.assertGreater(sum(1 for r in lines if r[2] == "HIT"), len(lines) // 2, lines)

        # The next rack is served from the cache alone.
        again = self.rack(through, self.big_sha, "--proxy", self.cache.url(),
                          what="through the warm nginx cache")
        self.assertEqual(again, 0)

        direct = self.rack(self.image("rack-direct.raw", big=True), self.big_sha,
                           what="without a cache")
        self.assertEqual(direct, RACK * BIG)

    def test_a_rack_through_the_squid_cache_costs_the_origin_one_image(self):
        sent = self.rack(self.image("rack-squid.raw", big=True), self.big_sha,
                         "--proxy", self.squid.url(), what="through the squid cache")
        self.assertLessEqual(sent, 1.2 * BIG)
        self.assertGreaterEqual(sent, BIG)

    # --- credentials ----------------------------------------------------------------------------

    def test_proxy_credentials_work_and_never_show(self):
        url = self.image("auth.raw")
        proxy = self.auth_cache.url(f"{USER}:{PASSWORD}@")
        runs, _ = run_agents(self.workdir, manifest(url, self.small_sha), 2, "--proxy", proxy)
        self.assertAllVerified(runs, self.small_sha)
        self.assertNoSecret(runs)
        self.assertTrue(any("/auth.raw" in r[1] for r in self.auth_cache.requests()))
        # The proxy's credentials stay at the proxy.
        for entry in self.origin.requests("/auth.raw"):
            self.assertEqual(entry["proxy_authorization"], "-")

        # Wrong or no credentials: the proxy's 407 is final, named with the proxy, without them.
        for userinfo in (f"{USER}:wrong-{PASSWORD}@", ""):
            with self.subTest(userinfo=userinfo):
                runs, _ = run_agents(self.workdir, manifest(url, self.small_sha), 1, "--proxy",
                                     self.auth_cache.url(userinfo))
                detail = self.assertFailedToDownload(runs[0], url)
                # nginx sends no reason phrase with a 407.
                self.assertEqual(detail, f"HTTP 407 (through the proxy http://127.0.0.1:"
                                 f"{self.auth_cache.port}, from the proxy option)")
                self.assertNoSecret(runs)

    def test_the_daemon_takes_the_proxy_from_its_config_file_and_never_shows_it(self):
        url = self.image("daemon.raw")
        workdir = os.path.join(self.workdir, "daemon")
        os.makedirs(workdir)
        console = os.path.join(workdir, "console.txt")
        daemon = daemon_harness.Daemon(workdir, extra_args=("--efi-boot-order", "none"),
                                       config_text=f"console = {console}\nproxy = "
                                       f"{self.auth_cache.url(f'{USER}:{PASSWORD}@')}\n")
        try:
            code, _, _ = daemon.request("POST", "/v1/bringYourOwnImage",
                                        manifest(url, self.small_sha))
            self.assertEqual(code, 202)
            status = daemon.wait_status(lambda s: s["status"] != "doing", timeout=60)
            self.assertEqual(status["status"], "done", status)
            _, _, metrics = daemon.request("GET", "/metrics")
            with open(daemon.state_file) as f:
                state = f.read()
        finally:
            daemon.stop()
        self.assertTrue(any("/daemon.raw" in r[1] for r in self.auth_cache.requests()))
        self.assertIn("config: proxy (", daemon.read_log())  # where it came from, not its value
        self.assertIn("download: 16 MiB in", daemon.read_log())
        for text in (daemon.read_log(), daemon.read_console(), state, metrics.decode(),
                     json.dumps(status)):
            self.assertNotIn(PASSWORD, text)
            self.assertNotIn(f"{USER}:", text)

    def test_deploy_takes_the_job_options_of_a_config_file_it_is_given(self):
        # An operator's `deploy --config FILE` downloads as the daemon would: through the config
        # file's proxy (its daemon-only keys checked and unused); a flag wins over the file.
        conf = os.path.join(self.workdir, "deploy.conf")
        dead = f"http://127.0.0.1:{free_port()}"
        for name, proxy, extra in (("conf-proxy", self.auth_cache.url(f"{USER}:{PASSWORD}@"), ()),
                                   ("conf-flag-wins", dead, ("--proxy", self.cache.url()))):
            with self.subTest(name):
                with open(conf, "w") as f:
                    f.write(f"listen = 127.0.0.1:1\nproxy = {proxy}\n")
                url = self.image(name + ".raw")
                runs, _ = run_agents(self.workdir, manifest(url, self.small_sha), 1,
                                     "--config", conf, *extra)
                self.assertAllVerified(runs, self.small_sha)
                self.assertNoSecret(runs)
                cache = self.auth_cache if name == "conf-proxy" else self.cache
                self.assertTrue(any(f"/{name}.raw" in r[1] for r in cache.requests()))
        # A file named must exist, and its values are checked.
        runs, _ = run_agents(self.workdir, manifest(url, self.small_sha), 1, "--config",
                             conf + ".missing")
        self.assertEqual(runs[0].returncode, 2, runs[0].stderr)
        self.assertIn(f"opening {conf}.missing: No such file or directory", runs[0].stderr)
        with open(conf, "w") as f:
            f.write("memory_limit = lots\n")
        runs, _ = run_agents(self.workdir, manifest(url, self.small_sha), 1, "--config", conf)
        self.assertEqual(runs[0].returncode, 2, runs[0].stderr)
        self.assertIn(f"memory_limit (from {conf}): not a size", runs[0].stderr)

    # --- the environment ------------------------------------------------------------------------

    def test_the_environment_decides_when_the_option_is_not_given(self):
        dead = f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}"
        cases = [
            # (name, environment, extra arguments, through the cache?)
            ("env-http", {"http_proxy": self.cache.url()}, (), True),
            ("env-option-wins", {"http_proxy": dead}, ("--proxy", self.cache.url()), True),
            # The option is for every request: no_proxy does not apply to it.
            ("env-option-beats-no-proxy", {"no_proxy": "127.0.0.1"},
             ("--proxy", self.cache.url()), True),
            ("env-no-proxy", {"http_proxy": dead, "no_proxy": "localhost,127.0.0.1"}, (), False),
            ("env-no-proxy-cidr", {"http_proxy": dead, "NO_PROXY": "127.0.0.0/8"}, (), False),
            # A CGI program gets a request's `Proxy:` header as HTTP_PROXY: never read.
            ("env-upper-case", {"HTTP_PROXY": dead}, (), False),
            # The https variable is for https URLs only.
            ("env-https-only", {"https_proxy": dead}, (), False),
        ]
        for name, env, extra, through in cases:
            with self.subTest(name):
                url = self.image(name + ".raw")
                runs, _ = run_agents(self.workdir, manifest(url, self.small_sha), 1, *extra,
                                     env=env)
                self.assertAllVerified(runs, self.small_sha)
                self.assertNoSecret(runs)
                via_cache = any(f"/{name}.raw" in r[1] for r in self.cache.requests())
                self.assertEqual(via_cache, through)
                self.assertTrue(self.origin.requests(f"/{name}.raw"))

    def test_a_bad_proxy_variable_fails_the_download_naming_the_variable_not_its_value(self):
        url = self.image("env-bad.raw")
        runs, _ = run_agents(self.workdir, manifest(url, self.small_sha), 1,
                             env={"http_proxy": f"socks5://{USER}:{PASSWORD}@127.0.0.1:1080"})
        detail = self.assertFailedToDownload(runs[0], url)
        self.assertEqual(detail, "the http_proxy environment variable: must start with http:// or "
                         "https:// (expected http://HOST[:PORT] or https://HOST[:PORT], "
                         "optionally with USER:PASSWORD@ before the host)")
        self.assertNoSecret(runs)
        self.assertEqual(self.origin.requests("/env-bad.raw"), [])

    # --- failures -------------------------------------------------------------------------------

    def test_a_dead_proxy_fails_with_the_image_url_and_names_the_proxy_without_credentials(self):
        url = self.image("dead.raw")
        port = free_port()  # nothing listens there
        runs, _ = run_agents(self.workdir, manifest(url, self.small_sha), 1, "--proxy",
                             f"http://{USER}:{PASSWORD}@127.0.0.1:{port}",
                             "--download-attempts", "2", "--retry-delay", "0.05")
        detail = self.assertFailedToDownload(runs[0], url)
        self.assertIn(f"Failed to connect to 127.0.0.1 port {port}", detail)
        self.assertIn(f"(through the proxy http://127.0.0.1:{port}, from the proxy option)", detail)
        self.assertTrue(detail.endswith("(gave up after 2 attempts without progress)"), detail)
        self.assertNoSecret(runs)
        self.assertEqual(self.origin.requests("/dead.raw"), [])

    # --- what reaches whom ----------------------------------------------------------------------

    def test_manifest_headers_reach_only_the_images_origin_through_the_proxy(self):
        # The origin sends the agents elsewhere (another port: another origin); the header and the
        # proxy's credentials must not follow, though every request goes through the one proxy.
        url = self.origin.url("/moved.raw")
        runs, _ = run_agents(self.workdir, manifest(url, self.small_sha, {"X-Api-Key": API_KEY}),
                             2, "--proxy", self.auth_cache.url(f"{USER}:{PASSWORD}@"))
        self.assertAllVerified(runs, self.small_sha)
        at_origin = self.origin.requests("/moved.raw")
        self.assertGreaterEqual(len(at_origin), 2)
        self.assertEqual({e["x_api_key"] for e in at_origin}, {API_KEY})
        elsewhere = self.elsewhere.requests("/small.raw")
        self.assertGreaterEqual(len(elsewhere), 1)
        self.assertEqual({e["x_api_key"] for e in elsewhere}, {"-"})
        for entry in at_origin + elsewhere:
            self.assertEqual(entry["proxy_authorization"], "-")
        self.assertNoSecret(runs)

    def test_an_https_image_is_tunnelled_and_cannot_be_cached(self):
        # https_proxy (the environment) for an https URL: squid tunnels it (CONNECT); TLS runs from
        # the agent to the origin, so every agent's bytes come from the origin, and the CONNECT
        # carries none of the manifest's headers.
        os.link(os.path.join(self.root, "small.raw"), os.path.join(self.root, "tls.raw"))
        url = self.https_origin.url("/tls.raw")
        agents = 3
        runs, _ = run_agents(self.workdir, manifest(url, self.small_sha, {"X-Api-Key": API_KEY}),
                             agents, "--ca-bundle", self.cert, env={"https_proxy": self.squid.url()})
        self.assertAllVerified(runs, self.small_sha)
        self.assertEqual(self.https_origin.bytes_sent("/tls.raw"), agents * SMALL)
        self.assertEqual({e["x_api_key"] for e in self.https_origin.requests("/tls.raw")},
                         {API_KEY})
        connects = [r for r in self.squid.requests() if r["method"] == "CONNECT" and
                    r["url"] == f"127.0.0.1:{self.https_origin.port}"]
        self.assertGreaterEqual(len(connects), agents)
        for r in connects:
            self.assertNotIn(API_KEY, r["headers"])
            self.assertNotIn("X-Api-Key", r["headers"])

    def test_an_https_proxy_is_verified_with_the_ca_bundle_and_still_caches(self):
        url = self.image("tls-proxy.raw")
        proxy = f"https://{USER}:{PASSWORD}@127.0.0.1:{self.auth_cache.tls_port}"
        runs, _ = run_agents(self.workdir, manifest(url, self.small_sha), 2, "--proxy", proxy,
                             "--ca-bundle", self.cert)
        self.assertAllVerified(runs, self.small_sha)
        self.assertNoSecret(runs)
        self.assertEqual(self.origin.bytes_sent("/tls-proxy.raw"), SMALL)
        # Without the CA that signed it, the proxy's certificate is refused.
        runs, _ = run_agents(self.workdir, manifest(url, self.small_sha), 1, "--proxy", proxy,
                             "--download-attempts", "2", "--retry-delay", "0.05")
        detail = self.assertFailedToDownload(runs[0], url)
        self.assertIn(f"(through the proxy https://127.0.0.1:{self.auth_cache.tls_port}, from the "
                      "proxy option)", detail)
        self.assertIn("certificate", detail)
        self.assertNoSecret(runs)


if __name__ == "__main__":
    unittest.main()
