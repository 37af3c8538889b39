"""Arrow IPC stream format in pure Python: how tables cross the boundary.

The host hands tables to the guest, and takes emitted tables back, as Arrow
IPC *stream* bytes. pyarrow is a native extension and cannot run inside a
WebAssembly component, so this module reads and writes the format itself,
for the column types datasandbox's datasets and queries produce:

    read:  Int8..Int64, UInt8..UInt64, Float32, Float64, Bool, Utf8,
           LargeUtf8, Utf8View, Binary, LargeBinary, Date32, Date64,
           Timestamp (as integers in its unit), Decimal128 (as float), Null
    write: int64, float64, bool, utf8, date32

Anything else raises ArrowError naming the type. Columns are plain Python
lists; a null is None.
"""

import datetime
import struct

__all__ = ["ArrowError", "Table", "read_stream", "write_stream"]

_EPOCH = datetime.date(1970, 1, 1)
_CONTINUATION = 0xFFFFFFFF


class ArrowError(ValueError):
    """The bytes are not an Arrow IPC stream this reader understands."""


class Table:
    """Named columns of equal length, in order; a null is None.

    `types` gives each column's Arrow type name (`int64`, `float64`, `bool`,
    `utf8`, `date32`, ...); `metadata` is the schema's key/value metadata (the
    host puts differential-privacy scales there, for example).
    """

    def __init__(self, columns, types=None, metadata=None):
        self.columns = {name: list(values) for name, values in dict(columns).items()}
        lengths = {len(values) for values in self.columns.values()}
        if len(lengths) > 1:
            raise ArrowError("columns differ in length: %s" % sorted(lengths))
        self.num_rows = lengths.pop() if lengths else 0
        given = dict(types or {})
        self.types = {
            name: given.get(name) or _infer_type(name, values)
            for name, values in self.columns.items()
        }
        self.metadata = dict(metadata or {})

    @property
    def names(self):
        return list(self.columns)

    def column(self, name):
        try:
            return self.columns[name]
        except KeyError:
            raise KeyError("no column %r; the columns are %s" % (name, self.names)) from None

    def __getitem__(self, name):
        return self.column(name)

    def __len__(self):
        return self.num_rows

    def rows(self):
        """The rows as dicts, in order."""
        names = self.names
        for i in range(self.num_rows):
            yield {name: self.columns[name][i] for name in names}

    def __repr__(self):
        return "Table(%d rows: %s)" % (
            self.num_rows,
            ", ".join("%s %s" % (n, t) for n, t in self.types.items()),
        )


def _infer_type(name, values):
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return "float64"
    if kinds == {bool}:
        return "bool"
    if kinds == {int}:
        return "int64"
    if kinds <= {int, float}:
        return "float64"
    if kinds == {str}:
        return "utf8"
    if kinds == {datetime.date}:
        return "date32"
    raise ArrowError(
        "column %r mixes or holds unsupported values (%s); use int, float, bool, str or date"
        % (name, ", ".join(sorted(k.__name__ for k in kinds)))
    )


# ---------------------------------------------------------------- reading


class _Buf:
    """Little-endian reads at absolute positions of one flatbuffer."""

    __slots__ = ("b",)

    def __init__(self, b):
        self.b = b

    def u8(self, p):
        return self.b[p]

    def u16(self, p):
        return struct.unpack_from("<H", self.b, p)[0]

    def i16(self, p):
        return struct.unpack_from("<h", self.b, p)[0]

    def u32(self, p):
        return struct.unpack_from("<I", self.b, p)[0]

    def i32(self, p):
        return struct.unpack_from("<i", self.b, p)[0]

    def i64(self, p):
        return struct.unpack_from("<q", self.b, p)[0]

    def root(self):
        return _Tab(self, self.u32(0))


class _Tab:
    """One flatbuffer table: fields by id through its vtable."""

    __slots__ = ("buf", "pos", "vt", "vt_len")

    def __init__(self, buf, pos):
        if pos < 0 or pos + 4 > len(buf.b):
            raise ArrowError("flatbuffer offset out of range")
        self.buf = buf
        self.pos = pos
        self.vt = pos - buf.i32(pos)
        if self.vt < 0 or self.vt + 4 > len(buf.b):
            raise ArrowError("flatbuffer vtable out of range")
        self.vt_len = buf.u16(self.vt)

    def _field(self, fid):
        slot = 4 + 2 * fid
        if slot + 2 > self.vt_len:
            return 0
        off = self.buf.u16(self.vt + slot)
        return self.pos + off if off else 0

    def scalar(self, fid, kind, default=0):
        p = self._field(fid)
        if not p:
            return default
        return getattr(self.buf, kind)(p)

    def _target(self, fid):
        p = self._field(fid)
        return p + self.buf.u32(p) if p else 0

    def table(self, fid):
        t = self._target(fid)
        return _Tab(self.buf, t) if t else None

    def string(self, fid):
        t = self._target(fid)
        if not t:
            return None
        n = self.buf.u32(t)
        return bytes(self.buf.b[t + 4 : t + 4 + n]).decode("utf-8")

    def vector(self, fid):
        """(start of elements, count) or (0, 0)."""
        t = self._target(fid)
        if not t:
            return 0, 0
        return t + 4, self.buf.u32(t)

    def tables(self, fid):
        start, n = self.vector(fid)
        return [_Tab(self.buf, start + 4 * i + self.buf.u32(start + 4 * i)) for i in range(n)]


# Message header and type union tags (format/Schema.fbs, format/Message.fbs).
_HEADER_SCHEMA, _HEADER_DICTIONARY, _HEADER_RECORD_BATCH = 1, 2, 3
_T_NULL, _T_INT, _T_FLOAT, _T_BINARY, _T_UTF8, _T_BOOL, _T_DECIMAL, _T_DATE = 1, 2, 3, 4, 5, 6, 7, 8
_T_TIMESTAMP, _T_LARGE_BINARY, _T_LARGE_UTF8, _T_UTF8_VIEW, _T_BINARY_VIEW = 10, 19, 20, 24, 23
_TYPE_NAMES = {
    9: "Time", 11: "Interval", 12: "List", 13: "Struct", 14: "Union", 15: "FixedSizeBinary",
    16: "FixedSizeList", 17: "Map", 18: "Duration", 21: "LargeList", 22: "RunEndEncoded",
    25: "ListView", 26: "LargeListView",
}


def _field_type(field):
    """(type name, decoding info) of a Schema Field table."""
    tag = field.scalar(2, "u8")
    t = field.table(3)
    name = field.string(0) or ""
    if field.table(4) is not None:
        raise ArrowError("column %r is dictionary-encoded, which this reader does not handle" % name)
    if tag == _T_INT:
        bits, signed = t.scalar(0, "i32"), bool(t.scalar(1, "u8"))
        return ("int%d" if signed else "uint%d") % bits, (bits, signed)
    if tag == _T_FLOAT:
        precision = t.scalar(0, "i16")
        if precision == 0:
            raise ArrowError("column %r is Float16, which this reader does not handle" % name)
        return ("float32", "<f") if precision == 1 else ("float64", "<d")
    if tag == _T_BOOL:
        return "bool", None
    if tag in (_T_UTF8, _T_LARGE_UTF8, _T_UTF8_VIEW):
        return {_T_UTF8: "utf8", _T_LARGE_UTF8: "large_utf8", _T_UTF8_VIEW: "utf8_view"}[tag], None
    if tag in (_T_BINARY, _T_LARGE_BINARY, _T_BINARY_VIEW):
        return {_T_BINARY: "binary", _T_LARGE_BINARY: "large_binary", _T_BINARY_VIEW: "binary_view"}[tag], None
    if tag == _T_DATE:
        return ("date32", None) if t.scalar(0, "i16", 1) == 0 else ("date64", None)
    if tag == _T_TIMESTAMP:
        unit = ["s", "ms", "us", "ns"][t.scalar(0, "i16")]
        return "timestamp_" + unit, None
    if tag == _T_DECIMAL:
        bits = t.scalar(2, "i32", 128)
        if bits != 128:
            raise ArrowError("column %r is Decimal%d; only Decimal128 is handled" % (name, bits))
        return "decimal128", t.scalar(1, "i32")
    if tag == _T_NULL:
        return "null", None
    raise ArrowError(
        "column %r has Arrow type %s, which this reader does not handle"
        % (name, _TYPE_NAMES.get(tag, "#%d" % tag))
    )


def _messages(data):
    """(flatbuffer bytes, body) per message, up to end-of-stream."""
    view = memoryview(data)
    pos = 0
    while pos + 4 <= len(view):
        size = struct.unpack_from("<I", view, pos)[0]
        pos += 4
        if size == _CONTINUATION:
            if pos + 4 > len(view):
                raise ArrowError("truncated message length")
            size = struct.unpack_from("<I", view, pos)[0]
            pos += 4
        if size == 0:
            return
        if pos + size > len(view):
            raise ArrowError("truncated message")
        meta = view[pos : pos + size]
        pos += size
        message = _Buf(meta).root()
        body_len = message.scalar(3, "i64")
        if body_len < 0 or pos + body_len > len(view):
            raise ArrowError("truncated message body")
        yield message, view[pos : pos + body_len]
        pos += body_len


def read_stream(data):
    """Decode Arrow IPC stream bytes into one Table (batches concatenated)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("expected Arrow IPC bytes, got %s" % type(data).__name__)
    fields = None
    metadata = {}
    columns = []
    for message, body in _messages(data):
        kind = message.scalar(1, "u8")
        header = message.table(2)
        if kind == _HEADER_SCHEMA:
            if header.scalar(0, "i16") != 0:
                raise ArrowError("big-endian streams are not handled")
            fields = []
            for f in header.tables(1):
                type_name, info = _field_type(f)
                fields.append((f.string(0) or "", type_name, info))
            for kv in header.tables(2):
                metadata[kv.string(0) or ""] = kv.string(1) or ""
            columns = [[] for _ in fields]
        elif kind == _HEADER_RECORD_BATCH:
            if fields is None:
                raise ArrowError("record batch before the schema")
            _read_batch(header, body, fields, columns)
        elif kind == _HEADER_DICTIONARY:
            raise ArrowError("dictionary batches are not handled")
        else:
            raise ArrowError("unexpected message type %d" % kind)
    if fields is None:
        raise ArrowError("no schema message")
    return Table(
        [(name, col) for (name, _, _), col in zip(fields, columns)],
        types={name: type_name for name, type_name, _ in fields},
        metadata=metadata,
    )


def _read_batch(header, body, fields, columns):
    if header.table(3) is not None:
        raise ArrowError("compressed record batches are not handled")
    length = header.scalar(0, "i64")
    node_start, node_count = header.vector(1)
    buf_start, buf_count = header.vector(2)
    var_start, var_count = header.vector(4)
    meta = header.buf
    if node_count != len(fields):
        raise ArrowError("record batch has %d columns, the schema %d" % (node_count, len(fields)))
    buffers = []
    for i in range(buf_count):
        off, size = meta.i64(buf_start + 16 * i), meta.i64(buf_start + 16 * i + 8)
        if off < 0 or size < 0 or off + size > len(body):
            raise ArrowError("buffer outside the message body")
        buffers.append(body[off : off + size])
    variadic = [meta.i64(var_start + 8 * i) for i in range(var_count)]
    next_buffer = 0
    next_variadic = 0

    def take(n):
        nonlocal next_buffer
        if next_buffer + n > len(buffers):
            raise ArrowError("record batch has too few buffers")
        out = buffers[next_buffer : next_buffer + n]
        next_buffer += n
        return out

    for index, (name, type_name, info) in enumerate(fields):
        n = meta.i64(node_start + 16 * index)
        nulls = meta.i64(node_start + 16 * index + 8)
        if n != length:
            raise ArrowError("column %r has %d rows, the batch %d" % (name, n, length))
        if type_name == "null":
            columns[index].extend([None] * n)
            continue
        if type_name in ("utf8_view", "binary_view"):
            if next_variadic >= len(variadic):
                raise ArrowError("missing variadic buffer count")
            count = variadic[next_variadic]
            next_variadic += 1
            validity, views = take(2)
            data_buffers = take(count)
            values = _views(views, data_buffers, n, type_name == "utf8_view")
        else:
            parts = take(3 if type_name in ("utf8", "large_utf8", "binary", "large_binary") else 2)
            validity = parts[0]
            values = _values(type_name, info, parts[1:], n)
        if nulls:
            if len(validity) * 8 < n:
                raise ArrowError("column %r: validity bitmap too short" % name)
            values = [v if validity[i >> 3] >> (i & 7) & 1 else None for i, v in enumerate(values)]
        columns[index].extend(values)


def _values(type_name, info, parts, n):
    data = parts[0]
    if type_name.startswith(("int", "uint")):
        bits, signed = info
        code = {8: "b", 16: "h", 32: "i", 64: "q"}[bits]
        return _unpack("<%d%s" % (n, code if signed else code.upper()), data)
    if type_name in ("float32", "float64"):
        return _unpack("<%d%s" % (n, info[1]), data)
    if type_name == "bool":
        if len(data) * 8 < n:
            raise ArrowError("boolean buffer too short")
        return [bool(data[i >> 3] >> (i & 7) & 1) for i in range(n)]
    if type_name == "date32":
        return [_EPOCH + datetime.timedelta(days=d) for d in _unpack("<%di" % n, data)]
    if type_name == "date64":
        return [_EPOCH + datetime.timedelta(milliseconds=d) for d in _unpack("<%dq" % n, data)]
    if type_name.startswith("timestamp_"):
        return _unpack("<%dq" % n, data)
    if type_name == "decimal128":
        if len(data) < 16 * n:
            raise ArrowError("decimal buffer too short")
        scale = 10 ** info
        return [int.from_bytes(data[16 * i : 16 * i + 16], "little", signed=True) / scale for i in range(n)]
    # utf8 / binary, 32- or 64-bit offsets
    offsets_code = "q" if type_name.startswith("large_") else "i"
    offsets = _unpack("<%d%s" % (n + 1, offsets_code), data) if n else [0]
    raw = parts[1]
    text = type_name.endswith("utf8")
    out = []
    for i in range(n):
        start, end = offsets[i], offsets[i + 1]
        if start < 0 or end < start or end > len(raw):
            raise ArrowError("string offsets outside the data buffer")
        chunk = bytes(raw[start:end])
        out.append(chunk.decode("utf-8") if text else chunk)
    return out


def _views(views, data_buffers, n, text):
    if len(views) < 16 * n:
        raise ArrowError("view buffer too short")
    out = []
    for i in range(n):
        length = struct.unpack_from("<i", views, 16 * i)[0]
        if length <= 12:
            chunk = bytes(views[16 * i + 4 : 16 * i + 4 + length])
        else:
            buffer_index, offset = struct.unpack_from("<ii", views, 16 * i + 8)
            if buffer_index >= len(data_buffers) or offset + length > len(data_buffers[buffer_index]):
                raise ArrowError("string view outside its data buffer")
            chunk = bytes(data_buffers[buffer_index][offset : offset + length])
        out.append(chunk.decode("utf-8") if text else chunk)
    return out


def _unpack(fmt, data):
    size = struct.calcsize(fmt)
    if len(data) < size:
        raise ArrowError("value buffer too short")
    return list(struct.unpack_from(fmt, data, 0))


# ---------------------------------------------------------------- writing


class _Builder:
    """Lays out one flatbuffer front to back: each table's vtable right
    before it, each child after its parent, every offset patched in place."""

    def __init__(self):
        self.b = bytearray(4)  # root offset

    def align(self, n, extra=0):
        while (len(self.b) + extra) % n:
            self.b.append(0)

    def finish(self, root):
        pos = self.place(root)
        struct.pack_into("<I", self.b, 0, pos)
        self.align(8)
        return bytes(self.b)

    def place(self, obj):
        kind = obj[0]
        if kind == "table":
            return self._table(obj[1])
        if kind == "string":
            self.align(4)
            pos = len(self.b)
            raw = obj[1].encode("utf-8")
            self.b += struct.pack("<I", len(raw)) + raw + b"\0"
            return pos
        if kind == "tables":
            self.align(4)
            pos = len(self.b)
            items = obj[1]
            self.b += struct.pack("<I", len(items)) + bytes(4 * len(items))
            for i, item in enumerate(items):
                slot = pos + 4 + 4 * i
                child = self.place(item)
                struct.pack_into("<I", self.b, slot, child - slot)
            return pos
        if kind == "structs":  # (format, list of tuples), 8-byte aligned
            fmt, items = obj[1], obj[2]
            self.align(8, extra=4)
            pos = len(self.b)
            self.b += struct.pack("<I", len(items))
            for item in items:
                self.b += struct.pack(fmt, *item)
            return pos
        raise ValueError(kind)

    def _table(self, fields):
        """fields: {id: (struct code, value) or ("offset", child)}."""
        # Inline layout after the 4-byte vtable offset, largest first.
        layout = []
        cursor = 4
        for fid, (code, value) in sorted(
            fields.items(), key=lambda kv: -(4 if kv[1][0] == "offset" else struct.calcsize(kv[1][0]))
        ):
            size = 4 if code == "offset" else struct.calcsize(code)
            cursor = (cursor + size - 1) // size * size
            layout.append((fid, code, value, cursor))
            cursor += size
        table_size = (cursor + 3) // 4 * 4
        slots = max(fields) + 1 if fields else 0
        vtable = [0] * slots
        for fid, _, _, at in layout:
            vtable[fid] = at
        vt_bytes = struct.pack("<HH%dH" % slots, 4 + 2 * slots, table_size, *vtable)
        self.align(8, extra=len(vt_bytes))
        vt_pos = len(self.b)
        self.b += vt_bytes
        pos = len(self.b)
        self.b += bytes(table_size)
        struct.pack_into("<i", self.b, pos, pos - vt_pos)
        children = []
        for fid, code, value, at in layout:
            if code == "offset":
                children.append((pos + at, value))
            else:
                struct.pack_into("<" + code, self.b, pos + at, value)
        for slot, child in children:
            target = self.place(child)
            struct.pack_into("<I", self.b, slot, target - slot)
        return pos


_WRITE_TYPES = {
    # name: (type tag, type table fields)
    "int64": (_T_INT, {0: ("i", 64), 1: ("B", 1)}),
    "float64": (_T_FLOAT, {0: ("h", 2)}),
    "bool": (_T_BOOL, {}),
    "utf8": (_T_UTF8, {}),
    "date32": (_T_DATE, {0: ("h", 0)}),
}


def _message(header_type, header, body_length):
    fb = _Builder().finish(
        (
            "table",
            {
                0: ("h", 4),  # MetadataVersion V5
                1: ("B", header_type),
                2: ("offset", ("table", header)),
                3: ("q", body_length),
            },
        )
    )
    return struct.pack("<Ii", _CONTINUATION, len(fb)) + fb


def _pad8(b):
    return b + bytes(-len(b) % 8)


def write_stream(table):
    """Encode a Table (or a dict of column lists) as Arrow IPC stream bytes."""
    if not isinstance(table, Table):
        table = Table(table)
    names = table.names
    fields = []
    for name in names:
        type_name = table.types[name]
        if type_name not in _WRITE_TYPES:
            raise ArrowError(
                "column %r: cannot write type %s; use int64, float64, bool, utf8 or date32"
                % (name, type_name)
            )
        tag, type_fields = _WRITE_TYPES[type_name]
        fields.append(
            (
                "table",
                {
                    0: ("offset", ("string", name)),
                    1: ("B", 1),
                    2: ("B", tag),
                    3: ("offset", ("table", type_fields)),
                    5: ("offset", ("tables", [])),
                },
            )
        )
    schema_fields = {0: ("h", 0), 1: ("offset", ("tables", fields))}
    if table.metadata:
        schema_fields[2] = (
            "offset",
            (
                "tables",
                [
                    ("table", {0: ("offset", ("string", k)), 1: ("offset", ("string", v))})
                    for k, v in table.metadata.items()
                ],
            ),
        )
    out = bytearray(_message(_HEADER_SCHEMA, schema_fields, 0))

    n = table.num_rows
    body = bytearray()
    nodes = []
    buffers = []

    def add(raw):
        buffers.append((len(body), len(raw)))
        body.extend(_pad8(raw))

    for name in names:
        values = table.columns[name]
        type_name = table.types[name]
        nulls = sum(1 for v in values if v is None)
        nodes.append((n, nulls))
        if nulls:
            bitmap = bytearray((n + 7) // 8)
            for i, v in enumerate(values):
                if v is not None:
                    bitmap[i >> 3] |= 1 << (i & 7)
            add(bytes(bitmap))
        else:
            add(b"")
        try:
            if type_name == "int64":
                add(struct.pack("<%dq" % n, *[0 if v is None else int(v) for v in values]))
            elif type_name == "float64":
                add(struct.pack("<%dd" % n, *[0.0 if v is None else float(v) for v in values]))
            elif type_name == "date32":
                add(struct.pack("<%di" % n, *[0 if v is None else (v - _EPOCH).days for v in values]))
            elif type_name == "bool":
                bits = bytearray((n + 7) // 8)
                for i, v in enumerate(values):
                    if v:
                        bits[i >> 3] |= 1 << (i & 7)
                add(bytes(bits))
            else:  # utf8
                encoded = [b"" if v is None else str(v).encode("utf-8") for v in values]
                offsets = [0]
                for chunk in encoded:
                    offsets.append(offsets[-1] + len(chunk))
                if offsets[-1] >= 2**31:
                    raise ArrowError("column %r: over 2 GiB of text" % name)
                add(struct.pack("<%di" % (n + 1), *offsets))
                add(b"".join(encoded))
        except (struct.error, TypeError, ValueError, AttributeError, OverflowError) as error:
            raise ArrowError("column %r: a value does not fit type %s (%s)" % (name, type_name, error)) from None

    batch = {
        0: ("q", n),
        1: ("offset", ("structs", "<qq", nodes)),
        2: ("offset", ("structs", "<qq", buffers)),
    }
    out += _message(_HEADER_RECORD_BATCH, batch, len(body))
    out += body
    out += struct.pack("<Ii", _CONTINUATION, 0)
    return bytes(out)
