"""logistic_model: logistic regression in pure Python (world: model).

Fitted by Newton's method (iteratively reweighted least squares) with a
small ridge penalty: a handful of passes over the data instead of hundreds
of gradient steps, which matters for an interpreter running inside
WebAssembly. Numeric features are log-scaled when non-negative and large,
then standardised; text features are one-hot encoded with the training
rows' categories seen at least 5 times. Predicts a probability per row.

Params (the host passes them in contest mode):
{"label": "...", "features": ["...", ...]}.
"""

import math

from datasandbox_guest import log

ITERATIONS = 8
RIDGE = 1e-2

_model = None


def _encoders(table, features):
    encoders = []
    for name in features:
        values = table[name]
        if table.types[name] in ("utf8", "large_utf8", "utf8_view"):
            counts = {}
            for v in values:
                if v is not None:
                    counts[v] = counts.get(v, 0) + 1
            encoders.append((name, "onehot", sorted(v for v, n in counts.items() if n >= 5)))
        else:
            raw = [float(v) for v in values if v is not None]
            use_log = bool(raw) and min(raw) >= 0 and max(raw) > 100
            xs = [math.log1p(v) if use_log else v for v in raw]
            mean = sum(xs) / max(len(xs), 1)
            std = max(math.sqrt(sum((x - mean) ** 2 for x in xs) / max(len(xs), 1)), 1e-9)
            encoders.append((name, "numeric", (use_log, mean, std)))
    return encoders


def _design(table, encoders):
    rows = [[1.0] for _ in range(len(table))]
    for name, kind, spec in encoders:
        values = table[name]
        if kind == "numeric":
            use_log, mean, std = spec
            for row, v in zip(rows, values):
                x = mean if v is None else (math.log1p(max(float(v), 0.0)) if use_log else float(v))
                row.append((x - mean) / std)
        else:
            for row, v in zip(rows, values):
                row.extend(1.0 if v == category else 0.0 for category in spec)
    return rows


def _sigmoid(z):
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _solve(a, b):
    """Solve a x = b for symmetric positive definite a (Gaussian elimination)."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        p = m[col][col]
        for r in range(col + 1, n):
            f = m[r][col] / p
            if f:
                mr, mc = m[r], m[col]
                for c in range(col, n + 1):
                    mr[c] -= f * mc[c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][c] * x[c] for c in range(r + 1, n))) / m[r][r]
    return x


def train(table, params):
    global _model
    label = params["label"]
    features = params["features"]
    encoders = _encoders(table, features)
    x = _design(table, encoders)
    y = [0.0 if v is None else float(v) for v in table[label]]
    width = len(x[0]) if x else 1
    w = [0.0] * width
    for _ in range(ITERATIONS):
        # Newton step: (X' S X + ridge) d = X'(y - p) - ridge w
        hessian = [[0.0] * width for _ in range(width)]
        gradient = [0.0] * width
        for row, target in zip(x, y):
            p = _sigmoid(sum(a * b for a, b in zip(row, w)))
            s = p * (1.0 - p)
            err = target - p
            for i, ri in enumerate(row):
                if ri:
                    gradient[i] += err * ri
                    si = s * ri
                    hi = hessian[i]
                    for j in range(i + 1):
                        hi[j] += si * row[j]
        for i in range(width):
            for j in range(i + 1):
                hessian[j][i] = hessian[i][j]
            penalty = RIDGE * len(x) if i else 0.0
            hessian[i][i] += penalty + 1e-9
            gradient[i] -= penalty * w[i]
        step = _solve(hessian, gradient)
        w = [a + b for a, b in zip(w, step)]
    _model = (encoders, w)
    log("trained on %d rows, %d inputs" % (len(x), width))


def predict(features):
    if _model is None:
        raise RuntimeError("predict before train")
    encoders, w = _model
    return [_sigmoid(sum(a * b for a, b in zip(row, w))) for row in _design(features, encoders)]
