"""The entries of a `torch.save` zip archive, bounded before anything is read.

`torch.save` writes a zip whose entries all sit under one folder (the file's stem, or
`archive` for a buffer): `data.pkl` (the pickle), `data/<key>` (one per storage, raw
little-endian bytes), `byteorder`, `version`, and in recent releases `.format_version`,
`.storage_alignment` and `.data/serialization_id`. Every entry is STORED (never compressed),
so an archive cannot expand: the sum of its entries' sizes is at most its own length. Any
other layout is refused here, before the pickle or a storage is read. The standard
library's `zipfile` parses the directory once the entry count in the end record is known
to be small.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
from collections.abc import Mapping

import attrs

from core.invalid import InvalidPayload

_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"
_EOCD_SIZE = 22
_MAX_COMMENT = 0xFFFF
_STORAGE = re.compile(r"^data/(0|[1-9][0-9]{0,8})$")
_PREFIX = re.compile(r"^[A-Za-z0-9._+-]{1,128}$")
# Small text records torch writes beside the pickle; their content is checked in `read`.
_RECORDS = ("byteorder", "version", ".format_version", ".storage_alignment",
            ".data/serialization_id", ".data/version")  # fmt: skip
_MAX_RECORD = 64
# one central directory record: 46 bytes, a name under a folder of at most 128 characters,
# and room for a ZIP64 extra field
_MAX_DIRECTORY_RECORD = 46 + 160 + 64


@attrs.frozen
class ArchiveLimits:
    """How large a `torch.save` archive may be before any entry is read."""

    max_entries: int = 4096
    max_entry_bytes: int = 1 << 31
    max_pickle_bytes: int = 1 << 20


@attrs.frozen(eq=False)
class TorchArchive:
    """The checked entries: the pickle's bytes and each storage's bytes by key."""

    prefix: str
    pickle: bytes
    storages: Mapping[str, bytearray] = attrs.field(repr=lambda s: f"<{len(s)} storages>")


def directory(data: bytes) -> tuple[int, int]:
    """(entry count, central directory bytes) as the archive's end record claims them (ZIP64
    aware), read without parsing the directory; `bad_archive` without an end record."""
    tail_start = max(0, len(data) - _EOCD_SIZE - _MAX_COMMENT)
    at = data.rfind(_EOCD, tail_start)
    if at < 0 or at + _EOCD_SIZE > len(data):
        raise InvalidPayload("bad_archive", "no zip end-of-central-directory record")
    total, size = struct.unpack_from("<HI", data, at + 10)
    if total != 0xFFFF and size != 0xFFFFFFFF:
        return total, size
    locator = at - 20
    if locator < 0 or data[locator : locator + 4] != _EOCD64_LOCATOR:
        raise InvalidPayload("bad_archive", "ZIP64 end record without its locator")
    (record,) = struct.unpack_from("<Q", data, locator + 8)
    if record + 56 > len(data) or data[record : record + 4] != _EOCD64:
        raise InvalidPayload("bad_archive", "ZIP64 locator points outside the archive")
    return struct.unpack_from("<QQ", data, record + 32)


def read(data: bytes, limits: ArchiveLimits | None = None) -> TorchArchive:
    """The pickle and storages of a `torch.save` archive; `InvalidPayload` for anything
    else (never another exception)."""
    limits = limits or ArchiveLimits()
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidPayload("not_bytes", f"archive is {type(data).__name__}, not bytes")
    data = bytes(data)
    count, size = directory(data)
    if count > limits.max_entries:
        raise InvalidPayload("too_many_entries", f"{count} entries > {limits.max_entries}")
    # zipfile parses records until the directory's size is used up, whatever the count says
    if size > limits.max_entries * _MAX_DIRECTORY_RECORD:
        raise InvalidPayload("too_many_entries", f"a central directory of {size} bytes")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return _read(zf, len(data), limits)
    except InvalidPayload:
        raise
    except Exception as exc:  # zipfile's BadZipFile, CRC errors, truncation, odd headers
        raise InvalidPayload("bad_archive", f"{type(exc).__name__}: {exc}") from None


def _read(zf: zipfile.ZipFile, size: int, limits: ArchiveLimits) -> TorchArchive:
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise InvalidPayload("too_many_entries", f"{len(infos)} entries > {limits.max_entries}")
    prefix = _check_entries(infos, size, limits)
    by_name = {i.filename[len(prefix) + 1 :]: i for i in infos}
    if "data.pkl" not in by_name:
        raise InvalidPayload("bad_archive", "no data.pkl")
    pkl = by_name["data.pkl"]
    if pkl.file_size > limits.max_pickle_bytes:
        raise InvalidPayload(
            "entry_too_large", f"data.pkl of {pkl.file_size} bytes > {limits.max_pickle_bytes}"
        )
    records = {n: zf.read(by_name[n]) for n in _RECORDS if n in by_name}
    order = records.get("byteorder", b"little")
    if order != b"little":
        raise InvalidPayload("bad_archive", f"byteorder {order[:16]!r}, only little is read")
    if "version" not in records:
        raise InvalidPayload("bad_archive", "no version record")
    for name, text in records.items():
        if name != "byteorder" and not re.fullmatch(rb"[0-9]{1,48}\n?", text):
            raise InvalidPayload("bad_archive", f"record {name} is not a small decimal")
    storages: dict[str, bytearray] = {}
    for name, info in by_name.items():
        match = _STORAGE.match(name)
        if match:
            buf = bytearray(info.file_size)
            with zf.open(info) as f:  # CRC checked at the end of the entry
                got = f.readinto(buf)
                if got != info.file_size or f.read(1):
                    raise InvalidPayload("bad_archive", f"{name} is not {info.file_size} bytes")
            storages[match.group(1)] = buf
    return TorchArchive(prefix=prefix, pickle=zf.read(pkl), storages=storages)


def _check_entries(infos: list[zipfile.ZipInfo], size: int, limits: ArchiveLimits) -> str:
    prefixes = {i.filename.split("/", 1)[0] for i in infos}
    if len(prefixes) != 1:
        raise InvalidPayload("bad_archive", f"entries under {len(prefixes)} top folders, not 1")
    prefix = prefixes.pop()
    if not _PREFIX.match(prefix):
        raise InvalidPayload("bad_archive", "odd archive folder name")
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename[len(prefix) + 1 :]
        if info.filename in seen:
            raise InvalidPayload("bad_archive", f"entry {name!r} appears twice")
        seen.add(info.filename)
        if not info.filename.startswith(prefix + "/") or not (
            name == "data.pkl" or name in _RECORDS or _STORAGE.match(name)
        ):
            raise InvalidPayload("bad_archive", f"unexpected entry {info.filename[:80]!r}")
        if info.flag_bits & 0x1:
            raise InvalidPayload("bad_archive", f"{name} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise InvalidPayload("bad_archive", f"{name} is compressed; torch stores entries")
        if info.file_size > limits.max_entry_bytes:
            raise InvalidPayload(
                "entry_too_large", f"{name} of {info.file_size} bytes > {limits.max_entry_bytes}"
            )
        if name in _RECORDS and info.file_size > _MAX_RECORD:
            raise InvalidPayload("entry_too_large", f"record {name} of {info.file_size} bytes")
        total += info.file_size
    if total > size:  # stored entries cannot hold more than the archive: they overlap
        raise InvalidPayload("bad_archive", f"entries claim {total} bytes in a {size}-byte file")
    return prefix
