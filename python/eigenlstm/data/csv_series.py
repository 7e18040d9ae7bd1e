"""Reading a ``Series`` from a CSV file, and the bundled data sets through it.

The dialect is sniffed among ``, ; tab |``; comment and blank lines are skipped. Every problem
is a ``CSVError`` naming the file, the line and the column. What a ``Series`` is, is
series.py's; the calendar is dates.py's.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Sequence

import numpy as np

from .datasets import DATASETS, dataset_path
from .dates import FREQUENCIES, infer_frequency, parse_date, shift_dates
from .series import Series

__all__ = ["CSVError", "read_series", "load_dataset"]

# A first column of bare years is read as dates only under one of these headers.
_DATE_NAMES = {"date", "day", "week", "month", "quarter", "year", "time", "period", "ds"}
_YEAR = re.compile(r"\d{4}")


class CSVError(ValueError):
    """A CSV file that cannot be read or parsed; the message names the file, line and column."""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_rows(path: str, delimiter: str | None) -> tuple[str, list[tuple[int, list[str]]]]:
    """(dialect delimiter, [(line number, fields)]) of the non-blank, non-comment lines."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise CSVError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CSVError(
            f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})"
        ) from None
    kept = [
        (i, line)
        for i, line in enumerate(lines, start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not kept:
        raise CSVError(f"{path}: no data rows (the file is empty or only comments)")
    if delimiter is None:
        sample = "\n".join(line for _, line in kept[:50])
        try:
            delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","  # one column, or nothing to tell the delimiter by
    rows = []
    for lineno, line in kept:
        try:
            fields = next(csv.reader([line], delimiter=delimiter))
        except csv.Error as exc:
            raise CSVError(f"{path}:{lineno}: cannot parse as CSV: {exc}") from None
        rows.append((lineno, [x.strip() for x in fields]))
    return delimiter, rows


def read_series(
    path: str | os.PathLike[str],
    column: str | None = None,
    *,
    columns: Sequence[str] | None = None,
    delimiter: str | None = None,
) -> Series:
    """Read a numeric target column (and input columns) from a CSV file with a header row.

    Lines starting with ``#`` and blank lines are skipped. The delimiter is detected with
    ``csv.Sniffer`` among ``, ; tab |`` unless given. If the first row is all numbers, the
    file has no header and columns are named ``col1``, ``col2``, ... A first column of dates
    (``YYYY-MM-DD``, ``YYYY/MM/DD``, ``YYYY-MM``, or years under a header such as ``year``)
    becomes ``dates``; they must be increasing at one frequency, with no gaps.

    Parameters
    ----------
    path : str or os.PathLike
    column : str, optional
        The target column. Default: the only numeric column (an error if there are several).
    columns : sequence of str, optional
        More input columns the model reads besides the target's own past.
    delimiter : str, optional
        The field delimiter (one character); sniffed when None.

    Returns
    -------
    Series

    Raises
    ------
    CSVError (a ValueError)
        If the file cannot be opened or decoded, has no rows, a row has the wrong number of
        fields, a column is missing or ambiguous, a value is not a number, or a date is
        malformed, out of order or leaves a gap; the message names the file and, for a bad
        value, its line and column.

    Examples
    --------
    >>> from eigenlstm.data import read_series, default_data_path
    >>> s = read_series(default_data_path())
    >>> len(s), s.column, s.labels[0], float(s.values[0]), s.frequency, str(s.dates[0])
    (144, 'Passengers', '1949-01', 112.0, 'M', '1949-01-01')
    """
    path = os.fspath(path)
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1):
        raise CSVError(f"{path}: the delimiter must be one character, got {delimiter!r}")
    delimiter, rows = _read_rows(path, delimiter)
    header_line, header = rows[0]
    if all(_is_number(x) for x in header):
        names = [f"col{i + 1}" for i in range(len(header))]
        data = rows
    else:
        names, data = header, rows[1:]
    if not data:
        raise CSVError(f"{path}:{header_line}: a header but no data rows")
    for lineno, fields in data:
        if len(fields) != len(names):
            shown = delimiter.join(fields)
            raise CSVError(
                f"{path}:{lineno}: expected {len(names)} fields as in the header {names} "
                f"(delimiter {delimiter!r}), got {len(fields)}: {shown!r}"
            )
    # The date column: the first column, if it holds dates (or years under a date-like name).
    first = [fields[0] for _, fields in data]
    guess = [parse_date(x) for x in first]
    parsed: list[np.datetime64 | None] | None = None
    # Decided by the first row, so that a later malformed date is an error, not a reason to
    # read the column as text.
    if guess[0] is not None:
        parsed = guess
    elif names[0].strip().lower() in _DATE_NAMES and _YEAR.fullmatch(first[0]):
        parsed = [np.datetime64(f"{x}-01-01", "D") if _YEAR.fullmatch(x) else None for x in first]
    if parsed is not None:
        for (lineno, fields), d in zip(data, parsed):
            if d is None:
                raise CSVError(
                    f"{path}:{lineno}: column {names[0]!r} has {fields[0]!r}, which "
                    "is not a date like the rows above it"
                )
    value_cols = list(range(1 if parsed is not None else 0, len(names)))
    # A column is numeric if any of its values is a number; one that holds none is text.
    numeric = [c for c in value_cols if any(_is_number(f[c]) for _, f in data)]
    numeric_names = [names[c] for c in numeric]

    def index_of(name: str, what: str) -> int:
        if name not in names:
            raise CSVError(f"{path}: no column {name!r} ({what}); the columns are {names}")
        c = names.index(name)
        if parsed is not None and c == 0:
            raise CSVError(
                f"{path}: column {name!r} ({what}) holds the dates; the numeric "
                f"columns are {numeric_names}"
            )
        return c

    if column is None:
        if len(numeric) != 1:
            found = (
                f"numeric columns {numeric_names}"
                if numeric
                else f"no numeric column among {names}"
            )
            raise CSVError(
                f"{path}: {found}; choose the one to forecast with --column (or column= in Python)"
            )
        col = numeric[0]
    else:
        col = index_of(column, "the target")
    extra = [index_of(name, "an input") for name in (columns or [])]
    cols = [col] + [c for c in extra if c != col]
    table = np.empty((len(data), len(cols)))
    for j, c in enumerate(cols):
        for i, (lineno, fields) in enumerate(data):
            text = fields[c]
            try:
                value = float(text)
            except ValueError:
                what = "an empty value" if not text else f"{text!r}"
                raise CSVError(
                    f"{path}:{lineno}: column {names[c]!r} has {what}, which is not a number"
                ) from None
            if not math.isfinite(value):
                raise CSVError(
                    f"{path}:{lineno}: column {names[c]!r} has {text!r}, not a finite number"
                )
            table[i, j] = value
    dates = None
    freq = None
    if parsed is not None:
        dates = np.array(parsed, dtype="datetime64[D]")
        freq = infer_frequency(dates)
        lines = [lineno for lineno, _ in data]
        if freq is None and len(dates) > 1:
            raise CSVError(
                f"{path}:{lines[1]}: column {names[0]!r}: cannot tell the frequency "
                "of the dates (expected daily, weekly, monthly, quarterly or yearly "
                f"steps; the median step is {np.median(np.diff(dates))})"
            )
        if freq is not None:
            expected = shift_dates(dates[:-1], freq, 1)
            bad = np.flatnonzero(dates[1:] != expected)
            if bad.size:
                k = int(bad[0]) + 1
                raise CSVError(
                    f"{path}:{lines[k]}: column {names[0]!r} has {first[k]!r} after "
                    f"{first[k - 1]!r} (line {lines[k - 1]}); {FREQUENCIES[freq][0]} data needs "
                    f"{expected[k - 1]} there: the dates must increase one step at a time, "
                    "with no gaps"
                )
    labels = first if (dates is not None or 0 not in cols) else None
    return Series(
        table[:, 0],
        labels,
        names[col],
        path,
        inputs=table,
        columns=[names[c] for c in cols],
        dates=dates,
        frequency=freq,
    )


def load_dataset(name: str) -> Series:
    """Read a bundled data set with its default target (and input columns).

    Raises
    ------
    ValueError
        If ``name`` is not a bundled data set; the message lists them.

    Examples
    --------
    >>> from eigenlstm.data import load_dataset
    >>> s = load_dataset("usmacro")
    >>> s.column, s.columns, s.frequency
    ('realcons', ['realcons', 'realgdp', 'realinv', 'realdpi'], 'Q')
    """
    path = dataset_path(name)  # raises for an unknown name
    spec = DATASETS[name]
    series = read_series(path, spec["target"], columns=spec["columns"])
    series.dataset = name
    return series
