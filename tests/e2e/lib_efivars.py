"""UEFI variables for the tests and the demo: boot entries read from an efivarfs-style directory or from an
OVMF variable store file, decoded (EFI_LOAD_OPTION and its device path, BootOrder), and an efivarfs-style
directory turned into an OVMF NVRAM file that QEMU can boot with.

An efivarfs-style directory holds one file per variable, named NAME-VENDORGUID, whose content is the
4-byte little-endian attributes followed by the data (what Linux's efivarfs shows, and what
`byoi-agent --efivars DIR` writes in a scratch directory).

An OVMF variable store (OVMF_VARS_4M.fd) is a firmware volume whose first block holds a
VARIABLE_STORE_HEADER (authenticated format) followed by variables, each an AUTHENTICATED_VARIABLE_HEADER
(60 bytes, packed), its UTF-16 name and its data, each variable starting on a 4-byte boundary
(EDK2 MdeModulePkg/Include/Guid/VariableFormat.h). Only variables whose state is VAR_ADDED are live.

    entries = read_efivars_dir(path)                 # {name: (attributes, data)} for the global GUID
    show_boot_entries(entries)                       # printable lines: BootOrder, BootNext, Boot####
    efivars_to_ovmf(path, "/usr/share/OVMF/OVMF_VARS_4M.fd", "out.fd")
    entries = read_ovmf_vars("out.fd")
"""

import os
import re
import struct
import uuid

EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
AUTHENTICATED_VARIABLE_GUID = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792")
VARIABLE_DATA = 0x55AA
VAR_ADDED = 0x3F
VAR_DELETED = 0xFD
AUTH_HEADER = struct.Struct("<HBBIQ16sIII16s")  # 60 bytes
STORE_HEADER = struct.Struct("<16sIBBHI")       # 28 bytes
BOOT_VARIABLE = re.compile(r"^(Boot[0-9A-F]{4}|BootOrder|BootNext|BootCurrent|Timeout)$")


def read_efivars_dir(path, vendor=EFI_GLOBAL_VARIABLE):
    """{name: (attributes, data)} of the variables of `vendor` in an efivarfs-style directory."""
    out = {}
    suffix = "-" + vendor
    for entry in sorted(os.listdir(path)):
        if not entry.lower().endswith(suffix):
            continue
        with open(os.path.join(path, entry), "rb") as f:
            raw = f.read()
        if len(raw) < 4:
            raise ValueError("%s: shorter than its 4-byte attributes" % entry)
        out[entry[:-len(suffix)]] = (struct.unpack_from("<I", raw)[0], raw[4:])
    return out


def _store_bounds(fd_bytes):
    """(offset of the first variable, end offset of the variable area) in an OVMF variable store file."""
    if fd_bytes[40:44] != b"_FVH":
        raise ValueError("not a firmware volume (no _FVH signature)")
    header_length = struct.unpack_from("<H", fd_bytes, 48)[0]
    guid, size, fmt, state, _, _ = STORE_HEADER.unpack_from(fd_bytes, header_length)
    if uuid.UUID(bytes_le=guid) != AUTHENTICATED_VARIABLE_GUID:
        raise ValueError("not an authenticated variable store (store GUID %s)" % uuid.UUID(bytes_le=guid))
    if fmt != 0x5A or state != 0xFE:
        raise ValueError("variable store not formatted or not healthy (format %#x, state %#x)" % (fmt, state))
    start = header_length + STORE_HEADER.size
    return (start + 3) & ~3, header_length + size


def _variables(fd_bytes):
    """Yields (offset, state, attributes, name, vendor GUID string, data, next offset) of every
    variable record in the store, live or not."""
    offset, end = _store_bounds(fd_bytes)
    while offset + AUTH_HEADER.size <= end:
        (start_id, state, _, attributes, _, _, _, name_size, data_size,
         vendor) = AUTH_HEADER.unpack_from(fd_bytes, offset)
        if start_id != VARIABLE_DATA:
            return
        name_at = offset + AUTH_HEADER.size
        name = fd_bytes[name_at:name_at + name_size].decode("utf-16-le").rstrip("\0")
        data_at = name_at + name_size
        data = bytes(fd_bytes[data_at:data_at + data_size])
        following = (data_at + data_size + 3) & ~3
        yield offset, state, attributes, name, str(uuid.UUID(bytes_le=vendor)), data, following
        offset = following


def read_ovmf_vars(path, vendor=EFI_GLOBAL_VARIABLE):
    """{name: (attributes, data)} of the live variables of `vendor` in an OVMF variable store file."""
    with open(path, "rb") as f:
        fd_bytes = f.read()
    out = {}
    for _, state, attributes, name, guid, data, _ in _variables(fd_bytes):
        if state == VAR_ADDED and guid == vendor:
            out[name] = (attributes, data)
    return out


def efivars_to_ovmf(efivars_dir, template, out_path, vendor=EFI_GLOBAL_VARIABLE):
    """Writes `out_path`: a copy of the OVMF variable store `template` with the boot variables of the
    efivarfs-style directory added (a variable of the same name already in the store is marked deleted
    first, as the firmware itself does). Returns the names added."""
    with open(template, "rb") as f:
        fd_bytes = bytearray(f.read())
    wanted = {name: value for name, value in read_efivars_dir(efivars_dir, vendor).items()
              if BOOT_VARIABLE.match(name)}
    free, end = _store_bounds(fd_bytes)
    for offset, state, _, name, guid, _, following in _variables(fd_bytes):
        if state == VAR_ADDED and guid == vendor and name in wanted:
            fd_bytes[offset + 2] = VAR_DELETED & state
        free = following
    vendor_bytes = uuid.UUID(vendor).bytes_le
    for name, (attributes, data) in sorted(wanted.items()):
        encoded = (name + "\0").encode("utf-16-le")
        record = AUTH_HEADER.pack(VARIABLE_DATA, VAR_ADDED, 0, attributes, 0, bytes(16), 0, len(encoded),
                                  len(data), vendor_bytes) + encoded + data
        if free + len(record) > end:
            raise ValueError("%s: the variable store is full" % template)
        if any(b != 0xFF for b in fd_bytes[free:free + len(record)]):
            raise ValueError("%s: the free space of the variable store is not erased" % template)
        fd_bytes[free:free + len(record)] = record
        free = (free + len(record) + 3) & ~3
    with open(out_path, "wb") as f:
        f.write(fd_bytes)
    return sorted(wanted)


def _utf16z(data, offset):
    """(string, offset after its NUL) of a NUL-terminated UTF-16LE string at `offset`."""
    end = offset
    while end + 1 < len(data) and data[end:end + 2] != b"\0\0":
        end += 2
    return data[offset:end].decode("utf-16-le", "replace"), end + 2


def _guid(raw):
    return str(uuid.UUID(bytes_le=bytes(raw))).upper()


def decode_device_path(data):
    """The UEFI text form of a device path (the nodes the tests meet; others as their type numbers)."""
    nodes = []
    offset = 0
    while offset + 4 <= len(data):
        node_type, subtype, length = struct.unpack_from("<BBH", data, offset)
        if length < 4:
            nodes.append("<bad node length %d>" % length)
            break
        body = data[offset + 4:offset + length]
        offset += length
        if node_type == 0x7F and subtype == 0xFF:
            break
        if node_type == 0x7F:
            nodes.append("<end instance>")
        elif node_type == 4 and subtype == 1 and len(body) >= 38:
            number, start, size = struct.unpack_from("<IQQ", body)
            signature, sig_type = body[20:36], body[37]
            if sig_type == 2:
                sig = "GPT," + _guid(signature)
            elif sig_type == 1:
                sig = "MBR,0x%08X" % struct.unpack_from("<I", signature)[0]
            else:
                sig = "%d,0" % sig_type
            nodes.append("HD(%d,%s,0x%X,0x%X)" % (number, sig, start, size))
        elif node_type == 4 and subtype == 4:
            nodes.append(bytes(body).decode("utf-16-le", "replace").rstrip("\0"))
        elif node_type == 1 and subtype == 1 and len(body) >= 2:
            nodes.append("Pci(0x%X,0x%X)" % (body[1], body[0]))
        elif node_type == 2 and subtype == 1 and len(body) >= 8:
            hid, uid = struct.unpack_from("<II", body)
            if hid & 0xFFFF == 0x41D0 and hid >> 16 in (0x0A03, 0x0A08):  # EISA PNP0A03/PNP0A08
                nodes.append("PciRoot(0x%X)" % uid)
            else:
                nodes.append("Acpi(0x%08X,0x%X)" % (hid, uid))
        elif node_type == 3 and subtype == 18 and len(body) >= 6:
            nodes.append("Sata(0x%X,0x%X,0x%X)" % struct.unpack_from("<HHH", body))
        elif node_type == 4 and subtype == 6 and len(body) >= 16:
            nodes.append("FvFile(%s)" % _guid(body[:16]))
        elif node_type == 4 and subtype == 7 and len(body) >= 16:
            nodes.append("Fv(%s)" % _guid(body[:16]))
        else:
            nodes.append("Path(%d,%d,%s)" % (node_type, subtype, bytes(body).hex()))
    return "/".join(nodes)


def decode_load_option(data):
    """{'attributes', 'active', 'label', 'device_path' (text), 'optional_data'} of an EFI_LOAD_OPTION."""
    attributes, path_length = struct.unpack_from("<IH", data)
    label, offset = _utf16z(data, 6)
    path = data[offset:offset + path_length]
    return {"attributes": attributes, "active": bool(attributes & 1), "label": label,
            "device_path": decode_device_path(path), "optional_data": bytes(data[offset + path_length:])}


def boot_order(entries, name="BootOrder"):
    """['Boot0003', ...] from BootOrder (or BootNext) in `entries`, [] when absent."""
    if name not in entries:
        return []
    data = entries[name][1]
    return ["Boot%04X" % n for n in struct.unpack("<%dH" % (len(data) // 2), data[:len(data) // 2 * 2])]


def boot_entries(entries):
    """{'Boot0003': decoded load option} for every Boot#### in `entries`."""
    return {name: decode_load_option(value[1]) for name, value in sorted(entries.items())
            if re.match(r"^Boot[0-9A-F]{4}$", name)}


def show_boot_entries(entries):
    """Lines like efibootmgr -v prints: BootNext, BootOrder, then one line per Boot####."""
    lines = []
    if "BootNext" in entries:
        lines.append("BootNext: %s" % ",".join(b[4:] for b in boot_order(entries, "BootNext")))
    lines.append("BootOrder: %s" % (",".join(b[4:] for b in boot_order(entries)) or "(none)"))
    for name, option in boot_entries(entries).items():
        lines.append("%s%s %s\t%s" % (name, "*" if option["active"] else " ", option["label"],
                                      option["device_path"]))
    return lines
