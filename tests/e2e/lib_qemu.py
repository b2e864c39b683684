"""QEMU virtual machines for the end-to-end tests.

Every VM runs under software emulation (-accel tcg: KVM is not usable on the test machines), writes its
serial console to a log file, and is always killed when its `with` block ends. Networking, when asked for,
is QEMU's user-mode (slirp) stack only: the guest reaches the host's loopback at 10.0.2.2, and host ports
can be forwarded to the guest on 127.0.0.1.

    with Vm(workdir, firmware="uefi", disks=[Disk(image)], kernel=k, initrd=i,
            append="console=ttyS0 byoi.init_test=1") as vm:
        vm.wait_for(r"BYOI-RESCUE-INIT-TEST: ok", timeout=120)
        vm.wait_exit(timeout=30)
"""

import dataclasses
import os
import re
import shutil
import socket
import subprocess
import time

OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
GUEST_HOST_ADDRESS = "10.0.2.2"  # the host's loopback as seen from a user-mode networking guest


class VmError(AssertionError):
    """A VM did not do what the test waited for; the message ends with the tail of its serial log."""


@dataclasses.dataclass
class Disk:
    path: str
    format: str = ""              # "raw" or "qcow2"; guessed from the file name when empty
    interface: str = "virtio"     # "virtio" (virtio-blk-pci), "nvme" or "ahci" (SATA)
    logical_block_size: int = 512  # 4096 makes a 4Kn disk
    serial: str = ""
    readonly: bool = False


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_nvram(path):
    """Copies OVMF's empty variable store to `path` (one writable copy per VM) and returns `path`."""
    shutil.copyfile(OVMF_VARS, path)
    return path


def qemu_missing():
    """What is missing to run these VMs, or "" (for skip messages)."""
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not installed"
    if not os.path.exists(OVMF_CODE) or not os.path.exists(OVMF_VARS):
        return "OVMF firmware not installed"
    return ""


class Vm:
    """One QEMU q35 machine. Start it with `with Vm(...) as vm:` (or start()/kill())."""

    def __init__(self, workdir, *, name="vm", firmware="uefi", nvram=None, memory_mib=1024, cpus=1,
                 disks=(), kernel=None, initrd=None, append=None, network=False, host_forwards=(),
                 reboot=False, extra_args=()):
        """
        workdir: where the serial log (NAME.serial.log), QEMU's stderr and a fresh NVRAM copy go.
        firmware: "uefi" (OVMF, read-only code + writable variable store) or "bios" (QEMU's SeaBIOS).
        nvram: variable store file to use and keep (to boot again with the same boot entries); when None
            a fresh copy of OVMF_VARS_4M.fd is made in workdir.
        network: False gives the VM no NIC at all (OVMF would otherwise spend time on PXE); True gives
            one virtio-net NIC on user-mode networking.
        host_forwards: (host_port, guest_port) pairs forwarded from 127.0.0.1 on the host (needs network).
        reboot: False (default) makes a guest reboot end QEMU (-no-reboot), so a test sees it as an exit
            and can boot the same disk and NVRAM again in a new VM (e.g. without -kernel); True lets
            the guest reboot in place.
        """
        self.workdir = workdir
        self.name = name
        self.firmware = firmware
        self.nvram = nvram
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.disks = list(disks)
        self.kernel = kernel
        self.initrd = initrd
        self.append = append
        self.network = network
        self.host_forwards = list(host_forwards)
        self.reboot = reboot
        self.extra_args = list(extra_args)
        self.serial_log = os.path.join(workdir, name + ".serial.log")
        self.stderr_log = os.path.join(workdir, name + ".qemu.log")
        self.process = None
        self.started_at = None

    def argv(self):
        args = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", str(self.memory_mib),
                "-smp", str(self.cpus), "-nographic", "-monitor", "none",
                "-serial", "file:" + self.serial_log, "-no-user-config"]
        if not self.reboot:
            args.append("-no-reboot")
        if self.firmware == "uefi":
            if self.nvram is None:
                self.nvram = new_nvram(os.path.join(self.workdir, self.name + ".OVMF_VARS.fd"))
            args += ["-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + OVMF_CODE,
                     "-drive", "if=pflash,format=raw,unit=1,file=" + self.nvram]
        elif self.firmware != "bios":
            raise ValueError("firmware must be uefi or bios")
        for i, disk in enumerate(self.disks):
            fmt = disk.format or ("qcow2" if disk.path.endswith(".qcow2") else "raw")
            drive = "file=%s,format=%s,if=none,id=disk%d,cache=unsafe" % (disk.path, fmt, i)
            if disk.readonly:
                drive += ",readonly=on"
            args += ["-drive", drive]
            sizes = ""
            if disk.logical_block_size != 512:
                sizes = ",logical_block_size=%d,physical_block_size=%d" % (
                    disk.logical_block_size, disk.logical_block_size)
            serial = ",serial=" + disk.serial if disk.serial else ""
            if disk.interface == "virtio":
                args += ["-device", "virtio-blk-pci,drive=disk%d%s%s" % (i, sizes, serial)]
            elif disk.interface == "nvme":
                args += ["-device", "nvme,drive=disk%d,serial=%s%s" % (i, disk.serial or "byoi%d" % i,
                                                                       sizes)]
            elif disk.interface == "ahci":
                args += ["-device", "ide-hd,drive=disk%d,bus=ide.%d%s%s" % (i, i, sizes, serial)]
            else:
                raise ValueError("unknown disk interface " + disk.interface)
        if self.network:
            # User-mode networking only. romfile= keeps the NIC's PXE ROM out: no network boot attempts.
            netdev = "user,id=net0"
            for host_port, guest_port in self.host_forwards:
                netdev += ",hostfwd=tcp:127.0.0.1:%d-:%d" % (host_port, guest_port)
            args += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0,romfile="]
        else:
            if self.host_forwards:
                raise ValueError("host_forwards needs network=True")
            args += ["-nic", "none"]
        if self.kernel:
            args += ["-kernel", self.kernel]
            if self.initrd:
                args += ["-initrd", self.initrd]
            if self.append is not None:
                args += ["-append", self.append]
        return args + self.extra_args

    def start(self):
        open(self.serial_log, "wb").close()
        argv = self.argv()
        with open(self.stderr_log, "wb") as err:
            err.write((" ".join(argv) + "\n").encode())
            err.flush()
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                            start_new_session=True)
        self.started_at = time.monotonic()
        return self

    def kill(self):
        """Stops QEMU (if running) and reaps it. Safe to call twice."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.kill()
        return False

    def elapsed(self):
        return time.monotonic() - self.started_at

    def log(self):
        """The serial console so far, decoded leniently, without the terminal's carriage returns."""
        try:
            with open(self.serial_log, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return ""
        return data.decode("utf-8", "replace").replace("\r", "")

    def fail(self, what):
        """Raises VmError: `what`, then the tails of the serial log and of QEMU's own output."""
        tail = self.log()[-4000:]
        try:
            with open(self.stderr_log, errors="replace") as f:
                qemu = f.read()[-2000:]
        except FileNotFoundError:
            qemu = ""
        raise VmError("%s: %s after %.1f s\n--- serial log tail (%s) ---\n%s\n--- qemu ---\n%s" % (
            self.name, what, self.elapsed(), self.serial_log, tail, qemu))

    def wait_for(self, pattern, timeout):
        """Waits until `pattern` (a regex, searched in the whole log, MULTILINE) matches the serial log.

        Returns the match. Raises VmError when `timeout` seconds pass, or when QEMU exits first.
        """
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            m = regex.search(self.log())
            if m:
                return m
            if self.process.poll() is not None:
                m = regex.search(self.log())  # output written just before the exit
                if m:
                    return m
                self.fail("QEMU exited with status %d before /%s/ appeared" % (
                    self.process.returncode, pattern))
            if time.monotonic() > deadline:
                self.fail("/%s/ did not appear within %d s" % (pattern, timeout))
            time.sleep(0.2)

    def wait_exit(self, timeout):
        """Waits for the guest to power off (QEMU exits); returns QEMU's exit status or raises VmError."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.fail("still running %d s later" % timeout)

    def assert_absent(self, pattern):
        if re.search(pattern, self.log(), re.MULTILINE):
            self.fail("/%s/ appeared but must not" % pattern)


def ovmf_loaded_entries(log):
    """(Boot####, label) pairs of OVMF's `BdsDxe: loading Boot0004 "label" from ...` lines, in order."""
    return re.findall(r'BdsDxe: loading (Boot[0-9A-F]{4}) "([^"]*)"', log)


def ovmf_failed_entries(log):
    """(Boot####, label, reason) of OVMF's `BdsDxe: failed to load Boot0001 "label" from ...: reason`."""
    return re.findall(r'BdsDxe: failed to load (Boot[0-9A-F]{4}) "([^"]*)" from [^\n]*: ([^\n]*)', log)
