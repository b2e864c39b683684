"""The manifest and status contracts, checked from outside.

Every example in proto/examples is checked against its JSON Schema (Draft 2020-12, Debian's
python3-jsonschema) and, for manifests, against `byoi-agent validate`, so that the schemas, the
examples and the code cannot drift apart:

  proto/examples/manifest/valid/NAME.json      schema-valid; validate exits 0 and prints NAME.out
  proto/examples/manifest/invalid/NAME.json    validate exits 1 and prints NAME.expect on stderr;
                                               schema-invalid, unless NAME.schema-note says why
                                               the schema cannot express that rule
  proto/examples/status/{valid,invalid}/*.json schema-valid / schema-invalid

It also checks the command line of docs/cli.md: validate from a file and from stdin, the 1 MiB
limit, --version and --help for every subcommand, and that every subcommand exists.

Run by CTest with BYOI_AGENT (the binary) and BYOI_SOURCE_DIR set; /usr/bin/python3 only.
"""

import glob
import json
import os
import subprocess
import unittest

import jsonschema

AGENT = os.environ.get("BYOI_AGENT", "byoi-agent")
SOURCE = os.environ.get(
    "BYOI_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PROTO = os.path.join(SOURCE, "proto")
EXAMPLES = os.path.join(PROTO, "examples")
MIB = 1 << 20
SUBCOMMANDS = ["daemon", "deploy", "convert", "inspect", "disks", "validate", "status"]


def load_schema(name):
    with open(os.path.join(PROTO, name), encoding="utf-8") as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def run(args, stdin=b"", timeout=30):
    return subprocess.run([AGENT] + args, input=stdin, capture_output=True, timeout=timeout)


def examples(kind, validity):
    files = sorted(glob.glob(os.path.join(EXAMPLES, kind, validity, "*.json")))
    assert files, "no examples in %s/%s" % (kind, validity)
    return files


def schema_errors(validator, path):
    """The schema's complaints about a file; a file that is not JSON is one complaint."""
    try:
        with open(path, encoding="utf-8") as f:
            instance = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        return ["not JSON: %s" % e]
    return [e.message for e in validator.iter_errors(instance)]


def sidecar(path, ext):
    side = path[:-len(".json")] + ext
    if not os.path.exists(side):
        return None
    with open(side, encoding="utf-8") as f:
        return f.read()


def name(path):
    return os.path.basename(path)[:-len(".json")]


class ManifestExamples(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.schema = load_schema("manifest.schema.json")

    def test_valid_examples_pass_schema_and_validate(self):
        for path in examples("manifest", "valid"):
            with self.subTest(example=name(path)):
                self.assertEqual(schema_errors(self.schema, path), [])
                r = run(["validate", path])
                self.assertEqual(r.returncode, 0, r.stderr.decode())
                self.assertEqual(r.stderr, b"")
                printed = json.loads(r.stdout)
                expected = sidecar(path, ".out")
                self.assertIsNotNone(expected, "missing %s.out" % name(path))
                self.assertEqual(printed, json.loads(expected))
                # Secrets never reach the output: header values and URL credentials.
                with open(path, encoding="utf-8") as f:
                    body = json.load(f)
                for header in printed["httpHeaders"]:
                    self.assertEqual(header["value"], "***")
                for secret in ("bG9naW46cGFzc3dvcmQ=", "s3cret", "Bearer abc"):
                    self.assertNotIn(secret, r.stdout.decode())
                self.assertIn(printed["shape"], ("byoi-v1", "reinstall-v3"))
                self.assertEqual(printed["shape"] == "reinstall-v3",
                                 body.get("customizations") is not None)

    def test_invalid_examples_fail_with_their_exact_message(self):
        for path in examples("manifest", "invalid"):
            with self.subTest(example=name(path)):
                expected = sidecar(path, ".expect")
                self.assertIsNotNone(expected, "missing %s.expect" % name(path))
                r = run(["validate", path])
                self.assertEqual(r.returncode, 1, r.stderr.decode())
                self.assertEqual(r.stdout, b"")
                self.assertEqual(r.stderr.decode(), expected)

    def test_invalid_examples_fail_the_schema_where_it_can_say_so(self):
        for path in examples("manifest", "invalid"):
            with self.subTest(example=name(path)):
                errors = schema_errors(self.schema, path)
                note = sidecar(path, ".schema-note")
                if note is None:
                    self.assertNotEqual(errors, [], "the schema accepts it; add the rule, or a "
                                        "%s.schema-note saying why it cannot" % name(path))
                else:
                    # The note must stay true: the schema really accepts it.
                    self.assertEqual(errors, [], "the schema now refuses it; drop the note")

    def test_sidecars_belong_to_an_example(self):
        for ext in (".expect", ".schema-note", ".out"):
            for side in glob.glob(os.path.join(EXAMPLES, "manifest", "*", "*" + ext)):
                self.assertTrue(os.path.exists(side[:-len(ext)] + ".json"), side)

    def test_shapes_are_exclusive(self):
        # oneOf: a valid example matches exactly one of the two shapes.
        shapes = self.schema.schema["$defs"]
        for path in examples("manifest", "valid"):
            with open(path, encoding="utf-8") as f:
                body = json.load(f)
            matches = [s for s in ("v1", "v3")
                       if jsonschema.Draft202012Validator(
                           {"$defs": shapes, "$ref": "#/$defs/" + s}).is_valid(body)]
            self.assertEqual(len(matches), 1, (name(path), matches))
            self.assertIn(matches[0], shapes)


class ValidateCommand(unittest.TestCase):
    MINIMAL = b'{"URL": "https://images.example.net/x.raw", "type": "raw"}'

    def test_reads_stdin(self):
        r = run(["validate", "-"], stdin=self.MINIMAL)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["url"], "https://images.example.net/x.raw")
        r = run(["validate", "-"], stdin=b'{"URL": "ftp://x/y", "type": "raw"}')
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr, b"Invalid manifest: URL: scheme must be http or https\n")

    def test_masks_secrets(self):
        body = json.dumps({"URL": "https://user:pa55@images.example.net/x.raw", "type": "raw",
                           "httpHeader": [{"key": "Authorization", "value": "Basic c2VjcmV0"}]})
        r = run(["validate", "-"], stdin=body.encode())
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        self.assertEqual(out["url"], "https://***@images.example.net/x.raw")
        self.assertEqual(out["httpHeaders"], [{"name": "Authorization", "value": "***"}])
        self.assertNotIn(b"pa55", r.stdout)
        self.assertNotIn(b"c2VjcmV0", r.stdout)

    def test_body_limit_is_1_mib(self):
        at_limit = self.MINIMAL[:1] + b" " * (MIB - len(self.MINIMAL)) + self.MINIMAL[1:]
        self.assertEqual(len(at_limit), MIB)
        r = run(["validate", "-"], stdin=at_limit)
        self.assertEqual(r.returncode, 0, r.stderr)
        for body in (b" " + at_limit, b"x" * (8 * MIB)):
            r = run(["validate", "-"], stdin=body)
            self.assertEqual(r.returncode, 1)
            self.assertEqual(r.stderr, b"Invalid manifest: body: larger than 1 MiB\n")
            self.assertEqual(r.stdout, b"")

    def test_unreadable_file_is_a_usage_error(self):
        r = run(["validate", "/nonexistent/manifest.json"])
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"/nonexistent/manifest.json", r.stderr)
        r = run(["validate", EXAMPLES])  # a directory
        self.assertEqual(r.returncode, 2)

    def test_usage_errors(self):
        for args in ([], ["validate"], ["frobnicate"], ["validate", "a", "b"], ["--bogus"]):
            with self.subTest(args=args):
                self.assertEqual(run(args).returncode, 2)


class CommandLine(unittest.TestCase):
    def test_version(self):
        r = run(["--version"])
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout.decode(), r"^byoi-agent \d+\.\d+\.\d+\n$")

    def test_help_for_every_subcommand(self):
        top = run(["--help"])
        self.assertEqual(top.returncode, 0)
        for cmd in SUBCOMMANDS:
            self.assertIn(cmd, top.stdout.decode())
            with self.subTest(cmd=cmd):
                r = run([cmd, "--help"])
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn("byoi-agent %s" % cmd, r.stdout.decode())

    def test_every_subcommand_is_built_and_fails_cleanly_on_missing_inputs(self):
        # Missing files and no server: each command answers with a sentence and exit 1 or 2
        # (never a crash, never "not available"); `disks` only reads, and lists this machine's.
        harmless = {
            "daemon": (["--config", "/nonexistent/byoi.conf", "--listen", "127.0.0.1:1"], (2,)),
            "deploy": (["--manifest", "/nonexistent/m.json", "--dry-run"], (2,)),
            "convert": (["/nonexistent/a.qcow2", "/nonexistent/b.raw"], (1,)),
            "inspect": (["/nonexistent/a.qcow2"], (1,)),
            "status": (["--url", "http://127.0.0.1:1"], (1,)),
            "disks": (["--json"], (0,)),
        }
        for cmd, (args, codes) in harmless.items():
            with self.subTest(cmd=cmd):
                r = run([cmd] + args, timeout=20)
                self.assertIn(r.returncode, codes, r.stderr)
                self.assertNotIn(b"not available", r.stderr)
                if r.returncode != 0:
                    self.assertTrue(r.stderr.strip(), "no sentence on stderr")


class StatusExamples(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.schema = load_schema("status.schema.json")

    def test_valid(self):
        for path in examples("status", "valid"):
            with self.subTest(example=name(path)):
                self.assertEqual(schema_errors(self.schema, path), [])

    def test_invalid(self):
        for path in examples("status", "invalid"):
            with self.subTest(example=name(path)):
                self.assertNotEqual(schema_errors(self.schema, path), [])

    def test_every_catalogue_message_is_accepted_on_error(self):
        messages = [
            "Bad format image, expected: qcow2, raw, ova.",
            "Bad checkSumType, expected: md5, sha1, sha256, sha512.",
            "Please provide checkSum AND checkSumType or none of them",
            "Invalid manifest: URL: missing",
            "Could not download image located: https://example.net/x.raw.",
            "Could not download, qcow2 image is too big to download in memory.",
            "Bad md5 for downloaded file, got: 00 while expecting 11.",
            "image provided format is qcow2 which does not match expected raw format",
            "image provided format is not of type raw because no partition table was found. "
            "It seems to contain: ext4 filesystem",
            "image provided has a size of 2 bytes which is larger than /dev/sda of 1 bytes",
            "No disk found in disk group 1.",
            "Disk /dev/sda is in use: /dev/sda1 is mounted on /.",
            "Can't write raw on disk.",
            "Can not move backup GPT data structures to the end of disk.",
            "Could not create configdrive on disk.",
            "EFI bootloader \\EFI\\x.efi not found on the EFI system partition.",
            "Could not set EFI boot entry.",
            "Deployment cancelled.",
            "Deployment interrupted: the agent restarted.",
        ]
        for m in messages:
            status = {"status": "error", "message": m, "progress": []}
            self.assertEqual([e.message for e in self.schema.iter_errors(status)], [], m)
        self.assertFalse(self.schema.is_valid(
            {"status": "error", "message": "Deployment cancelled", "progress": []}))


class OpenApiTest(unittest.TestCase):
    """proto/openapi.json describes exactly the routes of docs/api.md and refers only to schemas
    that exist (the daemon's integration test checks GET /v1/disks against it)."""

    def test_routes_and_references(self):
        with open(os.path.join(PROTO, "openapi.json"), encoding="utf-8") as f:
            api = json.load(f)
        self.assertEqual(api["openapi"], "3.1.0")
        self.assertEqual(sorted(api["paths"]), ["/healthz", "/metrics", "/v1/bringYourOwnImage",
                                                "/v1/disks"])
        self.assertEqual(sorted(api["paths"]["/v1/bringYourOwnImage"]), ["delete", "get", "post"])
        refs = []

        def walk(node):
            if isinstance(node, dict):
                refs.extend(v for k, v in node.items() if k == "$ref")
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)
        walk(api)
        for ref in refs:
            if ref.startswith("#/"):
                target = api
                for part in ref[2:].split("/"):
                    target = target[part]
            else:
                load_schema(ref)  # a schema file beside it, valid Draft 2020-12
        for name, schema in api["components"]["schemas"].items():
            with self.subTest(schema=name):
                jsonschema.Draft202012Validator.check_schema(schema)


if __name__ == "__main__":
    unittest.main()
