"""district_stats: enterprises and mean head count per district.

The Python twin of the Rust `district-stats` example (world: analysis).
Params (JSON, all optional): {"table": "enterprises"}.
"""

from datasandbox_guest import emit_table, emit_value, log, query, tables


def run(params):
    table = params.get("table", "enterprises")
    if table not in [name for name, _, _ in tables()]:
        raise ValueError("table %s is not part of this job" % table)
    log("district_stats over %s" % table)
    result = query(
        "SELECT district, COUNT(*) AS enterprises, AVG(employees) AS mean_employees "
        "FROM %s GROUP BY district ORDER BY district" % table
    )
    emit_table("by_district", result)
    emit_value("districts", len(result))
