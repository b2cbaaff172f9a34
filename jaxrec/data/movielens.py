"""MovieLens loaders (Harper & Konstan, ACM TiiS 2015): locate, optionally download, parse.

Formats:

* ml-100k: ``u.data`` (tab: user, item, rating, timestamp), ``u.item`` (``|``, latin-1: id, title, release date,
  video date, url, 19 genre flags), ``u.user`` (``|``: id, age, gender, occupation, zip).
* ml-1m, ml-10m: ``::``-separated ``.dat`` (latin-1): ``ratings.dat`` (user::item::rating::timestamp),
  ``movies.dat`` (id::Title (Year)::Genre|Genre), ml-1m's ``users.dat`` (user::gender::age::occupation::zip, with
  age already a bucket code and occupation a number 0-20).
* ml-20m, ml-25m, ml-latest(-small): CSV with a header: ``ratings.csv`` (userId,movieId,rating,timestamp),
  ``movies.csv`` (movieId,title,genres).
"""

from __future__ import annotations

import importlib.resources
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from jaxrec.data.dataset import DataError, Dataset, from_dataframe
from jaxrec.data.download import ARCHIVES, download_archive, download_enabled
from jaxrec.data.text import read_table

__all__ = ["load", "DATASETS", "DEFAULT_DATASET", "default_data_root", "parse_movielens"]

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "ml-latest-small"
DATASETS = ("ml-latest-small", "ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m")

# the files that must be present for each format (the first is the ratings log)
_REQUIRED = {
    "ml-100k": ("u.data", "u.item", "u.user"),
    "ml-1m": ("ratings.dat", "movies.dat", "users.dat"),
    "ml-10m": ("ratings.dat", "movies.dat"),
    "ml-20m": ("ratings.csv", "movies.csv"),
    "ml-25m": ("ratings.csv", "movies.csv"),
    "ml-latest-small": ("ratings.csv", "movies.csv"),
}
_ALT_FOLDERS = {"ml-10m": ("ml-10M100K",)}  # ml-10m.zip unpacks to ml-10M100K/

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# ml-1m README, "Occupation is chosen from the following choices"
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
)  # fmt: skip


def default_data_root() -> Path:
    """The folder that holds one ``<name>/`` folder per dataset.

    Returns:
      ``$JAXREC_DATA`` if set, else ``~/.cache/jaxrec``.
    """
    env = os.environ.get("JAXREC_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jaxrec"


def _has_files(folder: Path, name: str) -> bool:
    return all((folder / f).is_file() for f in _REQUIRED[name])


def locate(name: str, data_dir: str | os.PathLike | None) -> tuple[Path | None, list[Path]]:
    """Find the folder holding a dataset's files.

    Looks in ``<root>/<name>/`` (and the folder its zip unpacks to, e.g. ``ml-10M100K/``), then in ``<root>``
    itself, with ``root`` the ``data_dir`` or :func:`default_data_root`.

    Args:
      name: the dataset, one of :data:`DATASETS` other than the bundled one.
      data_dir: the root to look in, or None for :func:`default_data_root`.

    Returns:
      ``(folder, looked)``: the folder holding ``name``'s files (or None) and every folder looked in, in order.
    """
    roots = [Path(data_dir).expanduser()] if data_dir is not None else [default_data_root()]
    candidates = []
    for root in roots:
        for folder in (name, *_ALT_FOLDERS.get(name, ())):
            candidates.append(root / folder)
        candidates.append(root)  # data_dir may point at the dataset folder itself
    for c in candidates:
        if _has_files(c, name):
            return c, candidates
    return None, candidates


def load(
    name: str = DEFAULT_DATASET,
    data_dir: str | os.PathLike | None = None,
    download: bool | None = None,
    *,
    min_user_ratings: int = 1,
) -> Dataset:
    """Load a MovieLens dataset as a :class:`Dataset`.

    ``"ml-latest-small"`` (the default) ships inside the package and works offline. The others are read from
    ``data_dir/<name>/`` (or ``data_dir`` itself), else ``$JAXREC_DATA/<name>/``, else ``~/.cache/jaxrec/<name>/``.
    Without a download the error says exactly where to put missing files.

    Args:
      name: the dataset, one of :data:`DATASETS`.
      data_dir: the folder holding the dataset folders (default: :func:`default_data_root`).
      download: what to do when the files are missing: True fetches the official GroupLens zip (SHA-256-checked,
        unpacked atomically); None (default) downloads only if ``$JAXREC_DOWNLOAD=1``; False never does.
      min_user_ratings: users with fewer ratings are dropped and counted in the report.

    Returns:
      The cleaned :class:`Dataset`.

    Raises:
      DataError: if ``name`` is unknown, its files are missing and no download is allowed, or a file does not
        parse.
      DownloadError: if the download fails or does not match its checksum.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {list(DATASETS)} or use jaxrec.data.from_csv")
    if name == "ml-latest-small":
        folder = Path(str(importlib.resources.files("jaxrec.data") / "_bundled" / "ml-latest-small"))
        return parse_movielens(name, folder, min_user_ratings=min_user_ratings, source="bundled")
    folder, looked = locate(name, data_dir)
    if folder is None:
        target = looked[0]
        if not download_enabled(download):
            raise DataError(
                f"{name} not found. Looked in: {', '.join(map(str, dict.fromkeys(looked)))}. Put the unpacked files "
                f"{', '.join(_REQUIRED[name])} in {target}/ (from {ARCHIVES[name].url}), or set JAXREC_DATA to a "
                f"folder holding {name}/ (on the command line: --data-dir FOLDER), or pass download=True (or set "
                "JAXREC_DOWNLOAD=1) to fetch it"
            )
        folder = download_archive(name, target)
    return parse_movielens(name, folder, min_user_ratings=min_user_ratings, source=str(folder))


def parse_movielens(name: str, folder: str | os.PathLike, *, min_user_ratings: int = 1, source: str = "") -> Dataset:
    """Parse the files of a MovieLens dataset (see the module docstring for the formats).

    Args:
      name: the dataset, one of :data:`DATASETS`; it selects the format.
      folder: the folder holding the files (each may also be gzipped, ``<file>.gz``).
      min_user_ratings: users with fewer ratings are dropped and counted in the report.
      source: where the data came from (default: the ratings file).

    Returns:
      The cleaned :class:`Dataset` with the titles, genres and years (and ml-100k / ml-1m demographics) as side
      tables.

    Raises:
      DataError: if a required file or column is missing or a file does not parse.
    """
    folder = Path(folder)
    missing = [f for f in _REQUIRED[name] if not (folder / f).is_file() and not (folder / (f + ".gz")).is_file()]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)} for {name}")
    if name == "ml-100k":
        ratings = read_table(folder / "u.data", "\t", ["user", "item", "rating", "timestamp"], header=False)
        items = _ml100k_items(folder / "u.item", folder / "u.genre")
        users = _ml100k_users(folder / "u.user")
        ratings_path = folder / "u.data"
    elif name in ("ml-1m", "ml-10m"):
        ratings_path = folder / "ratings.dat"
        ratings = read_table(ratings_path, "::", ["user", "item", "rating", "timestamp"], header=False)
        items = _dat_movies(folder / "movies.dat")
        users = _ml1m_users(folder / "users.dat") if name == "ml-1m" else None
    else:
        ratings_path = _gz_or_plain(folder / "ratings.csv")
        ratings = read_table(
            ratings_path, ",", ["userId", "movieId", "rating", "timestamp"], header=True, allow_extra=False
        )
        missing_cols = {"userId", "movieId", "rating", "timestamp"} - set(ratings.columns)
        if missing_cols:
            raise DataError(
                f"{ratings_path}: missing column(s) {sorted(missing_cols)}; header is {list(ratings.columns)}"
            )
        ratings = ratings.rename(columns={"userId": "user", "movieId": "item"})
        items = _csv_movies(_gz_or_plain(folder / "movies.csv"))
        users = None
    header_lines = 2 if ratings_path.suffix == ".csv" or ratings_path.name.endswith(".csv.gz") else 1
    return from_dataframe(
        ratings,
        user="user",
        item="item",
        rating="rating",
        timestamp="timestamp",
        user_features=users,
        item_features=items,
        name=name,
        min_user_ratings=min_user_ratings,
        source=source or str(ratings_path),
        _line_offset=header_lines,
    )


def _gz_or_plain(path: Path) -> Path:
    gz = path.with_name(path.name + ".gz")
    return path if path.is_file() else gz


def year_from_title(titles: pd.Series) -> pd.Series:
    """Read the release year at the end of MovieLens titles.

    Args:
      titles: titles ending in ``(YYYY)`` (or a year range such as ``(1995-2000)``, whose first year is taken).

    Returns:
      The year of each title as a nullable Int64 (``<NA>`` when absent).
    """
    return titles.str.extract(r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$", expand=False).astype("Int64")


def _normalise_genres(genres: pd.Series) -> pd.Series:
    return genres.fillna("").replace({"(no genres listed)": ""}).astype(str)


def _ml100k_items(path: Path, genre_path: Path) -> pd.DataFrame:
    genre_names = list(ML100K_GENRES)
    if genre_path.is_file():
        g = pd.read_csv(genre_path, sep="|", header=None, names=["name", "index"], encoding="latin-1").dropna()
        genre_names = list(g.sort_values("index")["name"])
    names = ["raw_id", "title", "release_date", "video_date", "url", *genre_names]
    frame = read_table(path, "|", names, header=False, encoding="latin-1")
    flags = frame[genre_names].to_numpy(dtype=np.int8)
    labelled = np.array([n for n in genre_names], dtype=object)
    known = np.array([n != "unknown" for n in genre_names])
    genres = ["|".join(labelled[(row > 0) & known]) for row in flags]  # once per item, not per rating
    year = frame["release_date"].astype(str).str.extract(r"(\d{4})\s*$", expand=False).astype("Int64")
    year = year.fillna(year_from_title(frame["title"].astype(str)))
    out = pd.DataFrame({"title": frame["title"].astype(str), "genres": genres, "year": year})
    out.index = frame["raw_id"].to_numpy()
    return out


def _ml100k_users(path: Path) -> pd.DataFrame:
    frame = read_table(path, "|", ["raw_id", "age", "gender", "occupation", "zip"], header=False, dtype={"zip": str})
    return frame.set_index("raw_id")


def _ml1m_users(path: Path) -> pd.DataFrame:
    frame = read_table(path, "::", ["raw_id", "gender", "age", "occupation", "zip"], header=False, dtype={"zip": str})
    occupation = frame["occupation"].to_numpy()
    names = np.array(ML1M_OCCUPATIONS, dtype=object)
    frame["occupation"] = np.where(
        (occupation >= 0) & (occupation < len(names)), names[np.clip(occupation, 0, len(names) - 1)], "other"
    )
    return frame.set_index("raw_id")


def _dat_movies(path: Path) -> pd.DataFrame:
    """``movies.dat``: titles may contain ``:`` so this splits each line on ``::`` at most twice."""
    with open(path, encoding="latin-1") as f:
        lines = [line.rstrip("\r\n") for line in f if line.strip()]
    if not lines:
        raise DataError(f"{path}: file is empty")
    parts = [line.split("::", 2) for line in lines]
    bad = next((k for k, p in enumerate(parts) if len(p) != 3), None)
    if bad is not None:
        raise DataError(f"{path}: line {bad + 1} is not 'id::Title (Year)::Genre|Genre': {lines[bad][:80]!r}")
    frame = pd.DataFrame(parts, columns=["raw_id", "title", "genres"])
    ids = pd.to_numeric(frame["raw_id"], errors="coerce")
    if ids.isna().any():
        first = int(np.flatnonzero(ids.isna().to_numpy())[0])
        raise DataError(f"{path}: line {first + 1} has a non-numeric movie id {frame['raw_id'][first]!r}")
    out = pd.DataFrame(
        {"title": frame["title"], "genres": _normalise_genres(frame["genres"]), "year": year_from_title(frame["title"])}
    )
    out.index = ids.astype(np.int64).to_numpy()
    return out


def _csv_movies(path: Path) -> pd.DataFrame:
    frame = read_table(path, ",", ["movieId", "title", "genres"], header=True)
    titles = frame["title"].astype(str).str.strip()
    out = pd.DataFrame({"title": titles, "genres": _normalise_genres(frame["genres"]), "year": year_from_title(titles)})
    out.index = frame["movieId"].to_numpy()
    return out
