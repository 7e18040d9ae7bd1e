"""``eigenlstm.data``: series for forecasting, with NumPy and the standard library alone.

``Series`` and ``as_series`` (series.py: a target column, input columns and dates, from arrays
or pandas objects); ``read_series`` and ``CSVError`` (csv_series.py: CSV files, every problem
named by file, line and column); the bundled data sets (datasets.py: ``DATASETS``,
``dataset_path``, ``load_dataset``); the calendar (dates.py: ``FREQUENCIES``, ``shift_dates``,
``next_dates``); model inputs (windows.py: ``Scaling``, ``make_windows``). The forecasting job
that uses them is ``eigenlstm.forecast``.
"""

from .csv_series import CSVError, load_dataset, read_series
from .datasets import DATASETS, DatasetSpec, dataset_path, default_data_path
from .dates import FREQUENCIES, infer_frequency, next_dates, parse_date, shift_dates
from .series import Series, as_series
from .windows import Scaling, make_windows

__all__ = [
    "Series",
    "as_series",
    "CSVError",
    "read_series",
    "DATASETS",
    "DatasetSpec",
    "dataset_path",
    "default_data_path",
    "load_dataset",
    "FREQUENCIES",
    "parse_date",
    "infer_frequency",
    "shift_dates",
    "next_dates",
    "Scaling",
    "make_windows",
]
