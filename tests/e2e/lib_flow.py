"""Steps of the end-to-end install flow that tie the VMs, the agent's HTTP API and the disk
checks together. The flow:

    with Nginx(www, work) as web, Vm(work, name="rescue", memory_mib=2048, network=True,
            host_forwards=[(port, 9999)], disks=[Disk(disk_raw, format="raw")],
            kernel=kernel, initrd=initrd, append=rescue_cmdline("byoi.token=" + token)) as vm:
        api = "http://127.0.0.1:%d" % port
        wait_healthy(vm, api, timeout=180)
        submit(api, token, manifest)                # manifest["URL"] = web.guest_url("image.qcow2")
        seen = follow_job(vm, api, token, timeout=300)
        vm.wait_exit(120)                           # the agent reboots; -no-reboot ends QEMU
    steps, final = console_report(vm.log())         # the agent's console display: every step, DONE
    log = boot_installed(work, disk_raw, vm.nvram, image.marker, label=...)
    check_gpt(disk_raw); read_config_drive(disk_raw)

The agent reboots milliseconds after `done`, so an API poll rarely sees `done` itself: follow_job() collects
what the API showed and console_report() reads the end from the serial console. A job taken by polling a
backend (tests/integration/daemon_backend.py) reports its final status before the reboot. tests/e2e/
test_install.py is this flow.

The HTTP helpers follow docs/api.md (bearer token, JSON bodies) and use only the standard library.
"""

import json
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from lib_qemu import Disk, Vm, VmError, ovmf_loaded_entries


def http_json(method, url, token=None, body=None, timeout=10):
    """One request; returns (HTTP status, decoded JSON body, or the text when not JSON, or None)."""
    data = None
    headers = {}
    if token is not None:
        headers["Authorization"] = "Bearer " + token
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    if not raw:
        return status, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def wait_healthy(vm, api, timeout):
    """Polls GET {api}/healthz until it answers 200; raises VmError if the VM stops or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if vm.process.poll() is not None:
            vm.fail("QEMU exited before the agent's API answered")
        try:
            status, _ = http_json("GET", api + "/healthz", timeout=5)
            if status == 200:
                return
        except OSError:
            pass  # not listening yet (the forwarded port refuses or resets until the guest listens)
        if time.monotonic() > deadline:
            vm.fail("the agent's API did not answer %s/healthz within %d s" % (api, timeout))
        time.sleep(1)


def submit(api, token, manifest):
    """POST the manifest; returns the status JSON of the 202 answer (AssertionError otherwise)."""
    status, body = http_json("POST", api + "/v1/bringYourOwnImage", token, manifest, timeout=30)
    if status != 202:
        raise AssertionError("POST /v1/bringYourOwnImage answered %d: %r" % (status, body))
    return body


def wait_done(vm, api, token, timeout, on_status=None):
    """Polls GET /v1/bringYourOwnImage until the job is `done` (returned) or `error` (AssertionError).

    The agent reboots right after `done`, so the API may vanish before a poll sees it: when the
    connection fails and QEMU has exited (-no-reboot), the last status seen is returned if it was
    at the reboot step, else the serial log is shown. on_status(status) sees every answer.
    """
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            status, body = http_json("GET", api + "/v1/bringYourOwnImage", token, timeout=10)
            if status == 200 and isinstance(body, dict):
                last = body
                if on_status:
                    on_status(body)
                if body.get("status") == "done":
                    return body
                if body.get("status") == "error":
                    raise AssertionError("the job failed: %s\n%s" % (json.dumps(body, indent=1),
                                                                     vm.log()[-3000:]))
        except OSError:
            if vm.process.poll() is not None:
                if last and any(s.get("step") == "reboot" and s.get("status") in ("doing", "done")
                                for s in last.get("progress", [])):
                    return last
                vm.fail("the VM stopped while the job was not done (last status: %r)" % (last,))
        if time.monotonic() > deadline:
            vm.fail("the job was not done within %d s (last status: %r)" % (timeout, last))
        time.sleep(2)


STEPS = ("download", "verify", "write", "partition", "configdrive", "bootloader", "reboot")
_ANSI = re.compile(r"\x1b\[[0-9;?=]*[A-Za-z]")


def follow_job(vm, api, token, timeout, poll_interval=0.25, on_status=None):
    """Polls GET /v1/bringYourOwnImage until the job ends, for a job that reboots the VM when done.

    With `reboot` the rescue system is gone milliseconds after the job turns `done`, so an API poll
    rarely sees `done` itself: polling ends when the job is `done` or `error`, or when QEMU exited
    (-no-reboot). Returns every distinct status seen, in order (the caller checks the console for the
    end: console_report()). Raises VmError on time-out.
    """
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        try:
            status, body = http_json("GET", api + "/v1/bringYourOwnImage", token, timeout=10)
            if status == 200 and isinstance(body, dict):
                if not seen or body != seen[-1]:
                    seen.append(body)
                    if on_status:
                        on_status(body)
                if body.get("status") in ("done", "error"):
                    return seen
        except OSError:
            pass  # the guest is rebooting, or the forwarded port reset
        if vm.process.poll() is not None:
            return seen
        if time.monotonic() > deadline:
            vm.fail("the job did not end within %d s (last status: %r)" % (timeout, seen[-1:]))
        time.sleep(poll_interval)


def console_report(log):
    """What the agent's console display (docs/status.md status, drawn for IPMI/serial watchers) showed:
    ({step: (state, comment)} of the last `byoi-agent: STEP STATE: comment` line of each step,
    the final line `byoi-agent: DONE in N s: message` or `byoi-agent: ERROR: message`, or None)."""
    steps = {}
    final = None
    for line in _ANSI.sub("", log).splitlines():
        m = re.match(r"^byoi-agent: (%s)\s+(started|done|skipped|error)(?:: (.*))?$" % "|".join(STEPS), line)
        if m:
            steps[m.group(1)] = (m.group(2), m.group(3) or "")
            continue
        m = re.match(r"^byoi-agent: (DONE in \d+ s: .*|ERROR: .*)$", line)
        if m:
            final = m.group(1)
    return steps, final


def step_states(status):
    """{step: state} of a status JSON."""
    return {s["step"]: s["status"] for s in status.get("progress", [])}


def boot_installed(workdir, disk, nvram, marker, *, label=None, firmware="uefi", timeout=150,
                   name="installed", disk_format="raw", logical_block_size=512):
    """Boots `disk` again without the rescue kernel (same NVRAM file for UEFI) until `marker` shows.

    UEFI: asserts that the boot went through OVMF's `BdsDxe: loading Boot#### "<label>"` for `label`
    (when given) and that it was the entry that printed the marker (the last one loaded). Returns
    (serial log, [(Boot####, label) loaded, in order]).
    """
    with Vm(workdir, name=name, firmware=firmware, nvram=nvram,
            disks=[Disk(disk, format=disk_format, logical_block_size=logical_block_size)]) as vm:
        vm.wait_for(re.escape(marker), timeout)
        log = vm.log()
    loaded = ovmf_loaded_entries(log)
    if firmware == "uefi" and label is not None:
        if not loaded or loaded[-1][1] != label:
            raise VmError("%s: the marker appeared but OVMF did not load it through the entry %r "
                          "(loaded: %r)\n%s" % (name, label, loaded, log[-3000:]))
    return log, loaded


def check_gpt(disk):
    """sgdisk -v must find no problem and no damaged header or table; returns its output.

    (sgdisk -v says "No problems found" even when it had to fall back on the backup header, with a
    warning above: those warnings fail the check too.)
    """
    result = subprocess.run(["sgdisk", "-v", disk], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    if (result.returncode != 0 or "No problems found" not in result.stdout
            or re.search(r"corrupt|Warning|ERROR|Problem|CRC", result.stdout)):
        raise AssertionError("sgdisk -v %s:\n%s" % (disk, result.stdout))
    return result.stdout


def partitions(disk):
    """[(number, start byte, size bytes, type, name)] from sfdisk --json (GPT or MBR)."""
    out = subprocess.run(["sfdisk", "--json", disk], check=True, stdout=subprocess.PIPE, text=True).stdout
    table = json.loads(out)["partitiontable"]
    sector = table.get("sectorsize", 512)
    result = []
    for p in table.get("partitions", []):
        number = int(re.search(r"(\d+)$", p["node"]).group(1))
        result.append((number, p["start"] * sector, p["size"] * sector, p.get("type", ""), p.get("name", "")))
    return result


def read_config_drive(disk):
    """Finds the partition whose file system is labelled config-2 and reads it with cloud-init's own
    OpenStack config drive reader (its files are copied out with mtools: no mount).

    Returns (partition number, the dict of ConfigDriveReader.read_v2(): 'metadata', 'userdata', ...).
    Needs Debian's python3 (cloud-init).
    """
    from cloudinit.sources.helpers import openstack  # Debian's /usr/bin/python3 only

    for number, start, _size, _type, _name in partitions(disk):
        probe = subprocess.run(["blkid", "-p", "-O", str(start), "-o", "export", disk],
                               stdout=subprocess.PIPE, text=True)
        fields = dict(line.split("=", 1) for line in probe.stdout.splitlines() if "=" in line)
        if fields.get("LABEL", "").lower() != "config-2":  # cloud-init accepts both cases
            continue
        with tempfile.TemporaryDirectory() as tmp:
            # (on a block device mtools says "Could not get geometry of device" and goes on: shown on failure)
            copy = subprocess.run(["mcopy", "-s", "-n", "-i", "%s@@%d" % (disk, start), "::/", tmp],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
            if copy.returncode != 0:
                raise AssertionError("mcopy from partition %d of %s: %s" % (number, disk, copy.stdout))
            return number, openstack.ConfigDriveReader(tmp).read_v2()
    raise AssertionError("no config-2 file system on " + disk)
