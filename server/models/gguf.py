"""A GGUF file's metadata, read without loading the model (for Ollama's /api/show and
/api/tags, which describe models that may not be loaded).

Only scalar and string values are kept; arrays (the tokenizer's vocabulary, tens of thousands
of strings) are skipped over, not read into memory. Every length is bounded, so a damaged or
hostile file ends the read with an error instead of a huge allocation.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"GGUF"
# Bounds on what a header may declare, far above any real model's.
MAX_KEYS = 1 << 16
MAX_STRING = 1 << 24
MAX_ARRAY = 1 << 28

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9

# llama.cpp's file types (general.file_type), as Ollama names quantization levels.
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}


class GGUFError(ValueError):
    """The file is not a GGUF, or its header is damaged."""


def read_metadata(path: Path) -> dict[str, Any]:
    """The file's metadata keys with scalar or string values (arrays are left out)."""
    with path.open("rb") as f:
        if f.read(4) != MAGIC:
            raise GGUFError(f"{path} is not a GGUF file")
        version, _tensors, count = struct.unpack("<IQQ", _exactly(f, 20))
        if version < 2 or count > MAX_KEYS:
            raise GGUFError(f"{path}: unsupported GGUF version {version} or {count} keys")
        metadata: dict[str, Any] = {}
        for _ in range(count):
            key = _string(f)
            (kind,) = struct.unpack("<I", _exactly(f, 4))
            if kind == _ARRAY:
                _skip_array(f)
            else:
                metadata[key] = _value(f, kind)
        return metadata


def _exactly(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise GGUFError("the GGUF header ends early")
    return data


def _string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", _exactly(f, 8))
    if length > MAX_STRING:
        raise GGUFError("a GGUF string is too long")
    return _exactly(f, length).decode("utf-8", errors="replace")


def _value(f: BinaryIO, kind: int) -> Any:
    if kind == _STRING:
        return _string(f)
    form = _SCALARS.get(kind)
    if form is None:
        raise GGUFError(f"unknown GGUF value type {kind}")
    return struct.unpack(form, _exactly(f, struct.calcsize(form)))[0]


def _skip_array(f: BinaryIO) -> None:
    kind, length = struct.unpack("<IQ", _exactly(f, 12))
    if length > MAX_ARRAY:
        raise GGUFError("a GGUF array is too long")
    if kind == _STRING:
        for _ in range(length):
            (size,) = struct.unpack("<Q", _exactly(f, 8))
            if size > MAX_STRING:
                raise GGUFError("a GGUF string is too long")
            f.seek(size, 1)
    elif kind in _SCALARS:
        f.seek(struct.calcsize(_SCALARS[kind]) * length, 1)
    else:
        raise GGUFError(f"unsupported GGUF array of type {kind}")


def quantization(metadata: dict[str, Any]) -> str:
    file_type = metadata.get("general.file_type")
    return FILE_TYPES.get(file_type, "unknown") if isinstance(file_type, int) else "unknown"


_SPLIT_PART = re.compile(r"^(?P<stem>.+)-00001-of-(?P<count>\d{5})\.gguf$")


def gguf_size(path: Path) -> int:
    """The bytes of a GGUF: of every part, where ``path`` is the first of a split one
    (``...-00001-of-00003.gguf``, llama.cpp's naming)."""
    size = path.stat().st_size
    split = _SPLIT_PART.match(path.name)
    if split is None:
        return size
    for part in range(2, int(split.group("count")) + 1):
        other = path.with_name(f"{split.group('stem')}-{part:05d}-of-{split.group('count')}.gguf")
        if other.is_file():
            size += other.stat().st_size
    return size


def has_chat_template(path: Path) -> bool:
    """Whether the GGUF at ``path`` carries a chat template (False when it cannot be read)."""
    try:
        return bool(read_metadata(path).get("tokenizer.chat_template"))
    except (GGUFError, OSError):
        return False
