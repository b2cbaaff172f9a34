"""Bad input gets a DataError that names the file, column or line; nothing is dropped without a count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxrec.data as jd
from jaxrec.data.movielens import parse_movielens
from jaxrec.data.tasks import build_tasks, task_batches


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_data_error_is_a_value_error():
    assert issubclass(jd.DataError, ValueError) and issubclass(jd.DownloadError, jd.DataError)


def test_missing_column_is_named():
    log = pd.DataFrame({"user": [1], "movie": [2], "rating": [3.0]})
    with pytest.raises(jd.DataError, match=r"missing column\(s\) item='item'.*'movie'"):
        jd.from_dataframe(log)


def test_extra_column_in_a_file_is_named(tmp_path):
    path = _write(tmp_path / "log.csv", "userId,movieId,rating,timestamp,mood\n1,2,3,4,happy\n")
    with pytest.raises(jd.DataError, match=r"log.csv: unexpected extra column\(s\) \['mood'\]"):
        jd.from_csv(path)
    assert jd.from_csv(path, allow_extra=True).n_ratings == 1


@pytest.mark.parametrize("header", ["user,item,rating,rating", "\ufeffuser,item,user,rating"])
def test_a_repeated_header_column_is_named_as_written(tmp_path, header):
    """pandas renames a repeated name (``rating.1``): the error named a column the file does not have."""
    path = tmp_path / "log.csv"
    path.write_text(f"{header}\n1,2,3,4\n", encoding="utf-8")
    repeated = header.replace("\ufeff", "").split(",")[-1 if "rating,rating" in header else 0].strip()
    with pytest.raises(jd.DataError, match=rf"log.csv, line 1: the header names '{repeated}' \(columns \[\d, \d\]\)"):
        jd.read_log(path)
    # a repeat among columns not read, and a spreadsheet's trailing empty names, are let be
    path.write_text("user,item,rating,note,note,,\n1,2,3,a,b,,\n", encoding="utf-8")
    assert jd.read_log(path, columns={"user": "user", "item": "item", "rating": "rating"}).n_ratings == 1


def test_unsigned_ids_beyond_int64_are_kept_as_their_digits():
    """A Parquet log's uint64 ids of 2^63 and above trained, but every lookup reads integer ids as int64, so no
    request could name them: they are kept as text, as a text log reads 20-digit ids; smaller ones stay integers."""
    from jaxrec.experiment.recommend import _codes_of

    big = np.uint64(2**63) + np.array([0, 1, 0, 2], np.uint64)
    log = pd.DataFrame({"user": [1, 1, 2, 2], "item": big, "rating": [5.0, 4.0, 3.0, 2.0]})
    ds = jd.from_dataframe(log)
    assert list(ds.item_ids) == ["9223372036854775808", "9223372036854775809", "9223372036854775810"]
    asked = np.array(["9223372036854775809", "7"], dtype=object)
    assert list(_codes_of(asked, asked, ds.item_ids)) == [1, -1]
    small = jd.from_dataframe(log.assign(item=np.array([7, 8, 7, 9], np.uint64)))
    assert [int(i) for i in small.item_ids] == [7, 8, 9]


@pytest.mark.parametrize(
    ("times", "message"),
    [
        ([0.1, 0.5, 0.9], r"holds fractions of its unit \(line 2: 0.1\) and its 3 distinct times are 1 whole unit"),
        ([1.6e9, 1e30, 1.6e9 + 1], r"line 3 is a time beyond int64 seconds"),
    ],
)
def test_times_that_would_collapse_or_wrap_are_refused_by_line(tmp_path, times, message):
    """Numbers were cast to int64 seconds: times in [0, 1) all became 0, 1e30 wrapped to -2^63 (the earliest time of
    all)."""
    lines = ["user,item,rating,timestamp"] + [f"1,{i + 1},4,{t}" for i, t in enumerate(times)]
    path = _write(tmp_path / "log.csv", "\n".join(lines) + "\n")
    with pytest.raises(jd.DataError, match=rf"log.csv: column 'timestamp' {message}"):
        jd.read_log(path)


def test_dates_to_the_year_9999_are_read_as_seconds(tmp_path):
    """An ISO date past 2262 raised pandas' own overflow, naming no file or line: seconds are taken directly."""
    path = _write(tmp_path / "log.csv", "user,item,rating,timestamp\n1,1,4,2020-01-01T00:00:00Z\n1,2,4,9999-12-31\n")
    seconds = sorted(jd.read_log(path).ratings["timestamp"])
    assert seconds == [1577836800, 253402214400]  # (date - 1970-01-01) in seconds, as a calendar gives them


def test_fractions_of_a_second_that_merge_no_times_are_read_whole_and_said(tmp_path, caplog):
    path = _write(tmp_path / "log.csv", "user,item,rating,timestamp\n1,1,4,100.25\n1,2,4,101.75\n1,3,4,102\n")
    with caplog.at_level("WARNING", logger="jaxrec"):
        ds = jd.read_log(path)
    assert sorted(ds.ratings["timestamp"]) == [100, 101, 102]
    assert "2 time(s) with fractions of their unit (line 2: 100.25) read as whole units (0 distinct" in caplog.text
    # float epochs of several users in one second (time.time()): a few merge, the log is read (it was refused)
    caplog.clear()
    log = pd.DataFrame(
        {
            "user": [1, 1, 2, 2],
            "item": [10, 11, 10, 12],
            "rating": [5.0, 4, 3, 2],
            "ts": [1.7e9 + 0.125, 1.7e9 + 60.5, 1.7e9 + 0.75, 1.7e9 + 100.25],
        }
    )
    with caplog.at_level("WARNING", logger="jaxrec"):
        assert sorted(jd.from_dataframe(log, timestamp="ts").ratings["timestamp"]) == [
            1.7e9,
            1.7e9,
            1.7e9 + 60,
            1.7e9 + 100,
        ]
    assert "(1 distinct time(s) merged; a user's ties keep the file's order)" in caplog.text


def test_what_a_frame_or_a_log_leaves_unread_or_cannot_tell_apart_is_said(caplog):
    """A frame's 'timestamp' column was left unread without a word (the file readers take it by name), rows below
    the positive threshold were counted in the report alone, a log of one rating value scored every method
    perfectly without a word, and a 0 that means "not rated" was read as a rating unsaid."""
    log = pd.DataFrame(
        {"user": [1, 1, 2, 2], "item": [1, 2, 1, 3], "rating": [5.0, 2.0, 4.0, 5.0], "timestamp": [4, 3, 2, 1]}
    )
    with caplog.at_level("INFO", logger="jaxrec"):
        jd.from_dataframe(log)
        assert "column 'timestamp' is not read (timestamp=None)" in caplog.text
        caplog.clear()
        assert jd.from_dataframe(log, timestamp="timestamp").has_timestamps
        assert "is not read" not in caplog.text
        ds = jd.from_dataframe(log, timestamp="timestamp", feedback="implicit", positive_threshold=4.0)
        assert ds.report["below_threshold_dropped"] == 1
        assert "left out 1 row(s) rated below positive_threshold=4" in caplog.text
        jd.from_dataframe(log.assign(rating=4.0), timestamp="timestamp")
        assert "every rating in column 'rating' is 4: with one value" in caplog.text
        # Book-Crossing's 0 (on 0-10) is an interaction without a rating: read as a rating, the worst one
        caplog.clear()
        jd.from_dataframe(log.assign(rating=[0.0, 8.0, 0.0, 10.0]))
        assert "50% of the ratings in column 'rating' are 0, and the others 8 to 10: if 0 means" in caplog.text
        caplog.clear()
        jd.from_dataframe(log.assign(rating=[0.0, 0.5, 1.0, 2.0]))  # 0 beside 0.5: a scale that starts at 0
        jd.from_dataframe(log.assign(rating=[0.0, 3.0, 4.0, 5.0]), feedback="implicit")  # read as interactions
        assert "are 0" not in caplog.text


TIME_FORMS = {
    "naive": lambda s: pd.to_datetime(s, unit="s"),
    "zoned": lambda s: pd.to_datetime(s, unit="s", utc=True).dt.tz_convert("Asia/Kolkata"),
    "arrow, zoned": lambda s: pd.to_datetime(s, unit="s", utc=True).astype("timestamp[us, tz=UTC][pyarrow]"),
    "arrow": lambda s: pd.to_datetime(s, unit="s").astype("timestamp[us][pyarrow]"),
}


@pytest.mark.parametrize("form", sorted(TIME_FORMS))
def test_a_frames_times_are_the_same_seconds_in_every_datetime_form(form):
    """A pyarrow timestamp with a zone (what read_parquet(dtype_backend='pyarrow') gives) crashed in pandas."""
    log = pd.DataFrame({"user": [1, 1, 2], "item": [1, 2, 1], "rating": [5.0, 2.0, 4.0], "timestamp": [1.6e9, 0, -9]})
    log["timestamp"] = log["timestamp"].astype(np.int64)
    expected = jd.from_dataframe(log, timestamp="timestamp").ratings["timestamp"].tolist()
    converted = log.assign(timestamp=TIME_FORMS[form](log["timestamp"]))
    assert jd.from_dataframe(converted, timestamp="timestamp").ratings["timestamp"].tolist() == expected


@pytest.mark.parametrize(
    ("convert", "kind"),
    [
        (lambda s: pd.to_timedelta(s, unit="s"), "durations"),
        (lambda s: pd.to_datetime(s, unit="s").dt.to_period("D"), "periods"),
    ],
)
def test_durations_and_periods_are_no_times(convert, kind):
    """They were stored as microseconds and day numbers without a word."""
    log = pd.DataFrame(
        {"user": [1, 2], "item": [1, 1], "rating": [5.0, 4.0], "timestamp": [1_600_000_000, 1_600_000_100]}
    )
    with pytest.raises(jd.DataError, match=f"column 'timestamp' holds {kind} .*not points in time"):
        jd.from_dataframe(log.assign(timestamp=convert(log["timestamp"])), timestamp="timestamp")


def test_extra_fields_in_a_fixed_format_file(tmp_path):
    d = tmp_path / "ml-100k"
    _write(d / "u.data", "1\t2\t3\t4\t5\n")
    _write(d / "u.item", "2|T (1990)|01-Jan-1990||url" + "|0" * 19 + "\n")
    _write(d / "u.user", "1|20|M|other|12345\n")
    with pytest.raises(jd.DataError, match=r"u.data: line 1 has 5 field\(s\).*4 are expected"):
        parse_movielens("ml-100k", d)


def test_non_numeric_rating_names_file_column_and_line(tmp_path):
    path = _write(tmp_path / "r.csv", "user,item,rating\n1,1,4\n1,2,five\n2,1,3\n")
    with pytest.raises(jd.DataError, match=r"r.csv: column 'rating' line 3 is not a finite number: 'five'"):
        jd.from_csv(path)


def test_nan_rating_is_reported():
    log = pd.DataFrame({"user": [1, 2], "item": [1, 1], "rating": [4.0, np.nan]})
    with pytest.raises(jd.DataError, match=r"column 'rating' row 1 is missing \(NaN\)"):
        jd.from_dataframe(log)
    with pytest.raises(jd.DataError, match="not a finite number"):
        jd.from_dataframe(log.fillna(np.inf))


def test_missing_user_id_is_reported():
    log = pd.DataFrame({"user": [1, None], "item": [1, 1], "rating": [4.0, 3.0]})
    with pytest.raises(jd.DataError, match="column 'user' row 1 has a missing user id"):
        jd.from_dataframe(log)


def test_duplicates_keep_the_latest_and_are_counted():
    log = pd.DataFrame(
        {"user": [1, 1, 1, 2], "item": [7, 7, 7, 7], "rating": [1.0, 5.0, 3.0, 2.0], "ts": [10, 30, 20, 5]}
    )
    ds = jd.from_dataframe(log, timestamp="ts")
    assert ds.report["duplicates_removed"] == 2 and "duplicates_removed=2" in ds.summary()
    assert ds.ratings.sort_values("user")["rating"].tolist() == [5.0, 2.0]
    # without timestamps the last in file order wins
    assert jd.from_dataframe(log).ratings.sort_values("user")["rating"].tolist() == [3.0, 2.0]


def test_users_below_minimum_are_dropped_and_counted():
    log = pd.DataFrame({"user": [1, 1, 1, 2, 3, 3], "item": [1, 2, 3, 1, 1, 2], "rating": [1.0] * 6})
    ds = jd.from_dataframe(log, min_user_ratings=2)
    assert ds.user_ids.tolist() == [1, 3]
    assert ds.report["users_below_min_dropped"] == 1 and ds.report["ratings_below_min_dropped"] == 1
    assert "users_below_min_dropped=1" in ds.summary()
    assert ds.report["ratings_read"] == ds.report["ratings_kept"] + 1
    with pytest.raises(jd.DataError, match="no ratings left"):
        jd.from_dataframe(log, min_user_ratings=10)


def test_empty_files(tmp_path):
    with pytest.raises(jd.DataError, match=r"empty.csv: file is empty"):
        jd.from_csv(_write(tmp_path / "empty.csv", ""))
    with pytest.raises(jd.DataError, match=r"blank.csv: file is empty"):
        jd.from_csv(_write(tmp_path / "blank.csv", "\n\n"))
    with pytest.raises(jd.DataError, match=r"header.csv: file has a header but no rows"):
        jd.from_csv(_write(tmp_path / "header.csv", "user,item,rating\n"), sep=",", header=True)
    with pytest.raises(jd.DataError, match="no ratings"):
        jd.from_dataframe(pd.DataFrame({"user": [], "item": [], "rating": []}))


def test_wrong_separator(tmp_path):
    path = _write(tmp_path / "tabs.tsv", "1\t2\t3\n4\t5\t6\n")
    with pytest.raises(jd.DataError, match=r"tabs.tsv: line 1 .* single field with separator ','"):
        jd.from_csv(path, sep=",")
    assert jd.from_csv(path).n_ratings == 2  # sniffed
    with pytest.raises(jd.DataError, match=r"words.txt: cannot tell the separator"):
        jd.from_csv(_write(tmp_path / "words.txt", "hello world\nno separators here\n"))


def test_movielens_dat_with_wrong_separator(tmp_path):
    d = tmp_path / "ml-10m"
    _write(d / "ratings.dat", "1,122,5,838985046\n")
    _write(d / "movies.dat", "122::Boomerang (1992)::Comedy\n")
    with pytest.raises(jd.DataError, match=r"ratings.dat: line 1 has 1 field\(s\) separated by '::'"):
        parse_movielens("ml-10m", d)


def test_unknown_role_and_column_counts(tmp_path):
    path = _write(tmp_path / "p.csv", "1,2,3\n")
    with pytest.raises(jd.DataError, match=r"the columns given name 2 column\(s\)"):
        jd.from_csv(path, columns=["user", "item"])
    with pytest.raises(jd.DataError, match=r"unknown role\(s\) \['stars'\]"):
        jd.from_csv(path, columns=["user", "item", "stars"])
    ds = jd.from_csv(path, columns=["item", "user", "_"])  # implicit, columns swapped
    assert ds.user_ids.tolist() == [2] and ds.rating_range == (1.0, 1.0)


def test_empty_scenario_yields_no_batches_but_infinite_stream_refuses():
    ds = jd.load()
    feat = jd.Featurizer.fit(ds)
    empty = build_tasks(ds.ratings.iloc[:0], feat, "kshot", support=3)
    assert len(empty) == 0 and list(task_batches(empty, batch_size=4, shuffle=False, epochs=1)) == []
    with pytest.raises(jd.DataError, match="no tasks"):
        next(task_batches(empty, batch_size=4))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40))
def test_dedup_keeps_latest_then_last_in_file_like_pandas(rows):
    log = pd.DataFrame(rows, columns=["user", "item", "ts"]).assign(rating=np.arange(len(rows), dtype=float))
    ds = jd.from_dataframe(log, timestamp="ts")
    expected = log.sort_values("ts", kind="stable").groupby(["user", "item"]).tail(1)
    assert sorted(ds.ratings["rating"].tolist()) == sorted(expected["rating"].tolist())
    assert ds.report["duplicates_removed"] == len(log) - len(expected)


def test_a_quote_that_swallows_lines_is_an_error_naming_its_line(tmp_path):
    """In a comma-separated file a field opening with '"' runs to the next '"', across lines: the lines between
    used to be merged into one id in silence."""
    swallow = _write(tmp_path / "swallow.csv", 'u1,a,3\nu1,"Heroes (single),5\nu2,b,1\nu3,"c,2\nu4,d,1\n')
    with pytest.raises(jd.DataError, match=r"swallow.csv: column 1 line 2 holds a line break.*quote"):
        jd.from_csv(swallow, columns=["user", "item", "weight"])
    unclosed = _write(tmp_path / "unclosed.csv", 'user,item,weight\n\nu1,a,3\nu1,"Heroes,5\nu2,b,1\n')
    with pytest.raises(jd.DataError, match=r"unclosed.csv: line 4 opens a quote '\"' that is never closed"):
        jd.from_csv(unclosed, columns=["user", "item", "weight"])
    quoted = _write(tmp_path / "quoted.csv", 'u1,a,3\nu1,"Earth, Wind & Fire",5\n')  # proper quoting is fine
    assert "Earth, Wind & Fire" in jd.from_csv(quoted, columns=["user", "item", "weight"]).item_ids.tolist()


def test_a_quote_escaped_with_a_backslash_is_an_error_naming_its_line(tmp_path):
    """Book-Crossing's files write a quote inside a quoted field as \": CSV ends the field at that quote and the
    parser appends the rest, so "12\"34X" used to be read, without a word, as the id 12\34X"."""
    log = 'user;item;rating\n"u0";"a ""b"" c";"1"\n"u1";"0002005018";"5"\n"u2";"12\\"34X";"0"\n"u3";"034545104X";"7"\n'
    escaped = _write(tmp_path / "bx.csv", log)
    with pytest.raises(jd.DataError, match=r"bx.csv: line 4: a quoted field escapes a quote with a backslash"):
        jd.from_csv(escaped, feedback="implicit")  # the line of the escape, not line 2's doubled quotes
    with pytest.raises(jd.DataError, match=r"bx.csv: line 4: .*write the quote twice"):
        jd.from_csv(escaped, "user=user,item=item")  # whichever columns are read
    books = _write(tmp_path / "books.csv", 'isbn;title\n"0002005018";"A \\"quoted\\" title; vol. 1"\n')
    with pytest.raises(jd.DataError, match=r"books.csv: cannot tell the separator; line 2: .*write the quote twice"):
        jd.read_side_table(books, "item")  # too short to sniff its separator
    more = _write(tmp_path / "more.csv", 'isbn;title\n"1";"Plain"\n"2";"Plain too"\n"3";"A \\"quoted\\" one"\n')
    with pytest.raises(jd.DataError, match=r"more.csv: cannot read it as a table .*; line 4: .*write the quote twice"):
        jd.read_side_table(more, "item")
    # CSV as written is read as written: quotes doubled, a backslash that ends a field (beside a doubled quote on
    # another line), a backslash before a quote in an unquoted field, a Shift-JIS character whose second byte is a
    # backslash's
    doubled = _write(tmp_path / "doubled.csv", log.replace('\\"', '""'))
    assert '12"34X' in jd.from_csv(doubled, feedback="implicit").item_ids.tolist()
    plain = 'user,item,weight\nu1,"C:\\dir\\",3\nu2,"12"" vinyl",1\nu3,12\\"34X,2\n'
    read = jd.from_csv(_write(tmp_path / "plain.csv", plain), feedback="implicit").item_ids.tolist()
    assert sorted(read) == ['12" vinyl', '12\\"34X', "C:\\dir\\"]
    shift_jis = tmp_path / "sjis.csv"
    shift_jis.write_bytes('user,item,weight\nu1,"ソ""x",1\nu2,b,2\n'.encode("shift_jis"))
    assert b'\\"' in shift_jis.read_bytes()
    assert 'ソ"x' in jd.from_csv(shift_jis, feedback="implicit", encoding="shift_jis").item_ids.tolist()
    books.write_text(books.read_text().replace('\\"', '""'))
    assert jd.read_side_table(books, "item")["title"].tolist() == ['A "quoted" title; vol. 1']
    # a new user's item,rating file, as recommend reads it
    from jaxrec.experiment.recommend import read_user_ratings
    from jaxrec.experiment.run import RunError

    ids = np.array(["0002005018", '12"34X', '12\\"34X', "C:\\dir\\"])
    rated = _write(tmp_path / "mine.csv", 'item;rating\n"0002005018";"5"\n"12\\"34X";"7"\n')
    with pytest.raises(RunError, match=r"mine.csv: line 3: a quoted field escapes a quote with a backslash"):
        read_user_ratings(rated, ids, (0.0, 10.0))
    rated.write_text(rated.read_text().replace('\\"', '""'))
    codes, ratings, _, _ = read_user_ratings(rated, ids, (0.0, 10.0))
    assert codes.tolist() == [0, 1] and ratings.tolist() == [5.0, 7.0]
    tabs = _write(tmp_path / "mine.tsv", '12\\"34X\t5\n"C:\\dir\\"\t4\n')
    codes, ratings, _, _ = read_user_ratings(tabs, ids, (0.0, 10.0))
    assert codes.tolist() == [2, 3] and ratings.tolist() == [5.0, 4.0]


def test_line_numbers_count_blank_lines(tmp_path):
    """Blank lines are skipped but still counted: errors used to name a line too early after each blank one."""
    path = _write(tmp_path / "ts.csv", "\nuser,item,timestamp\nu1,i1,1700000000\n\n   \nu2,i2,yesterday\n")
    with pytest.raises(jd.DataError, match=r"ts.csv: column 'timestamp' line 6 is not a finite number: 'yesterday'"):
        jd.from_csv(path)
    ds = jd.from_csv(_write(tmp_path / "ok.csv", "user,item,rating\n\n1,2,3\n\n2,2,4\n"))
    assert ds.n_ratings == 2 and ds.report["blank_lines_skipped"] == 2
    with pytest.raises(jd.DataError, match=r"empty_fields.csv: column 'user' line 3 has a missing user id"):
        jd.from_csv(_write(tmp_path / "empty_fields.csv", "user,item,rating\n1,2,3\n,,\n"))  # not a blank line


def test_a_bad_iso_date_names_its_line(tmp_path):
    path = _write(tmp_path / "dates.csv", "user,item,timestamp\nu1,i1,2024-01-08T17:00:07Z\n\nu2,i1,2024-13-01\n")
    with pytest.raises(jd.DataError, match=r"dates.csv: column 'timestamp' line 4 is not an ISO-8601 date.*2024-13-01"):
        jd.from_csv(path, feedback="implicit")


def test_dates_in_another_form_say_which_forms_are_times(tmp_path):
    """Goodreads writes 'Fri Aug 25 13:55:02 -0700 2017': refused as 'not a finite number', which named no way on."""
    path = _write(tmp_path / "shelves.tsv", "user\titem\tdate_added\nu1\tb1\tFri Aug 25 13:55:02 -0700 2017\n")
    with pytest.raises(
        jd.DataError, match=r"line 2 is not a finite number: 'Fri Aug 25 .*; a time is a number .*ISO-8601"
    ):
        jd.from_csv(path, "user=user,item=item,timestamp=date_added", feedback="implicit")
    with pytest.raises(
        jd.DataError, match=r"column 'rating' line 2 is not a finite number: 'x' \(1 bad value\(s\) in total\)$"
    ):
        jd.from_csv(_write(tmp_path / "r.csv", "user,item,rating\nu1,b1,x\n"))  # a rating: no word of times


def test_a_file_in_another_encoding_names_its_line_and_the_flag(tmp_path):
    """A Latin-1 log read as UTF-8: the error names the first line that does not decode and --encoding; read with
    its encoding, its ids keep their letters."""
    log = tmp_path / "plays.tsv"
    lines = [f"user{u}\tartist{u % 7}\t{u + 1}" for u in range(30)]
    lines[11] = "user11\tBj\xf6rk\t3"
    log.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(jd.DataError, match=r"line 12 is not utf-8 text \(byte\(s\) f6 at column 10\).*--encoding"):
        jd.from_csv(log, columns=["user", "item", "weight"], feedback="implicit")
    ds = jd.from_csv(log, columns=["user", "item", "weight"], feedback="implicit", encoding="latin-1")
    assert "Bj\xf6rk" in set(ds.item_ids)


def test_a_missing_datetime_or_an_empty_id_is_named_not_read():
    """NaT as int64 is -2^63: it would have made the row every user's earliest interaction, in silence."""
    log = pd.DataFrame({"user": ["a", "b"], "item": [1, 2], "when": pd.to_datetime(["2024-01-01", None])})
    with pytest.raises(jd.DataError, match=r"column 'when' row 1 is missing"):
        jd.from_dataframe(log, rating=None, timestamp="when", feedback="implicit")
    blank = pd.DataFrame({"user": ["a", ""], "item": [1, 2]})
    with pytest.raises(jd.DataError, match=r"column 'user' row 1 has a missing user id"):
        jd.from_dataframe(blank, rating=None, feedback="implicit")


def test_one_column_in_two_roles_is_refused(tmp_path):
    path = _write(tmp_path / "log.csv", "visitor,venue\nv1,a\nv2,b\n")
    with pytest.raises(jd.DataError, match=r"log.csv: columns= .* reads column 'visitor' as both user and item"):
        jd.from_csv(path, columns="user=visitor,item=visitor", feedback="implicit")
    assert jd.from_csv(path, columns="user=visitor,item=venue", feedback="implicit").n_ratings == 2


def test_recommend_matches_integer_ids_beyond_float64s_exact_range():
    """Ids from 10^17 on: float64 merged neighbouring ids (...001 and ...005 both read as ...000)."""
    from jaxrec.experiment.recommend import item_codes_of

    ids = 10**17 + np.arange(300, dtype=np.int64)
    asked = ["100000000000000001", "100000000000000005", " 100000000000000299 ", "100000000000000300", "x"]
    assert item_codes_of(asked, ids).tolist() == [1, 5, 299, -1, -1]
    assert item_codes_of(["5", "5.0", "+6", "6.5"], np.array([5, 6])).tolist() == [0, 0, 1, -1]


def test_recommend_reads_ids_with_spaces_of_their_own(tmp_path):
    """The log kept " padded " as an item (and serve took it); the command stripped it to an unknown "padded"."""
    from jaxrec.experiment.recommend import read_user_ratings

    ids = np.array([" padded ", "plain", "007", "7"], dtype=object)
    path = _write(tmp_path / "mine.txt", ' padded \n  plain  \n"007"\n')
    codes, weights, notes, _ = read_user_ratings(path, ids, None, implicit=True)
    assert codes.tolist() == [0, 1, 2] and weights.tolist() == [1.0, 1.0, 1.0] and notes == []


def test_a_user_file_with_nothing_to_adapt_to_names_what_the_batch_and_the_service_answer(tmp_path):
    """One user's file of no known item, or of ratings all below a top-N model's threshold, is an error for
    ``recommend --ratings`` (a file of another catalogue is worth stopping for), where ``--users`` and the service
    answer the model's list before adaptation: the message says so."""
    from jaxrec.experiment.recommend import read_user_ratings
    from jaxrec.experiment.run import RunError

    ids = np.array(["a", "b", "c"], dtype=object)
    unknown = _write(tmp_path / "unknown.txt", "x\ny\n")
    with pytest.raises(RunError, match=r"none of the items is known .*the model's list before adaptation"):
        read_user_ratings(unknown, ids, None, implicit=True)
    low = _write(tmp_path / "low.csv", "a,2\nb,3\n")
    with pytest.raises(RunError, match=r"below the model's positive threshold 4; .*the model's list before adaptation"):
        read_user_ratings(low, ids, (1.0, 5.0), implicit=True, positive_threshold=4.0)
    # a known item below the threshold and an unknown one: the file is of this catalogue
    mixed = _write(tmp_path / "mixed.csv", "a,2\nzzz,5\n")
    with pytest.raises(RunError, match=r"every known item's rating is below the model's positive threshold 4; "):
        read_user_ratings(mixed, ids, (1.0, 5.0), implicit=True, positive_threshold=4.0)


@pytest.mark.parametrize(
    "first, words", [("u9,i5,n/a", "line 1 is not a finite number: 'n/a'"), ("u9,i5,", "line 1 is missing")]
)
def test_a_bad_value_on_a_headerless_logs_first_line_is_named_not_read_as_a_header(tmp_path, first, words):
    """Line 1 of a headerless log with a bad rating used to be read as a header: the row, and its user, were
    dropped in silence. A header's names are not missing values, and its user is not one of the users below;
    a header of names no role has, over ids without digits, is still a header."""
    rows = [first] + [f"u{k},i{k % 4},{1 + k % 5}" for k in range(8)]
    path = _write(tmp_path / "log.csv", "\n".join(rows) + "\n")
    with pytest.raises(jd.DataError, match=words):
        jd.from_csv(path, columns=["user", "item", "rating"])
    for header in ("user,item,rating", "reader,book,score", "who,what,stars"):
        ds = jd.from_csv(
            _write(tmp_path / "named.csv", "\n".join([header, *rows[1:]]) + "\n"), columns=["user", "item", "rating"]
        )
        assert ds.report["header_line_read"] and ds.n_ratings == 8, header
    words_only = _write(tmp_path / "words.csv", "reader,book,stars\nalice,dune,4\n")
    assert jd.from_csv(words_only, columns=["user", "item", "rating"]).report["header_line_read"]
    again = _write(tmp_path / "again.csv", "alice,dune,four\nalice,emma,3\nbob,dune,2\n")  # alice again: data
    with pytest.raises(jd.DataError, match="line 1 is not a finite number: 'four'"):
        jd.from_csv(again, columns=["user", "item", "rating"])


def test_a_rating_beyond_the_scale_learned_from_meta_train_is_warned_of_naming_the_file(tmp_path, caplog):
    """A rating of 11 on a 1-10 log, by a user outside meta-train, was scored against predictions clipped to the
    learned [1, 10] without a word; declared (``rating_range``), the scale refuses it naming the file."""
    rows = ["user,item,rating"] + [f"u{u},i{i},{1 + (u + i) % 10}" for u in range(6) for i in range(12)]
    rows.append("u9,i3,11")
    path = _write(tmp_path / "books.csv", "\n".join(rows) + "\n")
    ds = jd.from_csv(path)
    train = ds.ratings[ds.ratings["user"] < 6]
    with caplog.at_level("WARNING"):
        featurizer = jd.Featurizer.fit(ds, train)
    assert featurizer.spec.rating_range == (1.0, 10.0)
    assert f"{path}: the rating 11 of user 'u9' on item 'i3' is outside the rating scale [1, 10]" in caplog.text
    assert "--rating-scale" in caplog.text
    with pytest.raises(jd.DataError, match=f"{path}: the rating 11 of user 'u9'"):
        jd.Featurizer.fit(ds, train, rating_range=(1.0, 10.0))
    # numeric ids as the log wrote them (they read np.int64(9) on item np.int64(3))
    numbers = _write(
        tmp_path / "numbers.csv", "\n".join([rows[0], *(r.replace("u", "").replace("i", "") for r in rows[1:])]) + "\n"
    )
    with pytest.raises(jd.DataError, match=r"the rating 11 of user 9 on item 3 is outside the rating scale \[1, 10\]"):
        jd.Featurizer.fit(jd.from_csv(numbers), rating_range=(1.0, 10.0))
