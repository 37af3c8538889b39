"""The SDK's pure-Python Arrow IPC reader and writer, on the host's CPython.

The host side (arrow-rs reading what this writes, this reading what
DataFusion produces) is tested in tests/python_guests.rs with real
components; these tests pin the format details and the error paths.
"""

import datetime
import struct
import unittest

from datasandbox_guest import ArrowError, Table, read_stream, write_stream


class RoundTrip(unittest.TestCase):
    def test_every_written_type_with_nulls(self):
        table = Table(
            {
                "i": [1, None, -(2**62)],
                "f": [0.5, None, -1e300],
                "b": [True, False, None],
                "s": ["", None, "上海"],
                "d": [datetime.date(2024, 2, 29), None, datetime.date(1900, 1, 1)],
            },
            metadata={"source": "test"},
        )
        back = read_stream(write_stream(table))
        self.assertEqual(back.columns, table.columns)
        self.assertEqual(back.types, {"i": "int64", "f": "float64", "b": "bool", "s": "utf8", "d": "date32"})
        self.assertEqual(back.metadata, {"source": "test"})
        self.assertEqual(len(back), 3)

    def test_types_are_inferred_from_values(self):
        table = Table({"n": [1, 2.5], "k": [True, None]})
        self.assertEqual(table.types, {"n": "float64", "k": "bool"})
        with self.assertRaises(ArrowError):
            Table({"x": [1, "a"]})

    def test_empty_tables_keep_their_schema(self):
        back = read_stream(write_stream(Table({"x": []}, types={"x": "int64"})))
        self.assertEqual(back.types, {"x": "int64"})
        self.assertEqual(back.num_rows, 0)

    def test_rows_and_columns(self):
        table = Table({"a": [1, 2], "b": ["x", "y"]})
        self.assertEqual(list(table.rows()), [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}])
        with self.assertRaises(KeyError):
            table["missing"]

    def test_longer_batches_cross_bitmap_bytes(self):
        values = [None if i % 3 == 0 else i for i in range(1000)]
        back = read_stream(write_stream({"v": values}))
        self.assertEqual(back["v"], values)


class Hostile(unittest.TestCase):
    def test_garbage_and_truncation_are_arrow_errors(self):
        good = write_stream({"v": [1, 2, 3]})
        for bad in [b"", b"\xff\xff\xff\xff", good[:20], good[: len(good) - 20], b"\x00" * 7]:
            with self.assertRaises(ArrowError):
                read_stream(bad)

    def test_offsets_pointing_outside_the_buffers_are_refused(self):
        stream = bytearray(write_stream({"s": ["abc", "def"]}))
        # The offsets buffer is the first 12 bytes of the body that follows
        # the record batch's metadata; corrupt its last offset.
        body_end = len(stream) - 8
        index = bytes(stream).rfind(struct.pack("<3i", 0, 3, 6), 0, body_end)
        self.assertGreater(index, 0)
        struct.pack_into("<i", stream, index + 8, 10_000)
        with self.assertRaises(ArrowError):
            read_stream(bytes(stream))

    def test_columns_of_different_length_are_refused(self):
        with self.assertRaises(ArrowError):
            Table({"a": [1], "b": [1, 2]})

    def test_values_that_do_not_fit_their_type_are_arrow_errors(self):
        with self.assertRaises(ArrowError):
            write_stream(Table({"i": ["x"]}, types={"i": "int64"}))
        with self.assertRaises(ArrowError):
            write_stream(Table({"i": [2**70]}, types={"i": "int64"}))
        with self.assertRaises(ArrowError):
            write_stream(Table({"t": [1]}, types={"t": "float16"}))

    def test_not_bytes_is_a_type_error(self):
        with self.assertRaises(TypeError):
            read_stream("not bytes")


if __name__ == "__main__":
    unittest.main()
