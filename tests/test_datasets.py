"""Loaders, parsers, downloader and Featurizer on real MovieLens data and small files in each format."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxrec.data as jd
from jaxrec.data.download import Archive, download_archive
from jaxrec.data.movielens import parse_movielens

ML100K = Path(__file__).parents[2] / "shared" / "data" / "ml-100k"
SHARED = ML100K.parent


@pytest.fixture(scope="module")
def small():
    return jd.load()


@pytest.fixture(scope="module")
def ml100k():
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"ml-100k not found at {ML100K} (its license forbids bundling it; put it there to run this)")
    return jd.load("ml-100k", SHARED, download=False)


# ---- bundled ml-latest-small ---------------------------------------------------------------------------------------


def test_bundled_matches_the_raw_csv(small):
    raw = pd.read_csv(SHARED / "ml-latest-small" / "ratings.csv") if (SHARED / "ml-latest-small").is_dir() else None
    r = small.ratings
    assert list(r.columns) == ["user", "item", "rating", "timestamp"]
    assert r["user"].dtype == np.int32 and r["item"].dtype == np.int32 and r["rating"].dtype == np.float32
    assert r["user"].max() == small.n_users - 1 and r["item"].max() == small.n_items - 1
    assert set(np.unique(r["user"])) == set(range(small.n_users))
    if raw is not None:
        assert len(r) == len(raw)
        # the code map round-trips to the raw ids, row by row
        np.testing.assert_array_equal(small.user_ids[r["user"]], raw["userId"])
        np.testing.assert_array_equal(small.item_ids[r["item"]], raw["movieId"])
        np.testing.assert_allclose(r["rating"], raw["rating"])


def test_bundled_items_have_titles_genres_years(small):
    toy = small.items.iloc[small.item_code([1])[0]]
    assert toy["title"] == "Toy Story (1995)" and toy["year"] == 1995
    assert set(toy["genres"].split("|")) == {"Adventure", "Animation", "Children", "Comedy", "Fantasy"}
    assert not (small.items["genres"] == "(no genres listed)").any()
    assert small.item_code([-5])[0] == -1
    text = small.summary()
    assert "ml-latest-small" in text and f"{small.n_ratings:,}" in text and "duplicates_removed=0" in text


def test_unknown_and_missing_datasets_explain_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXREC_DOWNLOAD", raising=False)
    with pytest.raises(jd.DataError, match="unknown dataset"):
        jd.load("ml-7k")
    with pytest.raises(jd.DataError, match=rf"Put the unpacked files u.data, u.item, u.user in {tmp_path}/ml-100k"):
        jd.load("ml-100k", tmp_path)
    monkeypatch.setenv("JAXREC_DATA", str(tmp_path / "env"))
    with pytest.raises(jd.DataError, match=str(tmp_path / "env" / "ml-1m")):
        jd.load("ml-1m")


# ---- ml-100k (real files) ------------------------------------------------------------------------------------------


def test_ml100k_parses_ratings_users_items(ml100k):
    assert (ml100k.n_ratings, ml100k.n_users, ml100k.n_items) == (100_000, 943, 1682)
    assert ml100k.rating_range == (1.0, 5.0)
    user1 = ml100k.users.iloc[ml100k.user_code([1])[0]]
    assert (user1["age"], user1["gender"], user1["occupation"], user1["zip"]) == (24, "M", "technician", "85711")
    toy = ml100k.items.iloc[ml100k.item_code([1])[0]]
    assert toy["year"] == 1995 and toy["genres"] == "Animation|Children's|Comedy"
    # latin-1 titles decode (e.g. accented characters)
    assert ml100k.items["title"].str.contains("é").any()
    raw = pd.read_csv(ML100K / "u.data", sep="\t", header=None)
    np.testing.assert_array_equal(ml100k.user_ids[ml100k.ratings["user"]], raw[0])


def test_featurizer_on_ml100k(ml100k):
    rng = np.random.default_rng(0)
    train_users = rng.permutation(ml100k.n_users)[:700]
    train = ml100k.ratings[np.isin(ml100k.ratings["user"], train_users)]
    feat = jd.Featurizer.fit(ml100k, train)
    rows = feat.transform(ml100k.ratings)
    spec = feat.spec
    assert spec.categorical["user"] == train["user"].nunique() + 1
    assert spec.categorical["item"] == train["item"].nunique() + 1
    assert spec.rating_range == (1.0, 5.0) and spec.target == "rating"
    assert set(spec.fields("user_")) == {"user_age", "user_gender", "user_occupation", "user_zip"}
    assert spec.multi_hot["item_genres"] == rows["item_genres"].shape[1] == 18  # 19 flags minus "unknown"
    for key, size in spec.categorical.items():
        assert rows[key].dtype == np.int32 and rows[key].min() >= 0 and rows[key].max() < size, key
    cold = ~np.isin(ml100k.ratings["user"].to_numpy(), train_users)
    assert (rows["user"][cold] == 0).all() and (rows["user"][~cold] > 0).all()
    # cold users still get their demographics
    assert (rows["user_gender"][cold] > 0).all() and (rows["user_age"][cold] > 0).all()
    # genres agree with the u.item flags
    item = ml100k.item_code([1])[0]
    genres = {
        feat.vocabularies["item_genres"][k]
        for k in np.flatnonzero(rows["item_genres"][ml100k.ratings["item"] == item][0])
    }
    assert genres == {"Animation", "Children's", "Comedy"}
    # the ml-1m age buckets and the first zip character
    user1 = ml100k.user_code([1])[0]
    one = feat.rows(np.array([user1]), np.array([item]))
    assert feat.vocabularies["user_age"][one["user_age"][0] - 1] == "18-24"
    assert feat.vocabularies["user_zip"][one["user_zip"][0] - 1] == "8"


def test_featurizer_round_trips_through_json(small):
    train = small.ratings[small.ratings["user"] < 400]
    feat = jd.Featurizer.fit(small, train, implicit_threshold=4.0)
    again = jd.Featurizer.from_dict(json.loads(json.dumps(feat.to_dict())))
    assert again.spec == feat.spec and again.spec.target == "label" and again.spec.rating_range is None
    a, b = feat.transform(small.ratings), again.transform(small.ratings)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(a["label"], (small.ratings["rating"].to_numpy() >= 4.0).astype(np.float32))
    # code -1 is an all-zero padding row
    pad = feat.rows(np.array([[-1]]), np.array([[-1]]))
    assert all(not np.any(v) for v in pad.values())


# ---- other formats, on small files written here -------------------------------------------------------------------


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def test_ml1m_dat_format(tmp_path):
    d = tmp_path / "ml-1m"
    _write(
        d / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n1::1193::2::978300000\n"
    )
    _write(
        d / "movies.dat",
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::"
        "Animation|Children's|Musical\n2::Star Wars: Episode IV - A New Hope (1977)::Action|Sci-Fi\n"
        "3::Café au lait (1993)::Comedy\n",
        encoding="latin-1",
    )
    _write(d / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    ds = jd.load("ml-1m", tmp_path, download=False)
    assert (ds.n_users, ds.n_items, ds.n_ratings) == (2, 2, 3)  # only rated items are coded
    assert ds.report["duplicates_removed"] == 1
    kept = ds.ratings[(ds.ratings["user"] == 0) & (ds.ratings["item"] == ds.item_code([1193])[0])]
    assert kept["rating"].tolist() == [5.0]  # the later of the two ratings of (1, 1193)
    assert ds.users["occupation"].tolist() == ["K-12 student", "self-employed"]
    assert ds.items.set_index("raw_id").loc[661, "year"] == 1996
    feat = jd.Featurizer.fit(ds)
    assert feat.vocabularies["user_age"] == ["56+", "<18"]  # ages 1 and 56 in ml-1m's bucket codes


def test_ml10m_dat_format_and_folder_name(tmp_path):
    d = tmp_path / "ml-10M100K"
    _write(d / "ratings.dat", "1::122::5::838985046\n1::185::4.5::838983525\n")
    _write(d / "movies.dat", "122::Boomerang (1992)::Comedy|Romance\n185::Net, The (1995)::Action|Crime|Thriller\n")
    ds = jd.load("ml-10m", tmp_path, download=False)
    assert ds.ratings["rating"].tolist() == [5.0, 4.5]
    assert ds.items["title"].tolist() == ["Boomerang (1992)", "Net, The (1995)"]


def test_ml20m_csv_format_with_quoted_titles(tmp_path):
    d = tmp_path / "ml-20m"
    _write(d / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,3.5,1112484676\n7,2,1,1\n")
    _write(
        d / "movies.csv",
        'movieId,title,genres\n2,"Jumanji, The (1995)",Adventure|Children\n29,Untitled,(no genres listed)\n',
    )
    ds = jd.load("ml-20m", tmp_path, download=False)
    assert ds.n_ratings == 3 and ds.items["title"].iloc[0] == "Jumanji, The (1995)"
    assert ds.items["genres"].tolist() == ["Adventure|Children", ""] and pd.isna(ds.items["year"].iloc[1])


@pytest.mark.parametrize("sep", [",", "\t", "|", ";", "::"])
def test_from_csv_sniffs_separator_and_header(tmp_path, sep):
    lines = [["u1", "i1", "7", "100"], ["u1", "i2", "9", "101"], ["u2", "i1", "2", "102"]]
    text = "\n".join(sep.join(x) for x in lines) + "\n"
    ds = jd.from_csv(_write(tmp_path / "log.txt", text))
    assert ds.n_ratings == 3 and ds.rating_range == (2.0, 9.0)
    assert ds.user_ids.tolist() == ["u1", "u2"] and ds.has_timestamps
    with_header = jd.from_csv(
        _write(tmp_path / "log2.txt", sep.join(["user_id", "item_id", "score", "ts"]) + "\n" + text)
    )
    pd.testing.assert_frame_equal(with_header.ratings, ds.ratings)


def test_from_dataframe_side_features_and_implicit():
    log = pd.DataFrame({"who": ["a", "b", "a"], "what": [10, 10, 20]})
    items = pd.DataFrame({"genres": ["X|Y", "Y"], "year": [1990, 2001]}, index=[10, 20])
    ds = jd.from_dataframe(log, user="who", item="what", rating=None, item_features=items)
    assert ds.ratings["rating"].tolist() == [1.0, 1.0, 1.0] and not ds.has_timestamps
    assert ds.items["genres"].tolist() == ["X|Y", "Y"]
    feat = jd.Featurizer.fit(ds)
    assert feat.vocabularies["item_year"] == ["1990s", "2000s"]


# ---- download ------------------------------------------------------------------------------------------------------


def _zip_with(folder: str, files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(f"{folder}/{name}", text)
    return buf.getvalue()


def test_download_verifies_checksum_and_unpacks_atomically(tmp_path):
    payload = _zip_with(
        "ml-10M100K", {"ratings.dat": "1::122::5::838985046\n", "movies.dat": "122::B (1992)::Comedy\n"}
    )
    src = _write(tmp_path / "src" / "ml-10m.zip", "")
    src.write_bytes(payload)
    good = Archive(src.as_uri(), hashlib.sha256(payload).hexdigest(), len(payload), "ml-10M100K")
    target = tmp_path / "root" / "ml-10m"
    with pytest.raises(jd.DownloadError, match="checksum mismatch"):
        download_archive("ml-10m", target, archive=good._replace(sha256="0" * 64), progress=False)
    assert not target.exists() and [p.name for p in target.parent.iterdir()] == []  # nothing half-written
    assert download_archive("ml-10m", target, archive=good, progress=False) == target
    ds = parse_movielens("ml-10m", target)
    assert ds.n_ratings == 1


def test_download_uses_injected_opener_and_refuses_unknown_checksum(tmp_path):
    payload = _zip_with("ml-100k", {"u.data": "1\t2\t3\t4\n"})
    seen = []

    def opener(url):
        seen.append(url)
        return io.BytesIO(payload)

    archive = Archive(
        "https://example.invalid/ml-100k.zip", hashlib.sha256(payload).hexdigest(), len(payload), "ml-100k"
    )
    download_archive("ml-100k", tmp_path / "x", archive=archive, opener=opener, progress=False)
    assert seen == [archive.url] and (tmp_path / "x" / "u.data").read_text() == "1\t2\t3\t4\n"
    with pytest.raises(jd.DownloadError, match="checksum is not confirmed"):
        download_archive("ml-100k", tmp_path / "y", archive=archive._replace(sha256=None), opener=opener)
    assert all(a.sha256 is None or len(a.sha256) == 64 for a in jd.ARCHIVES.values())
    assert all(a.url.startswith("https://files.grouplens.org/") for a in jd.ARCHIVES.values())


def test_load_downloads_when_allowed_by_env(tmp_path, monkeypatch):
    from jaxrec.data import download

    payload = _zip_with(
        "ml-10M100K", {"ratings.dat": "1::122::5::838985046\n", "movies.dat": "122::B (1992)::Comedy\n"}
    )
    src = tmp_path / "ml-10m.zip"
    src.write_bytes(payload)
    monkeypatch.setitem(
        download.ARCHIVES,
        "ml-10m",
        Archive(src.as_uri(), hashlib.sha256(payload).hexdigest(), len(payload), "ml-10M100K"),
    )
    monkeypatch.setenv("JAXREC_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXREC_DOWNLOAD", "0")
    with pytest.raises(jd.DataError, match="not found"):
        jd.load("ml-10m")
    monkeypatch.setenv("JAXREC_DOWNLOAD", "1")
    ds = jd.load("ml-10m")
    assert ds.n_ratings == 1 and (tmp_path / "cache" / "ml-10m" / "ratings.dat").is_file()
    assert jd.load("ml-10m", download=False).n_ratings == 1  # now found offline


def test_a_download_larger_than_its_archive_is_stopped_and_leaves_nothing(tmp_path):
    payload = _zip_with("ml-100k", {"u.data": "1\t2\t3\t4\n"})
    archive = Archive("https://files.grouplens.org/x.zip", hashlib.sha256(payload).hexdigest(), len(payload), "ml-100k")

    class Endless(io.BytesIO):  # a server that keeps sending
        def read(self, n=-1):
            return b"x" * (1 << 16)

    target = tmp_path / "root" / "ml-100k"
    with pytest.raises(jd.DownloadError, match="more than the"):
        download_archive("ml-100k", target, archive=archive, opener=lambda url: Endless(), progress=False)
    assert not target.exists() and list(target.parent.iterdir()) == []  # no partial file anywhere

    class Announced(io.BytesIO):
        headers = {"Content-Length": str(len(payload) + 1)}

    with pytest.raises(jd.DownloadError, match="larger than"):
        download_archive("ml-100k", target, archive=archive, opener=lambda url: Announced(payload), progress=False)
    assert list(target.parent.iterdir()) == []


def test_redirects_are_followed_only_to_the_official_host():
    import urllib.request

    from jaxrec.data.download import OfficialRedirects

    handler = OfficialRedirects()
    request = urllib.request.Request("https://files.grouplens.org/datasets/movielens/ml-100k.zip")
    for elsewhere in ("https://files.example.com/ml-100k.zip", "http://files.grouplens.org/ml-100k.zip"):
        with pytest.raises(jd.DownloadError, match="not an official host"):
            handler.redirect_request(request, None, 302, "Found", {}, elsewhere)
    moved = handler.redirect_request(request, None, 302, "Found", {}, "https://files.grouplens.org/mirror/x.zip")
    assert moved.full_url == "https://files.grouplens.org/mirror/x.zip"
