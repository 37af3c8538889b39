"""datasandbox guest SDK for Python.

Write a module with plain functions for the world you target, then build it
into a WebAssembly component with `dsb guest build --python app.py --world W`:

    analysis        def run(params): ...              # query, emit_table, emit_value
    block-analysis  def analyze(block, params): ...   # -> list of floats
    model           def train(table, params): ...
                    def predict(features): ...        # -> one float per row
    scorer          def score(rows, params): ...      # rows: {dataset id: Table} -> float

`params` is the submitter's JSON, already parsed (`{}` when none was given);
tables are `Table` objects (plain Python lists per column, None for null).
Raising any exception ends the job as `guest-error`; its text and traceback
go to the diagnostic log, which only the data holder reads.

The component sees no files, no network, no environment, a frozen clock
and host-seeded random numbers; only the functions below reach the host.
"""

from .arrow import ArrowError, Table, read_stream, write_stream

__all__ = [
    "ArrowError",
    "EmitError",
    "QueryError",
    "Table",
    "emit_table",
    "emit_value",
    "log",
    "query",
    "read_stream",
    "tables",
    "write_stream",
]


class QueryError(Exception):
    """The host refused or could not run a query.

    `kind` is `rejected` (not allowed by the policy or the job), `invalid`
    (could not be parsed or planned) or `failed` (execution failed; no
    detail, since it could depend on a row's value). `reason` is the host's
    text.
    """

    def __init__(self, kind, reason=""):
        super().__init__("%s: %s" % (kind, reason) if reason else kind)
        self.kind = kind
        self.reason = reason


class EmitError(Exception):
    """The host refused an emit (`invalid-name`, `duplicate-name`,
    `invalid-table`, `not-finite`); the job goes on."""

    def __init__(self, kind):
        super().__init__(kind)
        self.kind = kind


# componentize-py snapshots the interpreter after importing the app, and
# nothing can be imported after that (there is no filesystem): every import
# the SDK needs happens here, at build time. Outside a component (tests on
# a host Python) the host interfaces are simply absent.
try:
    from componentize_py_types import Err as _Err
except ImportError:  # not inside a component
    _Err = None
try:
    from wit_world.imports import diagnostics as _diagnostics
except ImportError:
    _diagnostics = None
try:
    from wit_world.imports import data as _data, output as _output
except ImportError:  # a world without data access
    _data = _output = None


def _imports():
    if _data is None or _output is None:
        raise RuntimeError(
            "query and emit exist only in the analysis world; build with --world analysis"
        )
    return _data, _output


def tables():
    """The tables this job may query: [(name, classification, [(column, type, role), ...])]."""
    data, _ = _imports()
    return [
        (
            t.name,
            t.classification.name.lower(),
            [(c.name, c.data_type, c.role.name.lower().replace("_", "-")) for c in t.columns],
        )
        for t in data.tables()
    ]


def query(sql):
    """Run one SQL SELECT through the host; returns a Table."""
    data, _ = _imports()
    try:
        raw = data.query(sql)
    except _Err as error:
        value = error.value
        kind = type(value).__name__.rsplit("_", 1)[-1].lower()
        raise QueryError(kind, getattr(value, "value", "") or "") from None
    return read_stream(raw)


def _emit(call, *args):
    try:
        call(*args)
    except _Err as error:
        raise EmitError(error.value.name.lower().replace("_", "-")) from None


def emit_table(name, table):
    """Emit a named table (a Table or a dict of column lists) for release."""
    _, output = _imports()
    _emit(output.emit_table, name, write_stream(table))


def emit_value(name, value):
    """Emit a named number for release."""
    _, output = _imports()
    _emit(output.emit_value, name, float(value))


def log(message):
    """One line in the diagnostic log (read by the data holder, and by you
    under `dsb dev run` on your own data)."""
    if _diagnostics is None:
        raise RuntimeError("log needs the host: run inside a component")
    _diagnostics.log(str(message))
