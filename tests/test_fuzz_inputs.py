"""Malformed rating tables and files thrown at the loaders and at ``jaxrec recommend``'s ratings reader: each gets
a clear jaxrec error (DataError / CLIError) or a correct result, never a raw exception from pandas or numpy."""

import gzip
import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxrec.cli import CLIError
from jaxrec.data import DataError, from_csv, from_dataframe
from jaxrec.experiment.recommend import read_user_ratings

FUZZ = settings(
    max_examples=int(os.environ.get("JAXREC_FUZZ_EXAMPLES", 60)),  # more for a deeper run
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

cell = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.none(),
)
separators = st.sampled_from([",", ";", "\t", "|", "::", " "])


def check_dataset(ds, n_rows: int) -> None:
    """What every successfully loaded dataset guarantees."""
    r = ds.ratings
    assert 0 < len(r) <= n_rows
    assert np.isfinite(r["rating"].to_numpy()).all()
    assert r["user"].between(0, ds.n_users - 1).all() and r["item"].between(0, ds.n_items - 1).all()
    assert not r.duplicated(["user", "item"]).any()


@FUZZ
@given(rows=st.lists(st.tuples(cell, cell, cell), max_size=8), drop=st.sampled_from([None, "user", "item", "rating"]))
def test_from_dataframe_on_arbitrary_cells(rows, drop):
    frame = pd.DataFrame(rows, columns=["user", "item", "rating"])
    if drop:
        frame = frame.drop(columns=[drop])
    try:
        ds = from_dataframe(frame)
    except DataError:
        return
    check_dataset(ds, len(frame))


@FUZZ
@given(
    lines=st.lists(st.lists(cell, min_size=0, max_size=5), max_size=6),
    sep=separators,
    header=st.booleans(),
    columns=st.sampled_from([None, ["user", "item", "rating"], ["user", "item", "rating", "timestamp"]]),
)
def test_from_csv_on_malformed_files(tmp_path, lines, sep, header, columns):
    text = ("user,item,rating\n".replace(",", sep) if header else "") + "".join(
        sep.join("" if v is None else str(v) for v in line) + "\n" for line in lines
    )
    path = tmp_path / "fuzz.csv"
    path.write_text(text)
    try:
        ds = from_csv(path, columns=columns)
    except DataError:
        return
    check_dataset(ds, len(lines))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "user,item,rating\n",
        "user,item,rating\n1,2,abc\n",
        "user,item,rating\n1,2,\n",
        "1,2,inf\n",
        "1\n2\n",
        "1,2,3\n4,5\n6,7,8,9\n",
        "user,rating\n1,3\n",
        "user,item,rating,timestamp\n1,2,3,yesterday\n",
    ],
)
def test_from_csv_known_bad_files_are_data_errors(tmp_path, text):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError):
        from_csv(path)


@pytest.mark.parametrize(
    "text, n",
    [
        ("1,-5,3\n-2,4,1\n", 2),  # negative ids are ids like any other
        ("99999999999999999999,1,3\n2,1,4\n", 2),  # ids beyond int64
        ("1,2,3\n1,2,4\n1,3,5\n", 2),  # duplicate pair: the last one is kept
        ("1;2;3\n4;5;6\n", 2),  # another separator, sniffed
    ],
)
def test_from_csv_documented_results(tmp_path, text, n):
    path = tmp_path / "odd.csv"
    path.write_text(text)
    ds = from_csv(path, columns=["user", "item", "rating"])
    check_dataset(ds, n)
    assert ds.n_ratings == n


@pytest.mark.parametrize("damage", ["truncated", "not_gzip"])
def test_broken_gzip_is_a_data_error(tmp_path, damage):
    path = tmp_path / "ratings.csv.gz"
    if damage == "truncated":
        with gzip.open(path, "wt") as f:
            f.write("user,item,rating\n" + "".join(f"{i},{i % 7},{i % 5 + 1}\n" for i in range(20000)))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(b"1,2,3\n")
    with pytest.raises(DataError):
        from_csv(path)


ITEM_IDS = np.array([1, 2, 3, 10, 50, 100])


@FUZZ
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.sampled_from(["1", "2", "50", "7", "x", "1.0", "-3"]), st.text(max_size=4)),
            st.one_of(st.sampled_from(["1", "4.5", "5", "0", "9", "nan"]), st.text(max_size=4)),
        ),
        max_size=6,
    ),
    header=st.booleans(),
    sep=st.sampled_from([",", ";", "\t"]),
)
def test_recommend_ratings_reader(tmp_path, rows, header, sep):
    path = tmp_path / "mine.csv"
    path.write_text(("item" + sep + "rating\n" if header else "") + "".join(f"{i}{sep}{r}\n" for i, r in rows))
    try:
        codes, ratings, notes, _ = read_user_ratings(path, ITEM_IDS, (0.5, 5.0))
    except CLIError as e:
        assert str(e)
        return
    assert len(codes) == len(set(codes.tolist())) > 0  # known, unique items
    assert ((codes >= 0) & (codes < len(ITEM_IDS))).all()
    assert ((ratings >= 0.5) & (ratings <= 5.0)).all()
    assert all(isinstance(n, str) for n in notes)


def test_recommend_reader_documented_cases(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("movieId,rating\n50,4\n999,5\n50,2\n2,1\n")
    codes, ratings, notes, _ = read_user_ratings(path, ITEM_IDS, (0.5, 5.0))
    assert ITEM_IDS[codes].tolist() == [50, 2] and ratings.tolist() == [2.0, 1.0]  # the last rating of 50 is kept
    assert any("unknown" in n for n in notes) and any("duplicate" in n for n in notes)


TEXT_LINES = st.lists(
    st.lists(
        st.one_of(st.sampled_from(["1", "2", "3.5", "x", "", "inf", "1e400", "ü", '"a,b"']), st.text(max_size=5)),
        max_size=5,
    ),
    max_size=7,
)


@FUZZ
@given(
    payload=st.one_of(
        st.binary(max_size=200),
        st.builds(
            lambda lines, sep, encoding, bom: (
                (bom if encoding == "utf-8" else b"")
                + "\n".join(sep.join(cells) for cells in lines).encode(encoding, errors="replace")
            ),
            TEXT_LINES,
            separators,
            st.sampled_from(["utf-8", "latin-1", "utf-16", "cp1252"]),
            st.sampled_from([b"", b"\xef\xbb\xbf"]),
        ),
    ),
    gz=st.booleans(),
)
def test_any_bytes_load_or_raise_the_library_error(tmp_path, payload, gz):
    """Random bytes, separators, encodings and shapes: a dataset, or a JaxrecError, never anything else."""
    from jaxrec import JaxrecError

    path = tmp_path / ("fuzz.csv.gz" if gz else "fuzz.csv")
    path.write_bytes(gzip.compress(payload) if gz else payload)
    try:
        ds = from_csv(path)
    except JaxrecError as e:
        assert str(e)
    else:
        check_dataset(ds, max(payload.count(b"\n") + 1, 1))
    ratings = tmp_path / "mine.csv"
    ratings.write_bytes(payload)
    try:
        codes, values, _, _ = read_user_ratings(ratings, ITEM_IDS, (0.5, 5.0))
    except JaxrecError as e:
        assert str(e)
    else:
        assert len(codes) == len(set(codes.tolist())) > 0 and ((values >= 0.5) & (values <= 5.0)).all()
