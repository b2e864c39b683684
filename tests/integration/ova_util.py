"""Shared helpers of the OVA/VMDK tests: VMDKs made with qemu-img at test time (and, for the
footer that VMware's own stream-optimized files carry, written here from a raw disk), OVF
descriptors and `.mf` manifests written as ovftool writes them, OVAs packed with python's tarfile
or GNU tar, and a small VMDK reader for patching crafted files with struct. Never checks in a
binary image."""

import hashlib
import io
import os
import struct
import tarfile
import zlib

from conformance_util import qemu_img, read, run

SECTOR = 512
GD_AT_END = 0xFFFFFFFFFFFFFFFF
MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = 0, 1, 2, 3
STREAM_FORMAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
SPARSE_FORMAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#monolithicSparse"


def vmdk_from_raw(raw, out, subformat="streamOptimized", **opts):
    """qemu-img convert -f raw -O vmdk -o subformat=..."""
    options = ",".join([f"subformat={subformat}"] + [f"{k}={v}" for k, v in opts.items()])
    qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", options, raw, out)
    return out


HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")


class Vmdk:
    """Just enough of a hosted sparse VMDK to find and patch its header, grain directory, tables
    and grain markers."""

    def __init__(self, path):
        self.path = path
        self.data = bytearray(read(path))
        self.header_at = 0
        if struct.unpack_from("<Q", self.data, 56)[0] == GD_AT_END:
            self.header_at = len(self.data) // SECTOR * SECTOR - 2 * SECTOR  # the footer's copy
        (magic, self.version, self.flags, self.capacity, self.granularity, self.desc_offset,
         self.desc_size, self.gtes, self.rgd_offset, self.gd_offset, self.grain_offset, _, _,
         self.compression) = HEADER.unpack_from(self.data, self.header_at)
        assert magic == b"KDMV", magic
        self.grain = self.granularity * SECTOR
        coverage = self.gtes * self.grain
        self.gd_entries = (self.capacity * SECTOR + coverage - 1) // coverage

    def u32(self, offset):
        return struct.unpack_from("<I", self.data, offset)[0]

    def set_u32(self, offset, value):
        struct.pack_into("<I", self.data, offset, value)

    def set_u64(self, offset, value):
        struct.pack_into("<Q", self.data, offset, value)

    def gd_entry_offset(self, index):
        return self.gd_offset * SECTOR + 4 * index

    def gt_offset(self, index):
        return self.u32(self.gd_entry_offset(index)) * SECTOR

    def gte_offset(self, grain_index):
        """Offset of the table entry of the virtual disk's grain `grain_index`."""
        table, entry = divmod(grain_index, self.gtes)
        return self.gt_offset(table) + 4 * entry

    def grains(self):
        """(grain index, sector of its data or marker) for every allocated grain."""
        for table in range(self.gd_entries):
            gt = self.gt_offset(table)
            if gt == 0:
                continue
            for entry in range(self.gtes):
                sector = self.u32(gt + 4 * entry)
                if sector > 1:
                    yield table * self.gtes + entry, sector

    def save(self, path=None):
        with open(path or self.path, "wb") as f:
            f.write(self.data)


def vmware_stream(raw, out, granularity=128, gtes=512, deflate=zlib.compress):
    """A stream-optimized VMDK as VMware writes it, which qemu-img does not: the header's grain
    directory offset is GD_AT_END, every grain table follows its grains behind a marker, then the
    directory behind its marker, the footer (a copy of the header with the real offsets) and the
    end-of-stream marker. All-zero grains are left out. `deflate(grain index, bytes)` makes a
    grain's stream (zlib by default; a test gives a bad one)."""
    data = read(raw)
    capacity = (len(data) + SECTOR - 1) // SECTOR
    grain = granularity * SECTOR
    coverage = gtes * grain
    gd_entries = (capacity * SECTOR + coverage - 1) // coverage
    descriptor = (f'# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
                  f'createType="streamOptimized"\n\nRW {capacity} SPARSE "{os.path.basename(out)}"\n'
                  ).encode()
    desc_sectors = 20

    def header(gd_offset):
        return HEADER.pack(b"KDMV", 3, 0x30001, capacity, granularity, 1, desc_sectors, gtes, 0,
                           gd_offset, 1 + desc_sectors, 0, b"\n \r\n", 1).ljust(SECTOR, b"\0")

    def marker(value, kind):
        return struct.pack("<QII", value, 0, kind).ljust(SECTOR, b"\0")

    f = io.BytesIO()
    f.write(header(GD_AT_END))
    f.write(descriptor.ljust(desc_sectors * SECTOR, b"\0"))
    gd = [0] * gd_entries
    for table in range(gd_entries):
        gt = [0] * gtes
        for entry in range(gtes):
            start = (table * gtes + entry) * grain
            if start >= len(data):
                break
            chunk = data[start:start + grain]
            if not chunk.strip(b"\0"):
                continue
            chunk = chunk.ljust(min(grain, capacity * SECTOR - start), b"\0")
            gt[entry] = f.tell() // SECTOR
            stream = (zlib.compress(chunk) if deflate is zlib.compress
                      else deflate(table * gtes + entry, chunk))
            f.write((struct.pack("<QI", start // SECTOR, len(stream)) + stream).ljust(
                (12 + len(stream) + SECTOR - 1) // SECTOR * SECTOR, b"\0"))
        if any(gt):
            table_bytes = struct.pack(f"<{gtes}I", *gt)
            sectors = (len(table_bytes) + SECTOR - 1) // SECTOR
            f.write(marker(sectors, MARKER_GT))
            gd[table] = f.tell() // SECTOR
            f.write(table_bytes.ljust(sectors * SECTOR, b"\0"))
    gd_bytes = struct.pack(f"<{gd_entries}I", *gd)
    sectors = (len(gd_bytes) + SECTOR - 1) // SECTOR
    f.write(marker(sectors, MARKER_GD))
    gd_offset = f.tell() // SECTOR
    f.write(gd_bytes.ljust(sectors * SECTOR, b"\0"))
    f.write(marker(1, MARKER_FOOTER))
    f.write(header(gd_offset))
    f.write(marker(0, MARKER_EOS))
    with open(out, "wb") as o:
        o.write(f.getvalue())
    return out


def ovf_descriptor(disks, system="appliance", blank_first=False, ovf2=False):
    """An OVF descriptor as ovftool writes one: References, DiskSection, a NetworkSection, then one
    VirtualSystem whose VirtualHardwareSection has a SCSI controller and the disks in order.
    `disks` are (name in the archive, size, capacity in bytes, format URI). `blank_first` adds a
    blank disk (no file) attached before the others."""
    ns = "http://schemas.dmtf.org/ovf/envelope/" + ("2" if ovf2 else "1")
    refs, section, items = [], [], []
    if blank_first:
        section.append('<Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^30" '
                       'ovf:diskId="blank" ovf:format="%s"/>' % STREAM_FORMAT)
        items.append(hard_disk_item("blank", 0, 9))
    for i, (name, size, capacity, fmt) in enumerate(disks, 1):
        refs.append(f'<File ovf:href="{name}" ovf:id="file{i}" ovf:size="{size}"/>')
        section.append(f'<Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" '
                       f'ovf:diskId="vmdisk{i}" ovf:fileRef="file{i}" ovf:format="{fmt}" '
                       f'ovf:populatedSize="{size}"/>')
        items.append(hard_disk_item(f"vmdisk{i}", i, 9 + i))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!--Generated by VMware ovftool 4.4.3 (build-18663434), UTC time: 2026-12-05T12:00:00Z-->
<Envelope vmw:buildId="build-18663434" xmlns="{ns}" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="{ns}" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    {"".join(refs)}
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    {"".join(section)}
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"><Description>The VM Network network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{system}">
    <Info>A virtual machine</Info>
    <Name>{system}</Name>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian10_64Guest"><Info>The kind of installed guest operating system</Info></OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{system}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>2 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      {"".join(items)}
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def hard_disk_item(disk_id, address, instance):
    return (f"<Item><rasd:AddressOnParent>{address}</rasd:AddressOnParent>"
            f"<rasd:ElementName>Hard disk {address + 1}</rasd:ElementName>"
            f"<rasd:HostResource>ovf:/disk/{disk_id}</rasd:HostResource>"
            f"<rasd:InstanceID>{instance}</rasd:InstanceID><rasd:Parent>3</rasd:Parent>"
            f"<rasd:ResourceType>17</rasd:ResourceType></Item>")


def digest_line(algo, name, data):
    return f"{algo.upper()}({name})= {hashlib.new(algo, data).hexdigest()}\n"


def make_ova(out, disks, algo="sha256", manifest="first", tar_format=tarfile.USTAR_FORMAT,
             ovf=None, name="appliance", extra=(), mangle=None):
    """Packs an OVA as ovftool does: NAME.ovf, NAME.mf (when `manifest` is "first"; "last" puts it
    after the disks, None leaves it out), then the disk files in References order. `disks` are
    paths of VMDKs (their base names are the members' names); `ovf` replaces the descriptor's
    text; `extra` are (name, bytes) members added after the disks; `mangle(members)` may edit the
    list of (name, bytes) before packing."""
    members = []
    entries = []
    for path in disks:
        data = read(path)
        v = Vmdk(path) if data[:4] == b"KDMV" else None
        capacity = v.capacity * SECTOR if v else len(data)
        fmt = STREAM_FORMAT if v is None or v.compression == 1 else SPARSE_FORMAT
        entries.append((os.path.basename(path), len(data), capacity, fmt))
        members.append((os.path.basename(path), data))
    descriptor = (ovf if ovf is not None else ovf_descriptor(entries, name)).encode()
    files = [(f"{name}.ovf", descriptor)] + members + list(extra)
    if manifest:
        mf = "".join(digest_line(algo, n, d) for n, d in files).encode()
        at = 1 if manifest == "first" else len(files)
        files.insert(at, (f"{name}.mf", mf))
    if mangle:
        files = mangle(files)
    with tarfile.open(out, "w", format=tar_format) as t:
        for member, data in files:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            info.mode = 0o644
            info.uname = info.gname = "someone"
            t.addfile(info, io.BytesIO(data))
    return out


def make_ova_with_gnu_tar(out, workdir, disks, tar_format="posix", algo="sha256"):
    """The same layout packed by GNU tar (`--format=ustar|posix|gnu`), from files in `workdir`."""
    names = []
    entries = []
    for path in disks:
        v = Vmdk(path)
        fmt = STREAM_FORMAT if v.compression == 1 else SPARSE_FORMAT
        entries.append((os.path.basename(path), os.path.getsize(path), v.capacity * SECTOR, fmt))
        names.append(os.path.basename(path))
    ovf = os.path.join(workdir, "appliance.ovf")
    with open(ovf, "w") as f:
        f.write(ovf_descriptor(entries))
    with open(os.path.join(workdir, "appliance.mf"), "w") as f:
        for n in ["appliance.ovf"] + names:
            f.write(digest_line(algo, n, read(os.path.join(workdir, n))))
    run("tar", f"--format={tar_format}", "-C", workdir, "-cf", out, "appliance.ovf",
        "appliance.mf", *names)
    return out


def extract(ova, member, out):
    with tarfile.open(ova) as t:
        with open(out, "wb") as f:
            f.write(t.extractfile(member).read())
    return out


def member_offset(ova, member):
    """Offset of `member`'s data in the archive."""
    with tarfile.open(ova) as t:
        return t.getmember(member).offset_data


def header_offset(ova, member):
    with tarfile.open(ova) as t:
        return t.getmember(member).offset
