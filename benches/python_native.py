"""Native CPython baseline for `cargo bench --bench python`: the same model
file and the same SDK Arrow reader as the Python guest, run by the host's
python3. Prints the train+predict seconds (median of the runs) and the
predictions as JSON."""

import json
import os
import sys
import time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [
    os.path.join(root, "sandbox-guests", "python"),
    os.path.join(root, "sandbox-guests", "python", "examples"),
]

import datasandbox_guest  # noqa: E402
import logistic_model  # noqa: E402

datasandbox_guest.log = lambda message: None  # no host to log to
logistic_model.log = datasandbox_guest.log

train_path, features_path, params, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with open(train_path, "rb") as f:
    train_bytes = f.read()
with open(features_path, "rb") as f:
    features_bytes = f.read()
times = []
for _ in range(runs):
    started = time.perf_counter()
    logistic_model.train(datasandbox_guest.read_stream(train_bytes), json.loads(params))
    predictions = logistic_model.predict(datasandbox_guest.read_stream(features_bytes))
    times.append(time.perf_counter() - started)
times.sort()
print(json.dumps({"seconds": times[len(times) // 2], "predictions": predictions}))
