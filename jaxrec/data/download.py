"""Fetch, verify and unpack the official GroupLens MovieLens archives.

The URL opener is injectable (``opener=``), so the whole path (progress, checksum, atomic unpack) is tested
offline with a local zip; nothing here is MovieLens-specific beyond the table of archives.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from jaxrec.data.dataset import DataError

__all__ = ["Archive", "ARCHIVES", "DownloadError", "download_archive", "download_enabled"]

logger = logging.getLogger(__name__)

BASE_URL = "https://files.grouplens.org/datasets/movielens/"


class DownloadError(DataError):
    """A download that failed, was refused or did not match its published checksum."""


class Archive(NamedTuple):
    url: str
    md5: str | None  # None: not confirmed, download refuses
    folder: str  # the top-level folder inside the zip


# MD5s as published by GroupLens beside each archive (<url>.md5), taken from
# github.com/eli-osherovich/papers_with_code datasets/movielens/dl_config.py; ml-1m and ml-10m cross-checked against
# other public repositories quoting files.grouplens.org/datasets/movielens/ml-1m.zip.md5 and ml-10m.zip.md5.
ARCHIVES: dict[str, Archive] = {
    "ml-100k": Archive(BASE_URL + "ml-100k.zip", "0e33842e24a9c977be4e0107933c0723", "ml-100k"),
    "ml-1m": Archive(BASE_URL + "ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906", "ml-1m"),
    "ml-10m": Archive(BASE_URL + "ml-10m.zip", "ce571fd55effeba0271552578f2648bd", "ml-10M100K"),
    "ml-20m": Archive(BASE_URL + "ml-20m.zip", "cd245b17a1ae2cc31bb14903e1204af3", "ml-20m"),
    "ml-25m": Archive(BASE_URL + "ml-25m.zip", "6b51fb2759a8657d3bfcbfc42b592ada", "ml-25m"),
}

Opener = Callable[[str], Any]  # url -> a file-like object with .read(n) (and optionally .headers)


def download_enabled(download: bool | None) -> bool:
    """``download=None`` means: only when the environment variable ``JAXREC_DOWNLOAD=1`` is set."""
    if download is None:
        return os.environ.get("JAXREC_DOWNLOAD", "").strip().lower() in ("1", "true", "yes")
    return bool(download)


def _md5_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, dest: Path, opener: Opener, progress: bool) -> None:
    from tqdm.auto import tqdm

    with opener(url) as response:
        headers = getattr(response, "headers", None)
        total = int(headers.get("Content-Length", 0) or 0) if headers is not None else 0
        with (
            open(dest, "wb") as out,
            tqdm(total=total or None, unit="B", unit_scale=True, desc=Path(url).name, disable=not progress) as bar,
        ):
            while block := response.read(1 << 20):
                out.write(block)
                bar.update(len(block))


def download_archive(
    name: str,
    target: str | os.PathLike,
    *,
    archive: Archive | None = None,
    opener: Opener | None = None,
    progress: bool = True,
) -> Path:
    """Download ``name``'s zip, check its MD5 and unpack it so that ``target`` holds the dataset's files.

    The zip is fetched and unpacked inside a temporary folder beside ``target`` and moved into place with
    ``os.replace``, so an interrupted download never leaves a half-written dataset behind.

    Args:
      archive: override the URL / checksum / inner folder (tests pass a ``file://`` URL to a local zip).
      opener: ``url -> file-like``; defaults to :func:`urllib.request.urlopen`.
    """
    archive = archive or ARCHIVES.get(name)
    if archive is None:
        raise DownloadError(f"no download known for dataset {name!r}; known: {sorted(ARCHIVES)}")
    if archive.md5 is None:
        raise DownloadError(
            f"refusing to download {name!r}: its checksum is not confirmed; fetch {archive.url} yourself and unpack "
            f"it so that {target} holds the files"
        )
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    opener = opener or urllib.request.urlopen
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-download-") as tmp:
        tmp = Path(tmp)
        zip_path = tmp / "archive.zip"
        logger.info("downloading %s to %s", archive.url, target)
        try:
            _fetch(archive.url, zip_path, opener, progress)
        except OSError as e:
            raise DownloadError(f"could not download {archive.url}: {e}") from e
        got = _md5_of(zip_path)
        if got != archive.md5:
            raise DownloadError(
                f"checksum mismatch for {archive.url}: md5 {got}, expected {archive.md5}; the download is corrupt "
                "or the archive changed, nothing was written"
            )
        unpacked = tmp / "unpacked"
        try:
            with zipfile.ZipFile(zip_path) as z:
                z.extractall(unpacked)
        except zipfile.BadZipFile as e:
            raise DownloadError(f"{archive.url} is not a valid zip: {e}") from e
        inner = unpacked / archive.folder
        if not inner.is_dir():
            raise DownloadError(f"{archive.url} has no folder {archive.folder!r}; it holds {os.listdir(unpacked)}")
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()  # os.replace cannot move a folder onto an existing one, even an empty one
        elif target.exists():
            raise DownloadError(f"{target} already exists but is incomplete; remove it and retry")
        os.replace(inner, target)
    return target
