"""block_mean: the mean and row count of one numeric column of a block.

The Python twin of the Rust `block-mean` example (world: block-analysis,
release mode sample-aggregate). Params: {"column": "employees"}. Returns
[mean, rows] over the non-null values.
"""


def analyze(block, params):
    values = [float(v) for v in block[params["column"]] if v is not None]
    mean = sum(values) / len(values) if values else 0.0
    return [mean, len(values)]
