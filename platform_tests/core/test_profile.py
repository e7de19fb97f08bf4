"""Reference profiles: what build_profile keeps, and that the long table round-trips exactly."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from mlplatform.core.profile import (
    OTHER_KEY,
    CategoricalProfile,
    NumericProfile,
    Profile,
    build_profile,
)


@pytest.fixture
def reference() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 1_000
    temperature = rng.normal(15.0, 8.0, n)
    temperature[rng.choice(n, 50, replace=False)] = np.nan
    return pd.DataFrame(
        {
            "temperature": temperature,
            "count": rng.poisson(4, n),
            "weather": rng.choice(["clear", "mist", "rain", "snow"], n, p=[0.6, 0.25, 0.1, 0.05]),
            "season": rng.choice([1, 2, 3, 4], n).astype(float),
        }
    )


def test_numeric_entry_keeps_deciles_moments_and_101_quantiles() -> None:
    df = pd.DataFrame({"x": np.arange(100, dtype=float)})
    entry = build_profile(df, ["x"], []).numeric["x"]
    assert entry.n_rows == 100 and entry.count == 100 and entry.null_share == 0.0
    assert entry.bin_edges[0] == -np.inf and entry.bin_edges[-1] == np.inf
    assert entry.bin_edges[1:-1] == tuple(float(v) for v in range(10, 100, 10))
    np.testing.assert_allclose(entry.bin_proportions, [0.1] * 10)
    assert len(entry.quantiles) == 101 and entry.quantiles[0] == 0.0 and entry.quantiles[-1] == 99.0
    assert entry.quantiles[50] == pytest.approx(49.5)
    assert entry.mean == pytest.approx(49.5)
    assert entry.std == pytest.approx(np.std(np.arange(100), ddof=1))


def test_numeric_entry_deduplicates_edges_of_discrete_values() -> None:
    df = pd.DataFrame({"flag": [0.0] * 70 + [1.0] * 30})
    entry = build_profile(df, ["flag"], []).numeric["flag"]
    # Nine deciles collapse to {0, 1}; bins are [edge, next edge), so 0s land in the middle bin.
    assert entry.bin_edges == (-np.inf, 0.0, 1.0, np.inf)
    np.testing.assert_allclose(entry.bin_proportions, [0.0, 0.7, 0.3])


def test_nulls_and_infinities_count_as_nulls_without_touching_the_input() -> None:
    df = pd.DataFrame({"x": [1.0, np.nan, np.inf, 4.0]})
    entry = build_profile(df, ["x"], []).numeric["x"]
    assert entry.count == 2 and entry.null_share == 0.5 and entry.mean == 2.5
    np.testing.assert_allclose(entry.distribution().sum(), 1.0)
    assert entry.distribution()[-1] == 0.5
    assert df["x"].iloc[2] == np.inf


def test_categorical_entry_keeps_top_n_and_pools_the_rest() -> None:
    labels = ["d"] * 1 + ["c"] * 3 + ["a"] * 5 + ["b"] * 3 + [None] * 2
    entry = build_profile(pd.DataFrame({"g": labels}), [], ["g"], max_categories=2).categorical["g"]
    # b and c tie on 3: the label breaks the tie, so c (and d) go to __other__.
    assert entry.frequencies == {"a": 5 / 12, "b": 3 / 12, OTHER_KEY: 4 / 12}
    assert entry.count == 12 and entry.null_share == pytest.approx(2 / 14)
    shares = entry.distribution()
    assert shares["__null__"] == pytest.approx(2 / 14) and sum(shares.values()) == pytest.approx(1.0)


def test_whole_number_floats_get_the_same_labels_as_ints() -> None:
    as_int = build_profile(pd.DataFrame({"s": [1, 2, 2]}), [], ["s"]).categorical["s"]
    as_float = build_profile(pd.DataFrame({"s": [1.0, 2.0, 2.0, None]}), [], ["s"]).categorical["s"]
    assert list(as_int.frequencies) == list(as_float.frequencies) == ["2", "1"]


def test_round_trip_through_the_long_table_is_exact(reference: pd.DataFrame) -> None:
    profile = build_profile(reference, ["temperature", "count"], ["weather", "season"])
    frame = profile.to_frame()
    assert list(frame.columns) == ["feature", "kind", "key", "value"]
    assert frame["value"].dtype == np.float64
    assert Profile.from_frame(frame) == profile
    # Storage does not promise row order.
    shuffled = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert Profile.from_frame(shuffled) == profile


def test_round_trip_through_duckdb(reference: pd.DataFrame) -> None:
    profile = build_profile(reference, ["temperature", "count"], ["weather", "season"])
    frame = profile.to_frame()
    with duckdb.connect() as connection:
        connection.register("profile_frame", frame)
        connection.execute("CREATE TABLE reference_profile AS SELECT * FROM profile_frame")
        stored = connection.execute("SELECT * FROM reference_profile ORDER BY key DESC").df()
    restored = Profile.from_frame(stored)
    assert restored == profile
    assert restored.numeric["temperature"].bin_edges[0] == -np.inf


def test_round_trip_of_an_all_null_column_keeps_nan_moments() -> None:
    profile = build_profile(pd.DataFrame({"x": [np.nan, np.nan]}), ["x"], [])
    entry = profile.numeric["x"]
    assert entry.count == 0 and entry.null_share == 1.0 and entry.quantiles == ()
    pd.testing.assert_frame_equal(Profile.from_frame(profile.to_frame()).to_frame(), profile.to_frame())


def test_from_frame_rejects_a_broken_table(reference: pd.DataFrame) -> None:
    frame = build_profile(reference, ["count"], []).to_frame()
    with pytest.raises(ValueError, match="contiguous"):
        Profile.from_frame(frame[frame["key"] != "quantile:050"])
    with pytest.raises(ValueError, match="kind"):
        Profile.from_frame(frame.assign(kind="text"))


def test_build_profile_rejects_bad_column_lists(reference: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="both"):
        build_profile(reference, ["count"], ["count"])
    with pytest.raises(KeyError, match="missing_column"):
        build_profile(reference, ["missing_column"], [])


def test_profile_kinds_are_split(reference: pd.DataFrame) -> None:
    profile = build_profile(reference, ["temperature"], ["weather"])
    assert isinstance(profile.features["temperature"], NumericProfile)
    assert isinstance(profile.features["weather"], CategoricalProfile)
    assert list(profile.numeric) == ["temperature"] and list(profile.categorical) == ["weather"]
