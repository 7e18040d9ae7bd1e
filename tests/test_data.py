"""Tests of eigenlstm.data: CSV reading (every problem named by file, line and column), the
calendar arithmetic, the bundled data sets, and the scaling and windows the model reads.

The CLI's view of the same errors is in test_cli.py; training on the series in test_forecast.py.
"""

import re

import numpy as np
import pytest

from eigenlstm import data
from eigenlstm.data import CSVError, read_series


def write(tmp_path, text, name="series.csv"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


# ---- the calendar -------------------------------------------------------------------------
def test_next_dates_follow_each_calendar():
    def after(last, freq, steps):
        dates = data.next_dates(np.array([last], dtype="datetime64[D]"), freq, steps)
        return [str(d) for d in dates]

    assert after("2020-01-03", "W", 2) == ["2020-01-10", "2020-01-17"]
    assert after("2020-12-31", "D", 1) == ["2021-01-01"]
    assert after("2020-11-01", "M", 3) == ["2020-12-01", "2021-01-01", "2021-02-01"]
    assert after("2020-10-01", "Q", 1) == ["2021-01-01"]
    assert after("1999-01-01", "Y", 2) == ["2000-01-01", "2001-01-01"]


def test_shift_dates_keeps_month_ends_clips_other_days_and_goes_both_ways():
    days = np.array(["2020-01-31", "2020-01-30", "2020-02-29"], dtype="datetime64[D]")
    assert [str(d) for d in data.shift_dates(days, "M", 1)] == [
        "2020-02-29",
        "2020-02-29",
        "2020-03-31",
    ]
    assert [str(d) for d in data.shift_dates(days, "Q", -1)] == [
        "2019-10-31",
        "2019-10-30",
        "2019-11-30",
    ]
    assert [str(d) for d in data.shift_dates(days[2:], "Y", [1, 4])] == ["2021-02-28", "2024-02-29"]
    assert str(data.shift_dates(days[:1], "W", -1)[0]) == "2020-01-24"


def test_shift_dates_refuses_an_unknown_frequency():
    with pytest.raises(
        ValueError,
        match=r"shift_dates: freq must be one of \['D', 'W', 'M', "
        r"'Q', 'Y'\], got 'H'",
    ):
        data.shift_dates(np.array(["2020-01-01"], dtype="datetime64[D]"), "H", 1)


@pytest.mark.parametrize(
    "step, freq", [(1, "D"), (7, "W"), (31, "M"), (92, "Q"), (366, "Y"), (10, None)]
)
def test_infer_frequency_reads_the_median_step(step, freq):
    dates = np.datetime64("2020-01-01") + step * np.arange(5)
    assert data.infer_frequency(dates) == freq
    assert data.infer_frequency(dates[:1]) is None


# ---- reading CSV files: what is accepted --------------------------------------------------
def test_a_quoted_field_may_hold_the_delimiter_and_line_breaks(tmp_path):
    path = write(tmp_path, 'month,y,note\n2020-01,1,"a, b"\n2020-02,2,"two\nlines"\n2020-03,3,x\n')
    s = read_series(path, "y")
    assert s.values.tolist() == [1.0, 2.0, 3.0] and s.frequency == "M"
    assert s.labels == ["2020-01", "2020-02", "2020-03"]


def test_a_quoted_field_with_a_line_break_leaves_later_line_numbers_right(tmp_path):
    # line 1 header, 2-4 one row (its quoted note holds two line breaks), 5 a row, 6 the error
    path = write(
        tmp_path, 'month,y,note\n2020-01,1,"three\nline\nnote"\n2020-02,2,x\n2020-03,abc,x\n'
    )
    with pytest.raises(
        CSVError,
        match=rf"^{re.escape(str(path))}:6: column 'y' has 'abc', "
        "which is not a number$",
    ):
        read_series(path, "y")


def test_an_error_in_a_row_over_several_lines_names_its_first_line_and_its_span(tmp_path):
    path = write(tmp_path, 'month,y\n2020-01,1\n2020-02,"2\n3"\n')
    with pytest.raises(
        CSVError,
        match=rf"^{re.escape(str(path))}:3: column 'y' has '2\\n3', "
        r"which is not a number \(the row runs over lines 3-4",
    ):
        read_series(path, "y")


def test_comments_and_blank_lines_are_skipped_and_counted(tmp_path):
    # a comment holding the delimiter and an unbalanced quote is still a comment
    path = write(
        tmp_path, '# source: "somewhere, 2020\n\nmonth,y\n  # indented\n2020-01,1\n\n2020-02,x\n'
    )
    with pytest.raises(CSVError, match=rf"^{re.escape(str(path))}:7: column 'y' has 'x'"):
        read_series(path, "y")


def test_windows_line_endings_and_a_byte_order_mark_are_read(tmp_path):
    # spreadsheets write both; the mark must not become part of the first column's name
    text = "year,units\r\n" + "".join(f"{1990 + i},{i}\r\n" for i in range(5))
    s = read_series(write(tmp_path, b"\xef\xbb\xbf" + text.encode()))
    assert s.column == "units" and s.frequency == "Y" and str(s.dates[-1]) == "1994-01-01"


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_each_delimiter_is_sniffed(tmp_path, delimiter):
    text = f"date{delimiter}units{delimiter}store\n" + "".join(
        f"2020-01-{d:02d}{delimiter}{d}{delimiter}x y\n" for d in range(1, 11)
    )
    s = read_series(write(tmp_path, text))
    assert s.column == "units" and s.values.sum() == 55 and s.frequency == "D"


def test_a_file_without_header_names_its_columns_col1_col2(tmp_path):
    s = read_series(write(tmp_path, "1,10\n2,20\n3,30\n"), "col2")
    assert s.values.tolist() == [10.0, 20.0, 30.0] and s.columns == ["col2"]


# ---- reading CSV files: every problem names the file, the line and the column -------------
CASES = {
    # name: (file text, read_series keywords, line, the rest of the message, a regex)
    "empty value": (
        "month,y\n2020-01,1\n2020-02,\n",
        {"column": "y"},
        3,
        r"column 'y' has an empty value, which is not a number",
    ),
    "not a number": (
        "month,y\n2020-01,1\n2020-02,1.2.3\n",
        {"column": "y"},
        3,
        r"column 'y' has '1\.2\.3', which is not a number",
    ),
    "not finite": (
        "month,y\n2020-01,inf\n",
        {"column": "y"},
        2,
        r"column 'y' has 'inf', not a finite number",
    ),
    "unknown target": (
        "month,y\n2020-01,1\n",
        {"column": "sales"},
        1,
        r"no column 'sales' \(the target\); the columns are \['month', 'y'\]",
    ),
    "unknown input": (
        "month,y\n2020-01,1\n",
        {"column": "y", "columns": ["price"]},
        1,
        r"no column 'price' \(an input\); the columns are \['month', 'y'\]",
    ),
    "repeated column": (
        "# two y columns\nmonth,y,y\n2020-01,1,2\n",
        {"column": "y"},
        2,
        r"column 'y' \(the target\) is in the header 2 times \(fields 2, 3\)",
    ),
    "the dates as target": (
        "month,y\n2020-01,1\n",
        {"column": "month"},
        1,
        r"column 'month' \(the target\) holds the dates; the numeric "
        r"columns are \['y'\]",
    ),
    "too few fields": (
        "month,y,z\n2020-01,1,2\n2020-02,1\n",
        {"column": "y"},
        3,
        r"expected 3 fields as in the header \['month', 'y', 'z'\] \(delimiter "
        r"','\), got 2: '2020-02,1'; the row ends before column 'z'",
    ),
    "too many fields": (
        "month,y\n2020-01,1\n2020-02,2,99\n",
        {"column": "y"},
        3,
        r"expected 2 fields as in the header .*, got 3: '2020-02,2,99'; field 3, "
        r"'99', is past the last column 'y'",
    ),
    "malformed date": (
        "month,y\n2020-01,1\n2020-02,2\nFeb 2020,3\n",
        {},
        4,
        r"column 'month' has 'Feb 2020', which is not a date like the rows above",
    ),
    "a day not on the calendar": (
        "day,y\n2021-02-27,1\n2021-02-28,2\n2021-02-29,3\n",
        {},
        4,
        r"column 'day' has '2021-02-29', which is not a date",
    ),
    "dates out of order": (
        "month,y\n2020-01,1\n2020-02,2\n2020-04,3\n2020-03,4\n2020-05,5\n2020-06,6\n2020-07,7\n",
        {},
        4,
        r"column 'month' has '2020-04' after '2020-02' \(line 3\); "
        r"monthly data needs 2020-03-01 there",
    ),
    "no frequency": (
        "date,y\n2020-01-01,1\n2020-01-11,2\n2020-01-21,3\n",
        {},
        3,
        r"column 'date': cannot tell the frequency of the dates",
    ),
    "header only": ("# nothing yet\nmonth,y\n", {}, 2, r"a header but no data rows"),
    "a quote never closed": (
        'month,y,note\n2020-01,1,x\n2020-02,2,"open\n2020-03,3,x\n',
        {"column": "y"},
        3,
        r"a quoted field that opens on this line is "
        r"never closed \(the file ends inside it, at "
        r"line 4\)",
    ),
    "text after a closing quote": (
        'month,y\n2020-01,"1"2\n',
        {"column": "y"},
        2,
        r"cannot parse as CSV: ',' expected after '\"'",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_each_csv_problem_is_an_error_naming_the_file_the_line_and_the_column(tmp_path, case):
    text, kwargs, line, message = CASES[case]
    path = write(tmp_path, text)
    with pytest.raises(CSVError, match=rf"^{re.escape(str(path))}:{line}: {message}"):
        read_series(path, **kwargs)


def test_a_byte_that_is_not_utf8_is_reported_at_its_line(tmp_path):
    path = write(tmp_path, b"month,y\n2020-01,1\n2020-02,\xe9\n")
    with pytest.raises(
        CSVError,
        match=rf"^{re.escape(str(path))}:3: not a UTF-8 text file "
        r"\(invalid continuation byte: byte 0xe9 at offset 26\)$",
    ):
        read_series(path)


def test_a_utf16_file_is_told_to_be_saved_as_utf8(tmp_path):
    path = write(tmp_path, "month,y\n2020-01,1\n".encode("utf-16"))
    with pytest.raises(
        CSVError,
        match=r":1: not a UTF-8 text file .*it starts with a UTF-16 "
        r"byte-order mark: save it as UTF-8\)$",
    ):
        read_series(path)


@pytest.mark.parametrize(
    "text, what",
    [("", "the file is empty"), ("# a\n\n   \n# b\n", "its 4 lines are comments or blank")],
)
def test_a_file_without_rows_says_whether_it_is_empty_or_only_comments(tmp_path, text, what):
    path = write(tmp_path, text)
    with pytest.raises(CSVError, match=rf"^{re.escape(str(path))}: no data rows: {what}$"):
        read_series(path)


def test_a_missing_file_and_a_bad_delimiter_name_the_file(tmp_path):
    with pytest.raises(CSVError, match=r"nope\.csv: cannot read the file: No such file"):
        read_series(tmp_path / "nope.csv")
    path = write(tmp_path, "y\n1\n")
    with pytest.raises(
        CSVError,
        match=r"series\.csv: the delimiter must be one character, "
        r"got ';;'",
    ):
        read_series(path, delimiter=";;")


def test_a_headerless_file_names_its_columns_in_errors(tmp_path):
    path = write(tmp_path, "# no header\n1,10\n2,20,30\n")
    with pytest.raises(
        CSVError,
        match=r":3: expected 2 fields as in the first row \(no header; "
        r"columns \['col1', 'col2'\]\)",
    ):
        read_series(path, "col2")


# ---- bundled data sets --------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(data.DATASETS))
def test_every_bundled_data_set_loads_with_its_target_and_dates(name):
    spec = data.DATASETS[name]
    s = data.load_dataset(name)
    assert s.dataset == name and s.column == spec["target"]
    assert s.columns == [spec["target"], *(spec["columns"] or [])]
    assert s.dates is not None and s.frequency in data.FREQUENCIES
    assert name in s.about() and spec["about"] in s.about()


def test_an_unknown_data_set_lists_the_bundled_ones():
    with pytest.raises(
        ValueError,
        match=r"dataset must be one of \['airline', 'births', "
        r"'gasoline', 'usmacro'\], got 'nope'",
    ):
        data.load_dataset("nope")


# ---- arrays and pandas-like objects -------------------------------------------------------
def test_as_series_refuses_other_types_and_shapes_naming_the_source():
    with pytest.raises(
        TypeError,
        match=r"^history: expected an array, a pandas Series or "
        r"DataFrame, or an eigenlstm\.data\.Series, got dict$",
    ):
        data.as_series({"y": [1.0]}, source="history")
    with pytest.raises(
        ValueError,
        match=r"^history: expected a 1-D array of values, got shape "
        r"\(2, 2\)$",
    ):
        data.as_series(np.ones((2, 2)), source="history")
    with pytest.raises(ValueError, match=r"column 'y' has nan at position 1; every value must be"):
        data.as_series([1.0, np.nan], "y", source="history")


# ---- scaling and windows ------------------------------------------------------------------
def test_scaling_round_trips_through_its_dict_and_undoes_its_levels():
    rng = np.random.default_rng(0)
    v = np.column_stack([100.0 + rng.random(30), rng.standard_normal(30)])
    sc = data.Scaling.fit(v)
    assert sc.log.tolist() == [True, False]  # no log for a column with values <= 0
    z = sc.transform(v)
    assert z.shape == (29, 2)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    again = data.Scaling.from_dict(sc.to_dict())
    np.testing.assert_array_equal(again.transform(v), z)
    np.testing.assert_allclose(again.unlevel(again.level(v[:, 0], 0)), v[:, 0])


def test_make_windows_reads_the_window_before_each_origin_and_the_horizon_after():
    z = np.arange(20.0).reshape(10, 2)
    x, y = data.make_windows(z, window=3, horizon=2, origins=[4, 8])
    assert x.shape == (2, 3, 2) and y.shape == (2, 2)
    assert x[0, :, 0].tolist() == [0.0, 2.0, 4.0] and y[0].tolist() == [6.0, 8.0]
    x, y = data.make_windows(z, window=3, horizon=2, origins=[])
    assert x.shape == (0, 3, 2) and y.shape == (0, 2)
