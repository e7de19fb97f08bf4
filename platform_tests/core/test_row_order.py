"""Training rows read in a total order: tied rows come back the same way whatever order they were stored in."""

from __future__ import annotations

import duckdb
import pandas as pd

from mlplatform.core.sql import total_order_sql
from mlplatform.core.warehouse import read_frame


def test_order_puts_the_leading_columns_first_then_every_other_once() -> None:
    columns = ["amount", "ts", "customer id", "split"]
    assert total_order_sql(["ts", "customer id"], columns) == '"ts", "customer id", "amount", "split"'


def test_tied_rows_read_the_same_whatever_order_they_were_written_in() -> None:
    # Three rows tie on (ts, customer): ordering on those two alone leaves their order to DuckDB.
    rows = pd.DataFrame(
        {
            "ts": pd.to_datetime(["2024-01-01 10:00"] * 3 + ["2024-01-01 09:00"]),
            "customer": [7, 7, 7, 7],
            "amount": [3.0, 1.0, 2.0, 5.0],
            "merchant": ["b", "a", "c", "a"],
        }
    )
    reads = []
    for permutation in ([0, 1, 2, 3], [2, 1, 0, 3], [3, 1, 2, 0]):
        conn = duckdb.connect()
        stored = rows.iloc[permutation].reset_index(drop=True)  # noqa: F841 (read by DuckDB by name)
        conn.execute("CREATE TABLE training_set AS SELECT * FROM stored")
        order = total_order_sql(["ts", "customer"], list(rows.columns))
        reads.append(read_frame(conn, f"SELECT * FROM training_set ORDER BY {order}"))
        conn.close()
    for frame in reads[1:]:
        pd.testing.assert_frame_equal(frame, reads[0])
    assert reads[0]["amount"].tolist() == [5.0, 1.0, 2.0, 3.0]
