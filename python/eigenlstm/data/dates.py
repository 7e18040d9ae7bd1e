"""Calendar dates of a series: parsing, the frequency of a run of dates, and steps along it.

Everything is ``numpy.datetime64`` arithmetic on ``datetime64[D]`` arrays; monthly, quarterly
and yearly steps move by calendar months. Reading the files that hold the dates is left to
csv_series.py.
"""

from __future__ import annotations

import re

import numpy as np
import numpy.typing as npt

__all__ = ["FREQUENCIES", "parse_date", "infer_frequency", "shift_dates", "next_dates"]

# Frequency code -> (name, default season in steps, step as a datetime64 count and unit).
FREQUENCIES: dict[str, tuple[str, int, tuple[int, str]]] = {
    "D": ("daily", 7, (1, "D")),  # the week is the season of daily human activity
    "W": ("weekly", 52, (7, "D")),  # 52 weeks: the year, to the nearest whole week
    "M": ("monthly", 12, (1, "M")),
    "Q": ("quarterly", 4, (3, "M")),
    "Y": ("yearly", 1, (1, "Y")),  # no season within a year: seasonal naive = naive
}

# The median gap between dates, in days, that each frequency allows.
_GAPS = (("D", 1, 1), ("W", 7, 7), ("M", 28, 31), ("Q", 89, 92), ("Y", 365, 366))

_DATE = re.compile(r"(\d{4})([-/])(\d{1,2})(?:\2(\d{1,2}))?")


def parse_date(text: str) -> np.datetime64 | None:
    """``YYYY-MM-DD``, ``YYYY/MM/DD`` or ``YYYY-MM`` (the first of the month) as datetime64[D].

    Returns None for any other text, and for a day that is not on the calendar.

    Examples
    --------
    >>> from eigenlstm.data import parse_date
    >>> parse_date("1949-01"), parse_date("2020/2/29"), parse_date("2021-02-29")
    (np.datetime64('1949-01-01'), np.datetime64('2020-02-29'), None)
    """
    m = _DATE.fullmatch(text)
    if not m:
        return None
    year, month, day = int(m.group(1)), int(m.group(3)), int(m.group(4) or 1)
    try:
        return np.datetime64(f"{year:04d}-{month:02d}-{day:02d}", "D")
    except ValueError:
        return None


def infer_frequency(dates: npt.NDArray[np.datetime64]) -> str | None:
    """The code in ``FREQUENCIES`` whose step the median gap between ``dates`` matches.

    None for fewer than two dates or a gap of no known frequency. Only the median is read:
    whether every step is one step of that frequency is for the caller to check (compare
    ``dates[1:]`` with ``shift_dates(dates[:-1], freq, 1)``).

    Examples
    --------
    >>> import numpy as np
    >>> from eigenlstm.data import infer_frequency
    >>> infer_frequency(np.array(["2020-01-31", "2020-02-29", "2020-03-31"], "datetime64[D]"))
    'M'
    """
    days = np.asarray(dates, dtype="datetime64[D]")
    if days.shape[0] < 2:
        return None
    gap = float(np.median(np.diff(days).astype(np.int64)))
    for code, lo, hi in _GAPS:
        if lo <= gap <= hi:
            return code
    return None


def shift_dates(
    dates: npt.ArrayLike, freq: str, k: int | npt.ArrayLike
) -> npt.NDArray[np.datetime64]:
    """``dates`` moved by ``k`` steps of frequency ``freq`` (``k`` may be negative or an array).

    Daily and weekly steps add days. Monthly, quarterly and yearly steps move by calendar
    months: a month end stays a month end (Jan 31 -> Feb 28 -> Mar 31), any other day keeps
    its day of the month, clipped to the month's length. ``dates`` and ``k`` broadcast.

    Parameters
    ----------
    dates : array_like of datetime64
        Read as datetime64[D].
    freq : {"D", "W", "M", "Q", "Y"}
    k : int or array_like of int

    Returns
    -------
    ndarray of datetime64[D]

    Raises
    ------
    ValueError
        If ``freq`` is not a key of ``FREQUENCIES``.

    Examples
    --------
    >>> import numpy as np
    >>> from eigenlstm.data import shift_dates
    >>> jan31 = np.array(["2021-01-31"], dtype="datetime64[D]")
    >>> shift_dates(jan31, "M", np.arange(3)).tolist()
    [datetime.date(2021, 1, 31), datetime.date(2021, 2, 28), datetime.date(2021, 3, 31)]
    """
    if freq not in FREQUENCIES:
        raise ValueError(f"shift_dates: freq must be one of {list(FREQUENCIES)}, got {freq!r}")
    days = np.asarray(dates, dtype="datetime64[D]")
    count, unit = FREQUENCIES[freq][2]
    steps = np.asarray(k, dtype=np.int64)
    if unit == "D":
        return days + (steps * count).astype("timedelta64[D]")
    months = steps * count * (12 if unit == "Y" else 1)
    start = days.astype("datetime64[M]")
    offset = days - start.astype("datetime64[D]")
    is_end = days == (start + 1).astype("datetime64[D]") - 1
    new_start = (start + months).astype("datetime64[D]")
    new_end = (start + months + 1).astype("datetime64[D]") - 1
    return np.where(is_end, new_end, np.minimum(new_start + offset, new_end))


def next_dates(dates: npt.ArrayLike, freq: str, steps: int) -> npt.NDArray[np.datetime64]:
    """The ``steps`` dates that follow the last of ``dates`` at frequency ``freq``.

    Examples
    --------
    >>> import numpy as np
    >>> from eigenlstm.data import next_dates
    >>> [str(d) for d in next_dates(np.array(["2020-11-01"], "datetime64[D]"), "M", 3)]
    ['2020-12-01', '2021-01-01', '2021-02-01']
    """
    last = np.asarray(dates, dtype="datetime64[D]")[-1:]
    return shift_dates(last, freq, np.arange(1, steps + 1))
