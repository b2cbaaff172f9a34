"""Fetch, verify and unpack the official GroupLens MovieLens archives.

Every archive is checked against its published SHA-256 and size: a download larger than the archive is stopped
where it passes the size, redirects are followed only to the official host, and the zip is fetched and unpacked
inside a temporary folder that is moved into place only when complete, so a partial file is never left where a
dataset is expected.

The URL opener is injectable (``opener=``), so the whole path (progress, checksum, atomic unpack) is tested
offline with a local zip; nothing here is MovieLens-specific beyond the table of archives.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from jaxrec.data.dataset import DataError

__all__ = [
    "ARCHIVES",
    "OFFICIAL_HOSTS",
    "Archive",
    "DownloadError",
    "OfficialRedirects",
    "download_archive",
    "download_enabled",
    "official_opener",
]

logger = logging.getLogger(__name__)

BASE_URL = "https://files.grouplens.org/datasets/movielens/"


class DownloadError(DataError):
    """A download that failed, was refused or did not match its published checksum."""


OFFICIAL_HOSTS = ("files.grouplens.org",)
MAX_BYTES = 1 << 30  # the limit of a download whose size is not known


class Archive(NamedTuple):
    """Where a dataset's zip is published and how to check and unpack it.

    Attributes:
      url: the URL of the zip.
      sha256: the SHA-256 of the zip; None when it is not confirmed, and then the download is refused.
      size: the zip's size in bytes: a download that grows past it is stopped and refused (None: unknown, and
        :data:`MAX_BYTES` is the limit).
      folder: the top-level folder inside the zip.
    """

    url: str
    sha256: str | None
    size: int | None
    folder: str


# SHA-256 and sizes of the GroupLens archives as recorded by TensorFlow Datasets
# (tensorflow_datasets/url_checksums/movielens.txt). ml-10m has no recorded SHA-256: its download is refused, and
# the archive can be unpacked into the data folder by hand.
ARCHIVES: dict[str, Archive] = {
    "ml-100k": Archive(
        BASE_URL + "ml-100k.zip", "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229", 4924029, "ml-100k"
    ),
    "ml-1m": Archive(
        BASE_URL + "ml-1m.zip", "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20", 5917549, "ml-1m"
    ),
    "ml-10m": Archive(BASE_URL + "ml-10m.zip", None, None, "ml-10M100K"),
    "ml-20m": Archive(
        BASE_URL + "ml-20m.zip", "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3", 198702078, "ml-20m"
    ),
    "ml-25m": Archive(
        BASE_URL + "ml-25m.zip", "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa", 261978986, "ml-25m"
    ),
}


class OfficialRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an official host over HTTPS (:data:`OFFICIAL_HOSTS`)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        """The request to follow ``newurl``, or a :class:`DownloadError` if it leaves the official hosts."""
        parts = urllib.parse.urlsplit(newurl)
        if parts.scheme != "https" or parts.hostname not in OFFICIAL_HOSTS:
            raise DownloadError(f"refusing a redirect of {req.full_url} to {newurl}: not an official host")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def official_opener(url: str, timeout: float = 60.0) -> Any:
    """``urlopen`` that follows redirects only to :data:`OFFICIAL_HOSTS` (the default opener of downloads)."""
    return urllib.request.build_opener(OfficialRedirects).open(url, timeout=timeout)


Opener = Callable[[str], Any]  # url -> a file-like object with .read(n) (and optionally .headers)


def download_enabled(download: bool | None) -> bool:
    """Whether a missing dataset may be downloaded.

    Args:
      download: True or False to decide explicitly; None to download only when the environment variable
        ``JAXREC_DOWNLOAD`` is set (to ``1``, ``true`` or ``yes``).

    Returns:
      Whether to download.
    """
    if download is None:
        return os.environ.get("JAXREC_DOWNLOAD", "").strip().lower() in ("1", "true", "yes")
    return bool(download)


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fetch(url: str, dest: Path, opener: Opener, progress: bool, limit: int) -> None:
    """Write the body of ``url`` to ``dest``, refusing one that says or turns out to be larger than ``limit``."""
    from tqdm.auto import tqdm

    with opener(url) as response:
        headers = getattr(response, "headers", None)
        total = int(headers.get("Content-Length", 0) or 0) if headers is not None else 0
        if total > limit:
            raise DownloadError(f"{url} is {total} bytes, larger than the {limit} of the archive: refused")
        written = 0
        with (
            open(dest, "wb") as out,
            tqdm(total=total or None, unit="B", unit_scale=True, desc=Path(url).name, disable=not progress) as bar,
        ):
            while block := response.read(1 << 20):
                written += len(block)
                if written > limit:
                    raise DownloadError(f"{url} sent more than the {limit} bytes of the archive: stopped and refused")
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
    """Download ``name``'s zip, check its size and SHA-256 and unpack it so that ``target`` holds the dataset's files.

    The zip is fetched and unpacked inside a temporary folder beside ``target`` and moved into place with
    ``os.replace``, so an interrupted download never leaves a half-written dataset behind.

    Args:
      name: the dataset, a key of :data:`ARCHIVES`.
      target: the folder that is to hold the dataset's files; it must not exist, or be empty.
      archive: override the URL / checksum / inner folder (tests pass a ``file://`` URL to a local zip).
      opener: ``url -> file-like``; defaults to :func:`urllib.request.urlopen`.
      progress: show a progress bar of the download.

    Returns:
      ``target``, as a :class:`~pathlib.Path`.

    Raises:
      DownloadError: if no archive is known for ``name``, its checksum is not confirmed, the download fails or
        grows past the archive's size, a redirect leaves the official host, the zip does not match its SHA-256, is
        not a valid zip or lacks the expected folder, or ``target`` exists and is not empty (nothing is written in
        these cases).
    """
    archive = archive or ARCHIVES.get(name)
    if archive is None:
        raise DownloadError(f"no download known for dataset {name!r}; known: {sorted(ARCHIVES)}")
    if archive.sha256 is None:
        raise DownloadError(
            f"refusing to download {name!r}: its checksum is not confirmed; fetch {archive.url} yourself and unpack "
            f"it so that {target} holds the files"
        )
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    opener = opener or official_opener
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-download-") as tmp:
        tmp = Path(tmp)
        zip_path = tmp / "archive.zip"
        logger.info("downloading %s to %s", archive.url, target)
        try:
            limit = MAX_BYTES if archive.size is None else int(archive.size)
            _fetch(archive.url, zip_path, opener, progress, limit)
        except OSError as e:
            raise DownloadError(f"could not download {archive.url}: {e}") from e
        got = _sha256_of(zip_path)
        if got != archive.sha256:
            raise DownloadError(
                f"checksum mismatch for {archive.url}: sha256 {got}, expected {archive.sha256}; the download is "
                "corrupt or the archive changed, nothing was written"
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
