"""SmartNoise SQL on the file `cargo bench --bench dp` wrote, at the same ε,
with the same public keys (no key censoring) and the same bounds; prints its
time and mean absolute errors next to dsb's (read from dsb.json) and the
time ratio. Run through scripts/bench-dp-vs-smartnoise."""

import json
import sys
import time
from pathlib import Path

import pandas as pd
import snsql

directory = Path(sys.argv[1])
summary = json.loads((directory / "dsb.json").read_text())
data = pd.read_csv(directory / "bench.csv")
metadata = {
    "Database": {
        "bench": {
            "table": {
                "max_ids": 1,
                "row_privacy": False,
                "censor_dims": False,
                "person_id": {"name": "person_id", "type": "string", "private_id": True},
                "region": {"type": "string"},
                "sector": {"type": "string"},
                "amount": {"type": "float", "lower": 0, "upper": 1000},
            }
        }
    }
}
sql = (
    "SELECT region, sector, COUNT(*) AS n, SUM(amount) AS total "
    "FROM bench.table GROUP BY region, sector"
)
exact = data.groupby(["region", "sector"]).agg(n=("amount", "size"), total=("amount", "sum"))
privacy = snsql.Privacy(epsilon=1.0, delta=1e-7)
reader = snsql.from_df(data, privacy=privacy, metadata=metadata)
spent_epsilon, spent_delta = reader.get_privacy_cost([sql])
times, count_errors, sum_errors = [], [], []
for _ in range(5):
    started = time.perf_counter()
    rows = reader.execute(sql)
    times.append(time.perf_counter() - started)
    for region, sector, n, total in rows[1:]:
        true_n, true_total = exact.loc[(region, sector)] if (region, sector) in exact.index else (0, 0)
        count_errors.append(abs(n - true_n))
        sum_errors.append(abs(total - true_total))
times.sort()
smartnoise = times[len(times) // 2]
mae = lambda errors: sum(errors) / len(errors)
print(
    f"smartnoise-sql (epsilon=1.0, its own accounting: the query costs eps={spent_epsilon:g}): "
    f"median {smartnoise:.3f} s (data already in memory); MAE count "
    f"{mae(count_errors):.2f}, MAE sum {mae(sum_errors):.1f}"
)
for label in ["eps1", "eps2"]:
    run = summary[label]
    print(
        f"dsb (query eps={run['epsilon']:g}): median {run['seconds']:.3f} s (incl. reading "
        f"the CSV); MAE count {run['mae_count']:.2f}, MAE sum {run['mae_sum']:.1f}; "
        f"{smartnoise / run['seconds']:.1f}x faster than smartnoise-sql (goal >= 20x)"
    )
