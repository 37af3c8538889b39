"""Adapts a module of plain functions to the exports componentize-py expects.

`dsb guest build` generates a two-line entry module:

    import app
    WitWorld = datasandbox_guest._entry.world_class("model", app)

Every exception the user's code raises becomes the world's `err` with the
exception's type and text (and the traceback goes to the diagnostic log);
the host files that as `guest-error` and never shows the text to the
submitter.
"""

import json
import traceback

from . import log
from .arrow import read_stream

# Imported at build time: nothing can be imported once the component runs.
try:
    from componentize_py_types import Err
except ImportError:  # outside a component
    Err = None

_FUNCTIONS = {
    "analysis": ("run",),
    "block-analysis": ("analyze",),
    "model": ("train", "predict"),
    "scorer": ("score",),
}


def _params(text):
    return json.loads(text) if text and text.strip() else {}


def _guarded(fn):
    def call(*args):
        try:
            return fn(*args)
        except Err:
            raise
        except BaseException as error:  # noqa: BLE001 - every failure is the guest's
            try:
                log(traceback.format_exc())
            except Exception:  # noqa: BLE001 - logging must not hide the error
                pass
            raise Err("%s: %s" % (type(error).__name__, error)) from None

    return call


def _floats(values):
    return [float(v) for v in values]


def world_class(world, module):
    """A WitWorld class for `world` that calls `module`'s functions."""
    if world not in _FUNCTIONS:
        raise ValueError("unknown world %r" % world)
    missing = [name for name in _FUNCTIONS[world] if not callable(getattr(module, name, None))]
    if missing:
        raise ValueError(
            "the %s world needs a function %s in the module" % (world, " and ".join(missing))
        )

    if world == "analysis":

        class WitWorld:
            @_guarded
            def run(self, params):
                module.run(_params(params))

    elif world == "block-analysis":

        class WitWorld:
            @_guarded
            def analyze(self, block, params):
                return _floats(module.analyze(read_stream(block), _params(params)))

    elif world == "model":

        class WitWorld:
            @_guarded
            def train(self, table, params):
                module.train(read_stream(table), _params(params))

            @_guarded
            def predict(self, features):
                return _floats(module.predict(read_stream(features)))

    else:

        class WitWorld:
            @_guarded
            def score(self, rows, params):
                tables = {dataset: read_stream(raw) for dataset, raw in rows}
                return float(module.score(tables, _params(params)))

    return WitWorld
