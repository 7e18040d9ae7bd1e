"""Tests of eigenlstm.data: the calendar arithmetic, the bundled data sets, and the scaling
and windows the model reads.

Training on the series is tested in test_forecast.py.
"""

import numpy as np
import pytest

from eigenlstm import data


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
        "2020-02-29", "2020-02-29", "2020-03-31"]
    assert [str(d) for d in data.shift_dates(days, "Q", -1)] == [
        "2019-10-31", "2019-10-30", "2019-11-30"]
    assert [str(d) for d in data.shift_dates(days[2:], "Y", [1, 4])] == [
        "2021-02-28", "2024-02-29"]
    assert str(data.shift_dates(days[:1], "W", -1)[0]) == "2020-01-24"


def test_shift_dates_refuses_an_unknown_frequency():
    with pytest.raises(ValueError, match=r"shift_dates: freq must be one of \['D', 'W', 'M', "
                                         r"'Q', 'Y'\], got 'H'"):
        data.shift_dates(np.array(["2020-01-01"], dtype="datetime64[D]"), "H", 1)


@pytest.mark.parametrize("step, freq", [(1, "D"), (7, "W"), (31, "M"), (92, "Q"), (366, "Y"),
                                        (10, None)])
def test_infer_frequency_reads_the_median_step(step, freq):
    dates = np.datetime64("2020-01-01") + step * np.arange(5)
    assert data.infer_frequency(dates) == freq
    assert data.infer_frequency(dates[:1]) is None


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
    with pytest.raises(ValueError, match=r"dataset must be one of \['airline', 'births', "
                                         r"'gasoline', 'usmacro'\], got 'nope'"):
        data.load_dataset("nope")


# ---- arrays and pandas-like objects -------------------------------------------------------
def test_as_series_refuses_other_types_and_shapes_naming_the_source():
    with pytest.raises(TypeError, match=r"^history: expected an array, a pandas Series or "
                                        r"DataFrame, or an eigenlstm\.data\.Series, got dict$"):
        data.as_series({"y": [1.0]}, source="history")
    with pytest.raises(ValueError, match=r"^history: expected a 1-D array of values, got shape "
                                         r"\(2, 2\)$"):
        data.as_series(np.ones((2, 2)), source="history")
    with pytest.raises(ValueError, match=r"column 'y' has nan at position 1; every value must be"):
        data.as_series([1.0, np.nan], "y", source="history")


# ---- scaling and windows ------------------------------------------------------------------
def test_scaling_round_trips_through_its_dict_and_undoes_its_levels():
    rng = np.random.default_rng(0)
    v = np.column_stack([100.0 + rng.random(30), rng.standard_normal(30)])
    sc = data.Scaling.fit(v)
    assert sc.log.tolist() == [True, False]     # no log for a column with values <= 0
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
