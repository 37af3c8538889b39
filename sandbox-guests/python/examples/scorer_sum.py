"""scorer_sum: sums one numeric column over a subject's rows in every
dataset that has it (world: scorer). The host clamps and buckets.

The Python twin of the Rust `scorer-simple` example.
Params: {"column": "tax_paid"}.
"""


def score(rows, params):
    column = params["column"]
    return sum(
        float(v)
        for table in rows.values()
        if column in table.columns
        for v in table[column]
        if v is not None
    )
