"""The series bundled with the package: what each one is and where its CSV file is.

The files sit next to this module; their sources and licences are in the header of each file
and in README.md. Reading them is csv_series.py's ``load_dataset``.
"""

from __future__ import annotations

from importlib import resources
from typing import TypedDict

__all__ = ["DATASETS", "DatasetSpec", "dataset_path", "default_data_path"]


class DatasetSpec(TypedDict):
    """One bundled series: its file, target column, input columns and a line about it."""

    file: str
    target: str
    columns: list[str] | None
    about: str


# name -> file, target column, more input columns (None: the target alone), description.
DATASETS: dict[str, DatasetSpec] = {
    "airline": {
        "file": "airline_passengers.csv",
        "target": "Passengers",
        "columns": None,
        "about": "monthly international airline passengers 1949-1960 (Box & Jenkins series G)",
    },
    "gasoline": {
        "file": "us_gasoline_weekly.csv",
        "target": "barrels_per_day",
        "columns": None,
        "about": "weekly US finished motor gasoline product supplied (sales), "
        "million barrels a day, 2011-2017 (US EIA)",
    },
    "births": {
        "file": "us_births_daily.csv",
        "target": "births",
        "columns": None,
        "about": "daily births in the United States, 2015 (US NCHS)",
    },
    "usmacro": {
        "file": "us_macro_quarterly.csv",
        "target": "realcons",
        "columns": ["realgdp", "realinv", "realdpi"],
        "about": "US real consumption with GDP, investment and disposable income, "
        "quarterly 1959-2009 (FRED): several inputs, one target",
    },
}


def dataset_path(name: str) -> str:
    """Path of a bundled data set's CSV file (see ``DATASETS``).

    Raises
    ------
    ValueError
        If ``name`` is not a bundled data set; the message lists them.

    Examples
    --------
    >>> from eigenlstm.data import dataset_path
    >>> dataset_path("births").endswith("us_births_daily.csv")
    True
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    return str(resources.files("eigenlstm.data").joinpath(DATASETS[name]["file"]))


def default_data_path() -> str:
    """Path of the bundled airline-passengers CSV (Box & Jenkins series G, 1949-1960)."""
    return dataset_path("airline")
