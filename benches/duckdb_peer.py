"""DuckDB's side of `cargo bench --bench aggregate`: runs the bench's query
(with `{file}` replaced by each Parquet file) in a fresh connection per
run, one warm-up then `runs` timed runs, and prints the median time in
milliseconds per file, one line each. Run through
scripts/bench-aggregate-vs-duckdb."""

import statistics
import sys
import time

import duckdb

sql, runs, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for path in files:
    query = sql.replace("{file}", path.replace("'", "''"))
    times = []
    for attempt in range(runs + 1):
        started = time.perf_counter()
        connection = duckdb.connect()
        rows = connection.execute(query).fetchall()
        connection.close()
        if attempt > 0:
            times.append((time.perf_counter() - started) * 1e3)
    assert len(rows) == 96, (path, len(rows))
    print(f"{statistics.median(times):.3f}")
