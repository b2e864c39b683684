"""Builds the rescue system (packaging/rescue/build) for the end-to-end tests.

    kernel, initrd = build_rescue(outdir)   # uses $BYOI_AGENT, else build/byoi-agent
    Vm(..., kernel=kernel, initrd=initrd, append=rescue_cmdline("byoi.token=secret"))
"""

import os
import subprocess
import time

SOURCE_DIR = os.environ.get("BYOI_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD_SCRIPT = os.path.join(SOURCE_DIR, "packaging", "rescue", "build")
INIT_TEST_PREFIX = "BYOI-RESCUE-INIT-TEST: "


def agent_path():
    return os.environ.get("BYOI_AGENT") or os.path.join(
        os.environ.get("BYOI_BUILD_DIR") or os.path.join(SOURCE_DIR, "build"), "byoi-agent")


def rescue_missing():
    """Why the rescue system cannot be built here, or ""."""
    if not os.access(agent_path(), os.X_OK):
        return "byoi-agent not built at " + agent_path()
    if not any(n.startswith("vmlinuz-") for n in os.listdir("/boot")):
        return "no kernel in /boot (linux-image-amd64)"
    if not os.path.exists("/usr/bin/busybox"):
        return "busybox-static not installed"
    return ""


def build_rescue(outdir, *extra_args):
    """Runs packaging/rescue/build OUTDIR; returns (vmlinuz path, initrd.img path). Raises on failure."""
    started = time.monotonic()
    result = subprocess.run([BUILD_SCRIPT, "--agent", agent_path(), *extra_args, outdir],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise AssertionError("packaging/rescue/build failed (%d):\n%s" % (result.returncode, result.stdout))
    build_rescue.seconds = time.monotonic() - started
    return os.path.join(outdir, "vmlinuz"), os.path.join(outdir, "initrd.img")


def rescue_cmdline(*words, console="ttyS0"):
    """A kernel command line for the rescue system: the serial console plus `words` (byoi.* words)."""
    return " ".join(["console=%s,115200" % console, "panic=-1", *words])
