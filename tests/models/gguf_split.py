"""Cut a GGUF into parts in llama.cpp's split format (what its ``llama-gguf-split`` writes):
each part is a GGUF of its own holding some of the tensors; the first keeps every key and
value, and every part carries ``split.no`` (u16), ``split.count`` (u16) and
``split.tensors.count`` (i32). Parts are named ``STEM-00001-of-0000N.gguf``, which is how
llama.cpp finds the others from the first. For tests: the hub serves a real model split."""

from __future__ import annotations

import struct
from pathlib import Path

_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> tuple[int, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values

    def string(self) -> bytes:
        (length,) = self.take("Q")
        text = self.data[self.at : self.at + length]
        self.at += length
        return text

    def skip_value(self, kind: int) -> None:
        if kind in _SCALARS:
            self.at += _SCALARS[kind]
        elif kind == STRING:
            self.string()
        elif kind == ARRAY:
            item, count = self.take("IQ")
            for _ in range(count):
                self.skip_value(item)
        else:
            raise ValueError(f"unknown GGUF value type {kind}")


def _string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def _split_keys(index: int, count: int, tensors: int) -> list[bytes]:
    return [
        _string(b"split.no") + struct.pack("<IH", 2, index),
        _string(b"split.count") + struct.pack("<IH", 2, count),
        _string(b"split.tensors.count") + struct.pack("<Ii", 5, tensors),
    ]


def split_gguf(source: Path, folder: Path, stem: str, parts: int) -> list[Path]:
    data = source.read_bytes()
    reader = _Reader(data)
    magic = data[:4]
    reader.at = 4
    version, n_tensors, n_kv = reader.take("IQQ")
    keys: list[bytes] = []
    alignment = 32
    for _ in range(n_kv):
        start = reader.at
        key = reader.string()
        (kind,) = reader.take("I")
        value_at = reader.at
        reader.skip_value(kind)
        if key == b"general.alignment":
            (alignment,) = struct.unpack_from("<I", data, value_at)
        keys.append(data[start : reader.at])
    infos = []
    for _ in range(n_tensors):
        name = reader.string()
        (dims,) = reader.take("I")
        shape = reader.take("Q" * dims)
        kind, offset = reader.take("IQ")
        infos.append((name, shape, kind, offset))
    data_start = -(-reader.at // alignment) * alignment
    offsets = sorted({offset for *_, offset in infos})
    sizes = []
    for *_, offset in infos:
        end = min((o for o in offsets if o > offset), default=len(data) - data_start)
        sizes.append(end - offset)
    per_part = -(-n_tensors // parts)
    paths = []
    for index in range(parts):
        chosen = range(index * per_part, min(n_tensors, (index + 1) * per_part))
        part_keys = (keys if index == 0 else []) + _split_keys(index, parts, n_tensors)
        header = [magic, struct.pack("<IQQ", version, len(chosen), len(part_keys)), *part_keys]
        blobs = []
        offset = 0
        for i in chosen:
            name, shape, kind, source_offset = infos[i]
            header.append(
                _string(name)
                + struct.pack("<I", len(shape))
                + struct.pack("<" + "Q" * len(shape), *shape)
                + struct.pack("<IQ", kind, offset)
            )
            blob = data[data_start + source_offset : data_start + source_offset + sizes[i]]
            padded = blob + b"\0" * (-len(blob) % alignment)
            blobs.append(padded)
            offset += len(padded)
        head = b"".join(header)
        head += b"\0" * (-len(head) % alignment)
        path = folder / f"{stem}-{index + 1:05d}-of-{parts:05d}.gguf"
        path.write_bytes(head + b"".join(blobs))
        paths.append(path)
    return paths
