"""Bootable test disk images, built at test time from Debian packages (no root, no mounts).

UEFI image: a GPT disk with an EFI system partition (FAT32) whose only loader is a GRUB standalone EFI
binary at \\EFI\\byoitest\\grubx64.efi -- deliberately not at the removable-media fallback path
\\EFI\\BOOT\\BOOTX64.EFI, so firmware can boot it only through a Boot#### entry -- and a small Linux
partition. GRUB's embedded grub.cfg prints a marker on the serial console and powers the machine off.

BIOS image: an MBR disk whose 446 bytes of boot code, assembled below from bytes, print a marker on COM1
(I/O port 0x3f8) and halt; its partition table holds one Linux partition so tools see a real disk.

Tools: grub-mkstandalone (grub-efi-amd64-bin), sgdisk (gdisk), mkfs.fat (dosfstools), mtools, qemu-img.
"""

import dataclasses
import os
import shutil
import struct
import subprocess
import tempfile
import uuid
import zlib

MIB = 1024 * 1024
SECTOR = 512

# Fixed identities, so a test can recognise the partitions after the agent rewrote the disk.
DISK_GUID = "5b0c6f3e-2d1a-4c8e-9f60-627965737430"
ESP_GUID = "e5f1a9c2-7b3d-4e6a-8c1f-627965737031"
ROOT_GUID = "0f4d8a6b-3c2e-4b7f-9a15-627965737032"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

LOADER_PATH = "\\EFI\\byoitest\\grubx64.efi"
FALLBACK_PATH = "\\EFI\\BOOT\\BOOTX64.EFI"


def new_marker(kind):
    """A marker no stale log can contain: BYOI-<KIND>-MARKER-<random hex>."""
    return "BYOI-%s-MARKER-%s" % (kind.upper(), uuid.uuid4().hex[:12])


@dataclasses.dataclass
class UefiImage:
    path: str             # raw disk image
    qcow2: str            # qcow2 conversion of it ("" when not asked)
    marker: str           # what GRUB prints on the serial console
    size: int             # bytes
    esp_number: int       # GPT partition number of the ESP (1)
    esp_start: int        # bytes
    esp_size: int         # bytes
    esp_guid: str         # unique partition GUID of the ESP (lower case)
    loader_path: str      # \EFI\byoitest\grubx64.efi
    sector_size: int = 512  # logical sector size the image is made for (512 or 4096)


@dataclasses.dataclass
class BiosImage:
    path: str
    qcow2: str
    marker: str
    size: int


def _run(argv, **kwargs):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          **kwargs)


def build_grub_efi(out_path, marker):
    """Writes a standalone GRUB EFI binary whose embedded grub.cfg prints `marker` and powers off.

    The marker goes to GRUB's own serial terminal (COM1) and to the firmware console (which OVMF also
    mirrors on the serial port), so it shows on the serial log whichever way the firmware is set up.
    """
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "grub.cfg")
        with open(cfg, "w") as f:
            f.write("serial --unit=0 --speed=115200\n"
                    "terminal_output serial\n"
                    "echo \"%s\"\n"
                    "halt\n" % marker)
        _run(["grub-mkstandalone", "-O", "x86_64-efi", "-o", out_path,
              "--locales=", "--fonts=", "--themes=",
              "--install-modules=normal echo serial terminal halt test",
              "boot/grub/grub.cfg=" + cfg])


def _mtools_path(path):
    return "::" + path.replace("\\", "/")


def make_uefi_image(path, marker, *, size_mib=64, fallback=False, startup_nsh=None, qcow2=None,
                    sector_size=512):
    """Builds the UEFI test disk at `path` (raw) and, when `qcow2` is given, its qcow2 conversion.

    fallback=True also copies the loader to \\EFI\\BOOT\\BOOTX64.EFI (then any UEFI firmware boots it with no
    boot entry: used to prove the loader itself works). startup_nsh, if given, is written as \\startup.nsh
    on the ESP (the UEFI shell runs it when no boot option works).
    sector_size=4096 makes an image for a 4Kn disk (GPT and FAT in 4096-byte sectors; the ESP is then
    FAT16, as 40 MiB of 4 KiB clusters are too few for FAT32).
    """
    esp_start, esp_size = 1 * MIB, 40 * MIB
    if size_mib < 48:
        raise ValueError("the UEFI test image needs at least 48 MiB")
    size = size_mib * MIB
    with open(path, "wb") as f:
        f.truncate(size)
    root_size = size - esp_start - esp_size - MIB
    if sector_size == 512:
        _run(["sgdisk", "--clear", "-U", DISK_GUID,
              "-n", "1:%d:+%d" % (esp_start // SECTOR, esp_size // SECTOR), "-t", "1:" + ESP_TYPE,
              "-u", "1:" + ESP_GUID, "-c", "1:EFI system partition",
              "-n", "2:%d:+%d" % ((esp_start + esp_size) // SECTOR, root_size // SECTOR),
              "-t", "2:" + LINUX_TYPE, "-u", "2:" + ROOT_GUID, "-c", "2:byoitest root", path])
        _run(["mkfs.fat", "-F", "32", "-s", "1", "-n", "ESP", "-i", "B0B1E5F1", "--offset",
              str(esp_start // SECTOR), path, str(esp_size // 1024)])
    elif sector_size == 4096:
        ss = sector_size
        write_gpt(path, size, ss, [
            (esp_start // ss, (esp_start + esp_size) // ss - 1, ESP_TYPE, ESP_GUID, "EFI system partition"),
            ((esp_start + esp_size) // ss, (esp_start + esp_size + root_size) // ss - 1, LINUX_TYPE,
             ROOT_GUID, "byoitest root")], DISK_GUID)
        with tempfile.TemporaryDirectory() as tmp:
            fat = os.path.join(tmp, "esp.img")
            _run(["mkfs.fat", "-C", "-S", "4096", "-s", "1", "-F", "16", "-n", "ESP", "-i", "B0B1E5F1", fat,
                  str(esp_size // 1024)])
            with open(fat, "rb") as src, open(path, "r+b") as dst:
                dst.seek(esp_start)
                shutil.copyfileobj(src, dst)
    else:
        raise ValueError("sector_size must be 512 or 4096")
    image = "%s@@%d" % (path, esp_start)
    with tempfile.TemporaryDirectory() as tmp:
        loader = os.path.join(tmp, "grubx64.efi")
        build_grub_efi(loader, marker)
        env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
        _run(["mmd", "-i", image, "::/EFI", "::/EFI/byoitest"], env=env)
        _run(["mcopy", "-i", image, loader, _mtools_path(LOADER_PATH)], env=env)
        if fallback:
            _run(["mmd", "-i", image, "::/EFI/BOOT"], env=env)
            _run(["mcopy", "-i", image, loader, _mtools_path(FALLBACK_PATH)], env=env)
        if startup_nsh is not None:
            nsh = os.path.join(tmp, "startup.nsh")
            with open(nsh, "w", newline="\r\n") as f:
                f.write(startup_nsh)
            _run(["mcopy", "-i", image, nsh, "::/startup.nsh"], env=env)
    out_qcow2 = ""
    if qcow2:
        to_qcow2(path, qcow2)
        out_qcow2 = qcow2
    return UefiImage(path=path, qcow2=out_qcow2, marker=marker, size=size, esp_number=1,
                     esp_start=esp_start, esp_size=esp_size, esp_guid=ESP_GUID, loader_path=LOADER_PATH,
                     sector_size=sector_size)


def write_gpt(path, size, sector_size, partitions, disk_guid):
    """Writes a protective MBR and primary + backup GPT for `partitions` into the file `path` of `size`
    bytes, for any logical sector size (sgdisk assumes 512-byte sectors on a regular file).

    partitions: [(first LBA, last LBA, type GUID, unique GUID, name)], in units of sector_size.
    """
    lbas = size // sector_size
    entry_count, entry_size = 128, 128
    entries_lbas = entry_count * entry_size // sector_size
    entries = bytearray(entry_count * entry_size)
    for i, (first, last, type_guid, part_guid, name) in enumerate(partitions):
        struct.pack_into("<16s16sQQQ72s", entries, i * entry_size, uuid.UUID(type_guid).bytes_le,
                         uuid.UUID(part_guid).bytes_le, first, last, 0, name.encode("utf-16-le"))
    entries_crc = zlib.crc32(entries)

    def header(my_lba, alternate_lba, entries_lba):
        fields = [b"EFI PART", 0x00010000, 92, 0, 0, my_lba, alternate_lba, 2 + entries_lbas,
                  lbas - 2 - entries_lbas, uuid.UUID(disk_guid).bytes_le, entries_lba, entry_count,
                  entry_size, entries_crc]
        raw = struct.pack("<8sIIIIQQQQ16sQIII", *fields)
        fields[3] = zlib.crc32(raw)
        return struct.pack("<8sIIIIQQQQ16sQIII", *fields).ljust(sector_size, b"\0")

    mbr = bytearray(sector_size)
    struct.pack_into("<B3sB3sII", mbr, 446, 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1,
                     min(lbas - 1, 0xFFFFFFFF))
    mbr[510:512] = b"\x55\xaa"
    with open(path, "r+b") as f:
        f.seek(0)
        f.write(mbr)
        f.write(header(1, lbas - 1, 2))
        f.write(entries)
        f.seek((lbas - 1 - entries_lbas) * sector_size)
        f.write(entries)
        f.write(header(lbas - 1, 1, lbas - 1 - entries_lbas))


def mbr_boot_code(marker):
    """16-bit real-mode boot code (loaded at 0x7c00) that prints `marker` + CRLF on COM1 and halts.

    Returns at most 440 bytes (what fits before the disk signature).
    """
    message = marker.encode("ascii") + b"\r\n\0"
    code = bytearray()
    code += b"\xfa"                      # cli
    code += b"\x31\xc0"                  # xor ax, ax
    code += b"\x8e\xd8"                  # mov ds, ax
    code += b"\x8e\xd0"                  # mov ss, ax
    code += b"\xbc\x00\x7c"              # mov sp, 0x7c00
    code += b"\xfc"                      # cld
    # 16550 UART at 0x3f8: 115200 8N1, no interrupts.
    for port, value in ((0x3F9, 0x00), (0x3FB, 0x80), (0x3F8, 0x01), (0x3F9, 0x00), (0x3FB, 0x03)):
        code += b"\xba" + struct.pack("<H", port)  # mov dx, port
        code += b"\xb0" + bytes([value])           # mov al, value
        code += b"\xee"                            # out dx, al
    mov_si = len(code)
    code += b"\xbe\x00\x00"              # mov si, message (patched below)
    next_char = len(code)
    code += b"\xac"                      # next_char: lodsb
    code += b"\x84\xc0"                  # test al, al
    jz_done = len(code)
    code += b"\x74\x00"                  # jz done (patched below)
    code += b"\x88\xc3"                  # mov bl, al
    wait = len(code)
    code += b"\xba\xfd\x03"              # wait: mov dx, 0x3fd (line status)
    code += b"\xec"                      # in al, dx
    code += b"\xa8\x20"                  # test al, 0x20 (transmit holding register empty)
    code += b"\x74" + struct.pack("<b", wait - (len(code) + 2))      # jz wait
    code += b"\xba\xf8\x03"              # mov dx, 0x3f8
    code += b"\x88\xd8"                  # mov al, bl
    code += b"\xee"                      # out dx, al
    code += b"\xeb" + struct.pack("<b", next_char - (len(code) + 2))  # jmp next_char
    done = len(code)
    code += b"\xfa\xf4"                  # done: cli; hlt
    code += b"\xeb" + struct.pack("<b", done - (len(code) + 2))       # jmp done
    code[jz_done + 1] = done - (jz_done + 2)
    struct.pack_into("<H", code, mov_si + 1, 0x7C00 + len(code))
    code += message
    if len(code) > 440:
        raise ValueError("marker too long for the boot sector")
    return bytes(code)


def make_bios_image(path, marker, *, size_mib=16, qcow2=None):
    """Builds the legacy BIOS test disk: MBR boot code printing `marker`, one Linux partition (type 0x83)."""
    size = size_mib * MIB
    mbr = bytearray(SECTOR)
    code = mbr_boot_code(marker)
    mbr[:len(code)] = code
    struct.pack_into("<I", mbr, 440, 0x42594F49)  # disk signature "IOYB"
    start = 2048
    count = size // SECTOR - start
    # status, CHS first (unused: 0xfe,0xff,0xff = beyond CHS), type, CHS last, LBA start, sector count
    entry = struct.pack("<B3sB3sII", 0x00, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", start, count)
    mbr[446:446 + 16] = entry
    mbr[510:512] = b"\x55\xaa"
    with open(path, "wb") as f:
        f.write(mbr)
        f.truncate(size)
    out_qcow2 = ""
    if qcow2:
        to_qcow2(path, qcow2)
        out_qcow2 = qcow2
    return BiosImage(path=path, qcow2=out_qcow2, marker=marker, size=size)


def to_qcow2(raw, out):
    _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out])


def tools_missing():
    """Names of the tools this module needs that are not installed (for skip messages)."""
    return [t for t in ("grub-mkstandalone", "sgdisk", "mkfs.fat", "mmd", "mcopy", "qemu-img")
            if shutil.which(t) is None and not os.path.exists("/usr/sbin/" + t)]
