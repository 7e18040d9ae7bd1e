"""Reading a ``Series`` from a CSV file, and the bundled data sets through it.

One ``csv.reader`` reads the whole file (dialect sniffed among ``, ; tab |``), so quoted
fields may hold delimiters and line breaks and every row keeps the number of the line it
starts on. Every problem is a ``CSVError`` naming the file, the line and the column. What a
``Series`` is, is series.py's; the calendar is dates.py's.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterator, Sequence
from typing import IO, NamedTuple

import numpy as np

from .datasets import DATASETS, dataset_path
from .dates import FREQUENCIES, infer_frequency, parse_date, shift_dates
from .series import Series

__all__ = ["CSVError", "read_series", "load_dataset"]

# A first column of bare years is read as dates only under one of these headers.
_DATE_NAMES = {"date", "day", "week", "month", "quarter", "year", "time", "period", "ds"}
_YEAR = re.compile(r"\d{4}")
_SNIFF_ROWS = 50  # lines the delimiter is guessed from


class CSVError(ValueError):
    """A CSV file that cannot be read or parsed; the message names the file, line and column."""


class _Row(NamedTuple):
    line: int  # the line the row starts on (1-based, counting comments and blank lines)
    last: int  # the line it ends on: later than ``line`` when a quoted field holds line breaks
    fields: list[str]  # stripped of surrounding white space


def _is_skipped(line: str) -> bool:
    """A blank line, or a comment (``#`` first, after any white space)."""
    text = line.strip()
    return not text or text.startswith("#")


class _Lines:
    """The file's lines for ``csv.reader``, one string per line so that ``line_num`` counts
    lines of the file. A comment or blank line between rows reaches the reader as an empty line
    (which it returns as ``[]``); inside a quoted field it is data, and passes unchanged."""

    def __init__(self, f: IO[str]) -> None:
        self.f = f
        self.count = 0  # lines read so far
        self.between_rows = True  # set by the caller each time the reader returns a row
        self.at_end = False  # the reader asked for a line past the last one

    def __iter__(self) -> Iterator[str]:
        for line in self.f:
            self.count += 1
            if self.between_rows and _is_skipped(line):
                yield "\n"
            else:
                self.between_rows = False
                yield line
        self.at_end = True


def _sniff(f: IO[str]) -> str:
    """The delimiter among ``, ; tab |`` that the first data lines agree on (``,`` if none)."""
    sample = []
    for line in f:
        if not _is_skipped(line):
            sample.append(line)
            if len(sample) == _SNIFF_ROWS:
                break
    try:
        return csv.Sniffer().sniff("".join(sample), delimiters=",;\t|").delimiter
    except csv.Error:
        return ","  # one column, or nothing to tell the delimiter by


def _not_utf8(path: str) -> str:
    """The message for a file that does not decode: the line and the first bad byte."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        utf16 = raw.startswith((b"\xff\xfe", b"\xfe\xff"))
        hint = "; it starts with a UTF-16 byte-order mark: save it as UTF-8" if utf16 else ""
        return (
            f"{path}:{line}: not a UTF-8 text file ({exc.reason}: byte {raw[exc.start]:#04x} "
            f"at offset {exc.start}{hint})"
        )
    return f"{path}: not a UTF-8 text file"


def _read_rows(path: str, delimiter: str | None) -> tuple[str, list[_Row], int]:
    """(delimiter, the non-blank non-comment rows, the number of lines in the file)."""
    rows: list[_Row] = []
    try:
        # utf-8-sig: a byte-order mark (spreadsheets write one) is not part of the header.
        with open(path, newline="", encoding="utf-8-sig") as f:
            if delimiter is None:
                delimiter = _sniff(f)
                f.seek(0)
            lines = _Lines(f)
            reader = csv.reader(lines, delimiter=delimiter, strict=True)
            while True:
                start = reader.line_num + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    if lines.at_end:  # only inside a quoted field does a row outlast the file
                        raise CSVError(
                            f"{path}:{start}: a quoted field that opens on this line is never "
                            f"closed (the file ends inside it, at line {lines.count})"
                        ) from None
                    within = ""
                    if reader.line_num > start:
                        within = f" (in the row that starts on line {start})"
                    raise CSVError(
                        f"{path}:{reader.line_num}: cannot parse as CSV{within}: {exc}"
                    ) from None
                lines.between_rows = True
                if any(x.strip() for x in fields):
                    rows.append(_Row(start, reader.line_num, [x.strip() for x in fields]))
    except OSError as exc:
        raise CSVError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CSVError(_not_utf8(path)) from None
    return delimiter, rows, lines.count


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _spans(row: _Row) -> str:
    """A note for a message about a row that runs over several lines."""
    if row.last == row.line:
        return ""
    return f" (the row runs over lines {row.line}-{row.last}: a quoted field holds line breaks)"


def read_series(
    path: str | os.PathLike[str],
    column: str | None = None,
    *,
    columns: Sequence[str] | None = None,
    delimiter: str | None = None,
) -> Series:
    """Read a numeric target column (and input columns) from a CSV file with a header row.

    Lines starting with ``#`` and blank lines are skipped. The delimiter is detected with
    ``csv.Sniffer`` among ``, ; tab |`` unless given; fields may be quoted, and a quoted field
    may hold delimiters and line breaks. If the first row is all numbers, the file has no
    header and columns are named ``col1``, ``col2``, ... A first column of dates
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
        If the file cannot be opened or decoded, has no rows, is not valid CSV (a quote that
        never closes), a row has too few or too many fields, a column is missing, repeated or
        ambiguous, a value is empty or not a finite number, or a date is malformed, out of
        order or leaves a gap. The message names the file and the line (a row's first line)
        and, for a bad value or date, its column; a missing column is reported at the header
        line with the columns there are.

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
    delimiter, rows, n_lines = _read_rows(path, delimiter)
    if not rows:
        what = "the file is empty" if n_lines == 0 else f"its {n_lines} lines are comments or blank"
        raise CSVError(f"{path}: no data rows: {what}")
    head = rows[0]
    has_header = not all(_is_number(x) for x in head.fields)
    if has_header:
        names, data = head.fields, rows[1:]
        layout = f"the header {names}"
    else:
        names, data = [f"col{i + 1}" for i in range(len(head.fields))], rows
        layout = f"the first row (no header; columns {names})"
    if not data:
        raise CSVError(f"{path}:{head.line}: a header but no data rows")
    for row in data:
        got = len(row.fields)
        if got != len(names):
            if got < len(names):
                detail = f"the row ends before column {names[got]!r}"
            else:
                detail = (
                    f"field {len(names) + 1}, {row.fields[len(names)]!r}, is past the last "
                    f"column {names[-1]!r}"
                )
            raise CSVError(
                f"{path}:{row.line}: expected {len(names)} fields as in {layout} "
                f"(delimiter {delimiter!r}), got {got}: {delimiter.join(row.fields)!r}; "
                f"{detail}{_spans(row)}"
            )
    # The date column: the first column, if it holds dates (or years under a date-like name).
    # Decided by the first row, so that a later malformed date is an error, not a reason to
    # read the column as text.
    first = [row.fields[0] for row in data]
    parsed: list[np.datetime64 | None] | None = None
    if parse_date(first[0]) is not None:
        parsed = [parse_date(x) for x in first]
    elif names[0].lower() in _DATE_NAMES and _YEAR.fullmatch(first[0]):
        parsed = [np.datetime64(f"{x}-01-01", "D") if _YEAR.fullmatch(x) else None for x in first]
    if parsed is not None:
        for row, d in zip(data, parsed):
            if d is None:
                raise CSVError(
                    f"{path}:{row.line}: column {names[0]!r} has {row.fields[0]!r}, which is "
                    f"not a date like the rows above it{_spans(row)}"
                )
    value_cols = list(range(1 if parsed is not None else 0, len(names)))
    # A column is numeric if any of its values is a number; one that holds none is text.
    numeric = [c for c in value_cols if any(_is_number(row.fields[c]) for row in data)]
    numeric_names = [names[c] for c in numeric]

    def index_of(name: str, what: str) -> int:
        if name not in names:
            raise CSVError(
                f"{path}:{head.line}: no column {name!r} ({what}); the columns are {names}"
            )
        found = [c for c, x in enumerate(names) if x == name]
        if len(found) > 1:
            fields = ", ".join(str(c + 1) for c in found)
            raise CSVError(
                f"{path}:{head.line}: column {name!r} ({what}) is in the header {len(found)} "
                f"times (fields {fields}); rename all but one"
            )
        if parsed is not None and found[0] == 0:
            raise CSVError(
                f"{path}:{head.line}: column {name!r} ({what}) holds the dates; the numeric "
                f"columns are {numeric_names}"
            )
        return found[0]

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
    cols = [col] + [c for c in dict.fromkeys(extra) if c != col]
    table = np.empty((len(data), len(cols)))
    for j, c in enumerate(cols):
        for i, row in enumerate(data):
            text = row.fields[c]
            try:
                value = float(text)
            except ValueError:
                what = "an empty value" if not text else f"{text!r}"
                raise CSVError(
                    f"{path}:{row.line}: column {names[c]!r} has {what}, which is not a "
                    f"number{_spans(row)}"
                ) from None
            if not math.isfinite(value):
                raise CSVError(
                    f"{path}:{row.line}: column {names[c]!r} has {text!r}, not a finite number"
                )
            table[i, j] = value
    dates = None
    freq = None
    if parsed is not None:
        dates = np.array(parsed, dtype="datetime64[D]")
        freq = infer_frequency(dates)
        lines = [row.line for row in data]
        if freq is None and len(dates) > 1:
            raise CSVError(
                f"{path}:{lines[1]}: column {names[0]!r}: cannot tell the frequency of the "
                "dates (expected daily, weekly, monthly, quarterly or yearly steps; the median "
                f"step is {np.median(np.diff(dates))})"
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
    labels = first if (parsed is not None or 0 not in cols) else None
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
