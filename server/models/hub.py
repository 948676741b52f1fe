"""Models on Hugging Face: ``hf:user/repo[:QUANT][@revision]``, or ``hf.co/user/repo:QUANT``
as Ollama writes it.

The repo's files come from the hub's tree API (``GET {endpoint}/api/models/{repo}/tree/
{revision}?recursive=true``, following its ``Link: <...>; rel="next"`` pages); each file is
fetched from ``{endpoint}/{repo}/resolve/{revision}/{path}`` (which redirects to a CDN) and
checked against the sha256 the tree gives for LFS files (``lfs.oid``). The GGUF is chosen by
its quantization (the ``Q4_K_M`` in its name); a model split in parts
(``...-00001-of-00003.gguf``) is fetched whole and loaded from its first part. A
``chat_template.jinja`` in the repo is fetched too, for a GGUF that carries no template.

``HF_TOKEN`` (or ``--hf-token``) is sent as ``Authorization: Bearer``, for gated and private
repos; ``HF_ENDPOINT`` points at a mirror instead of https://huggingface.co.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx

from server.errors import ModelSourceError
from server.models.download import ProgressFor, RemoteFile, fetch, open_stream, read_limited

DEFAULT_ENDPOINT = "https://huggingface.co"
# The quantization picked when a reference names none (llama.cpp's and Ollama's choice).
DEFAULT_QUANT = "Q4_K_M"
TEMPLATE_FILE = "chat_template.jinja"
# Pages of the tree API followed at most (1,000 files each), and the bytes of one.
MAX_PAGES = 50
MAX_LISTING = 16 << 20

_REPO = r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
_REFERENCE = re.compile(
    rf"^(?:hf:|(?:https?://)?(?:hf\.co|huggingface\.co)/)(?P<repo>{_REPO})"
    r"(?::(?P<quant>[A-Za-z0-9_.-]+))?(?:@(?P<revision>[A-Za-z0-9_-][A-Za-z0-9._-]*"
    r"(?:/[A-Za-z0-9_-][A-Za-z0-9._-]*)*))?$"
)
# A quantization in a file's name: Q4_K_M, IQ4_XS, Q8_0, BF16, F16, Q4_0_4_4, TQ1_0...
_QUANT = re.compile(
    r"(?<![A-Za-z0-9])((?:I?Q[1-8](?:_[A-Z0-9]+)*)|TQ[12]_0|BF16|F16|F32|MXFP4(?:_MOE)?)"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass(frozen=True)
class HubReference:
    repo: str
    quant: str | None = None
    revision: str = "main"

    @property
    def name(self) -> str:
        """The model's name, as Ollama calls models from the hub (``:latest`` where no
        quantization is named), with the revision where it is not ``main``."""
        name = f"hf.co/{self.repo}:{self.quant or 'latest'}"
        return name if self.revision == "main" else f"{name}@{self.revision}"


def parse_reference(text: str) -> HubReference | None:
    """The reference in ``text``, or None when it names no Hugging Face repo."""
    match = _REFERENCE.match(text.strip())
    if match is None:
        return None
    return HubReference(
        match.group("repo"), match.group("quant"), match.group("revision") or "main"
    )


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    sha256: str | None  # the LFS oid; None for a file kept in git itself


@dataclass(frozen=True)
class HubModel:
    """What a pull fetched: the GGUF (its first part where it is split), every part, and the
    repo's chat template if it had one."""

    reference: HubReference
    gguf: Path
    files: tuple[Path, ...]
    template: Path | None


class Hub:
    """The hub's API, through ``client``."""

    def __init__(
        self, client: httpx.Client, endpoint: str = DEFAULT_ENDPOINT, token: str | None = None
    ) -> None:
        self._client = client
        self._endpoint = endpoint.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def files(self, ref: HubReference) -> list[RepoFile]:
        url: str | None = (
            f"{self._endpoint}/api/models/{ref.repo}/tree/{quote(ref.revision, safe='')}"
            "?recursive=true"
        )
        out: list[RepoFile] = []
        home = httpx.URL(self._endpoint).host
        for _ in range(MAX_PAGES):
            if url is None:
                return out
            # The token goes to the hub only, not to a host a Link header names.
            headers = self._headers if httpx.URL(url).host == home else {}
            try:
                with open_stream(self._client, url, headers) as response:
                    status, links = response.status_code, response.links
                    body = read_limited(response, MAX_LISTING, url) if status == 200 else b""
            except httpx.HTTPError as exc:
                raise ModelSourceError(f"{self._endpoint}: cannot list {ref.repo}: {exc}") from exc
            if status in (401, 403):
                raise ModelSourceError(
                    f"{ref.repo} is gated or private: accept its terms on the hub and set "
                    "HF_TOKEN (or --hf-token)"
                )
            if status == 404:
                raise ModelSourceError(
                    f"{ref.repo} (revision {ref.revision}) is not on {self._endpoint}"
                )
            if status != 200:
                raise ModelSourceError(f"{url}: HTTP {status}")
            try:
                out += [_repo_file(entry) for entry in json.loads(body) if _is_file(entry)]
            except (ValueError, TypeError, KeyError) as exc:
                raise ModelSourceError(f"{url}: not a file listing ({exc})") from exc
            url = links.get("next", {}).get("url")
        raise ModelSourceError(f"{ref.repo} lists more than {MAX_PAGES} pages of files")

    def pull(
        self, ref: HubReference, folder: Path, *, progress: ProgressFor | None = None
    ) -> HubModel:
        """Fetch the GGUF ``ref`` names (every part) into ``folder``."""
        files = self.files(ref)
        parts = choose_gguf(files, ref)
        paths = []
        for part in parts:
            target = folder / part.path
            remote = RemoteFile(self._url(ref, part.path), part.size, part.sha256, self._headers)
            label = f"sha256:{part.sha256}" if part.sha256 else part.path
            fetch(self._client, remote, target, progress=progress(label) if progress else None)
            paths.append(target)
        template = next((f for f in files if f.path == TEMPLATE_FILE), None)
        template_path = None
        if template is not None:
            template_path = folder / template.path
            remote = RemoteFile(
                self._url(ref, template.path), template.size, template.sha256, self._headers
            )
            fetch(self._client, remote, template_path)
        return HubModel(ref, paths[0], tuple(paths), template_path)

    def _url(self, ref: HubReference, path: str) -> str:
        return f"{self._endpoint}/{ref.repo}/resolve/{quote(ref.revision, safe='')}/{quote(path)}"


def _is_file(entry: object) -> bool:
    return isinstance(entry, dict) and entry.get("type") == "file"


def _repo_file(entry: dict[str, object]) -> RepoFile:
    path = entry["path"]
    size = entry.get("size")
    lfs = entry.get("lfs")
    if (
        not isinstance(path, str)
        or not isinstance(size, int)
        or path.startswith("/")
        or any(c in path for c in "\\\x00")
        or any(part in ("", ".", "..") or len(part) > 255 for part in path.split("/"))
    ):
        raise ValueError(f"a bad entry: {entry!r}"[:200])
    if not isinstance(lfs, dict):
        return RepoFile(path, size, None)  # kept in git itself: checked by its size
    sha = lfs.get("oid")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
        raise ValueError(f"an LFS file without a sha256: {entry!r}"[:200])
    return RepoFile(path, size, sha.lower())


def quant_of(path: str) -> str | None:
    """The quantization a GGUF's name says (upper case), or None."""
    name = path.rsplit("/", 1)[-1]
    found = _QUANT.findall(name.removesuffix(".gguf"))
    return found[-1].upper() if found else None


def choose_gguf(files: Sequence[RepoFile], ref: HubReference) -> list[RepoFile]:
    """The GGUF (all its parts, in order) that ``ref`` names; a one-line error listing the
    choices when it names none or several."""
    groups: dict[str, list[RepoFile]] = {}
    for f in files:
        name = f.path.rsplit("/", 1)[-1]
        if not name.lower().endswith(".gguf") or name.lower().startswith("mmproj"):
            continue
        split = _SPLIT.match(f.path)
        key = f"{split.group('stem')} (in parts)" if split else f.path
        groups.setdefault(key, []).append(f)
    if not groups:
        raise ModelSourceError(f"{ref.repo} holds no GGUF file")
    wanted = (ref.quant or DEFAULT_QUANT).upper()
    matching = {k: g for k, g in groups.items() if quant_of(_stem(k)) == wanted}
    if not matching and ref.quant is None and len(groups) == 1:
        matching = groups
    choices = sorted({quant_of(_stem(k)) or k for k in groups})
    if not matching:
        raise ModelSourceError(
            f"{ref.repo} has no {wanted} GGUF; choose one of: {', '.join(choices)} "
            f"(as hf:{ref.repo}:QUANT)"
        )
    if len(matching) > 1:
        raise ModelSourceError(
            f"{ref.repo} has several {wanted} GGUFs ({', '.join(sorted(matching))}); "
            "name the file with a URL instead"
        )
    (group,) = matching.values()
    return _parts_in_order(group)


def _stem(key: str) -> str:
    return key.removesuffix(" (in parts)").removesuffix(".gguf") + ".gguf"


def _parts_in_order(group: list[RepoFile]) -> list[RepoFile]:
    matches = [_SPLIT.match(f.path) for f in group]
    if len(group) == 1 and matches[0] is None:
        return group
    numbered = sorted(
        (int(m.group("part")), int(m.group("count")), f)
        for m, f in zip(matches, group, strict=True)
        if m is not None
    )
    counts = {count for _, count, _ in numbered}
    parts = [part for part, _, _ in numbered]
    count = max(counts)
    if len(counts) != 1 or parts != list(range(1, count + 1)):
        raise ModelSourceError(
            f"{numbered[0][2].path}: the repo holds parts {parts} of {sorted(counts)}, not "
            "one whole model"
        )
    return [f for _, _, f in numbered]
