"""CSV columns typed by GDAL's rules, at pyarrow's speed: lat/lon CSVs read without GDAL's scan.

GDAL's CSV driver detects column types (AUTODETECT_TYPE) by parsing the whole file before reading
it (AUTODETECT_SIZE_LIMIT=0: no late value cut to fit a type guessed from the first rows), then
parses it again to read it: ~5.5 s of 1M rows here. pyarrow reads the same file as text in a
fraction of that, and vectorised patterns classify every value. With the types known, pyarrow
reads the rows (`read_typed`), parsing a column into its type itself when all its values are plain
(no spaces, '+' or '/' for GDAL to get past) and converting the others from text: both passes take
~0.4 s for 1M rows here. A file with date-times or times, which GDAL converts in its own ways, is
read by GDAL told the types by a `.csvt` sidecar (one pass, not two).

The rules are GDAL's (3.6), checked against GDAL in tests/pipelines/test_csv_types.py: an
integer with a leading zero stays text (zip codes); integers beyond int32 are Integer64; integers
and reals together are Real; dates and date-times together are DateTime; true/false (with 0 and
1) is a boolean; anything else mixed is String; an empty field is null and does not count. Where
GDAL would lose the value (a lone "+" or ".", an integer with a trailing space or beyond int64) the
column stays text. A file pyarrow cannot read as GDAL does (not UTF-8, ragged rows) raises
CsvNotTyped, and GDAL detects the types itself as before.
"""

import csv
import io
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

__all__ = [
    "ColumnTypes",
    "CsvNotTyped",
    "classify_columns",
    "column_types",
    "read_typed",
    "readable_without_gdal",
    "write_csvt",
]

_BOOLEAN = r"^(?i:true|false)$|^[01]$"  # 0 and 1 only beside true or false: all 0/1 is Integer
_INTEGER = r"^ *[+-]?(0|[1-9][0-9]*)$"
_REAL = r"^ *[+-]?((0|[1-9][0-9]*)(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$|^ *[+-]?(?i:inf|nan)$"
_DATE = r"^[0-9]{4}[-/][0-9]{2}[-/][0-9]{2}$"
_DATETIME = (
    r"^[0-9]{4}[-/][0-9]{2}[-/][0-9]{2}[ T][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?"
    r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)?$"
)
_TIME = r"^[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?$"
# The same values in the plain form pyarrow parses into their type the way GDAL reads them: no
# spaces, no '+', dates with '-' (and no inf or nan). A column whose every value is plain is read
# typed by pyarrow's CSV reader in its threads, instead of as text converted afterwards.
_PLAIN = {
    "Integer": r"^-?(0|[1-9][0-9]*)$",
    "Real": r"^-?((0|[1-9][0-9]*)(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$",
    "Date": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
}
# What two types found in different parts of one column make.
_WIDER = {
    frozenset({"Integer", "Integer64"}): "Integer64",
    frozenset({"Integer", "Real"}): "Real",
    frozenset({"Integer64", "Real"}): "Real",
    frozenset({"Date", "DateTime"}): "DateTime",
}
_INT64 = 2.0**63  # beyond it GDAL would clamp the value: the column stays text instead
_INT32 = (-(2**31), 2**31 - 1)
_BLOCK_BYTES = 16 * 2**20
_SAMPLE = 1000
_BATCHES_IN_FLIGHT = 2  # blocks parsed but not classified yet: bounds the memory held


class CsvNotTyped(Exception):
    """pyarrow cannot read this CSV as GDAL does (encoding, ragged rows…): let GDAL detect the types."""


@dataclass(frozen=True)
class ColumnTypes:
    """Each column's GDAL CSV type (a `.csvt` word), and whether all its values are plain (see _PLAIN)."""

    types: list[str]
    plain: list[bool]


def column_types(path: str | Path) -> list[str]:
    """Each column's GDAL CSV type (a `.csvt` word), from every value of the file, in column order.

    A column without any value is String, as GDAL makes it. Raises CsvNotTyped when pyarrow cannot
    read the file the way GDAL does.
    """
    return classify_columns(path).types


def classify_columns(path: str | Path) -> ColumnTypes:
    """column_types, with whether each column's values are all in the plain form pyarrow parses."""
    try:
        width = len(_header(path))
        found: list[str | None] = [None] * width
        plain = [True] * width

        def merge(batch_types: list[Future]) -> None:
            for index, kind_and_plain in enumerate(batch_types):
                kind, plain_here = kind_and_plain.result()
                found[index] = _widest(found[index], kind)
                plain[index] = plain[index] and plain_here

        # Columns are classified on a thread each (pyarrow's kernels let go of the GIL) while the
        # next block is parsed: ~0.5 s -> ~0.3 s for 1M rows. Merged in file order, as one by one.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="csv-types") as pool:
            pending: deque[list[Future]] = deque()
            for batch in _text_batches(path, width):
                pending.append([pool.submit(_type_of, column) for column in batch.columns])
                while len(pending) > _BATCHES_IN_FLIGHT:
                    merge(pending.popleft())
            while pending:
                merge(pending.popleft())
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise CsvNotTyped(str(exc)) from exc
    return ColumnTypes([kind or "String" for kind in found], plain)


def write_csvt(path: str | Path, types: list[str]) -> None:
    """The `.csvt` sidecar GDAL reads beside the CSV (same name, .csvt): one quoted type per column."""
    Path(path).write_text(",".join(f'"{kind}"' for kind in types) + "\n", encoding="utf-8")


def _header(path: str | Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as file:
        return next(csv.reader(io.StringIO(file.readline())), [])


def _text_batches(
    path: str | Path, width: int, parsed_types: list[pa.DataType | None] | None = None
) -> Iterator[pa.RecordBatch]:
    """The rows after the header, every column as text (by position) unless parsed_types gives it a
    type to parse into; empty fields are null."""
    names = [f"c{index}" for index in range(width)]
    parsed_types = parsed_types or [None] * width
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=_BLOCK_BYTES, column_names=names, skip_rows=1),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=_ragged_row),
        convert_options=pacsv.ConvertOptions(
            column_types={
                name: kind or pa.large_string() for name, kind in zip(names, parsed_types, strict=True)
            },
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
            null_values=[""],
        ),
    )
    yield from reader


def _ragged_row(row) -> str:
    return "error"  # GDAL reads a short row with nulls; leave such a file to GDAL's own detection


def _type_of(column: pa.Array) -> tuple[str | None, bool]:
    """The GDAL type of a column's values (None when there is none), and whether they are all plain.

    A plain column matches its type's plain pattern in one pass, as it would the type's pattern;
    only a column that is not plain takes a second pass.
    """
    values = column.drop_null()
    if len(values) == 0:
        return None, True
    head = values.slice(0, _SAMPLE)

    def every(*patterns: str) -> bool:
        # The first values rule most types out at little cost before the whole column is matched.
        return all(_all_match(part, patterns) for part in (head, values))

    if every(_PLAIN["Integer"]):
        return _integer_width(values), True
    if every(_INTEGER):
        return _integer_width(values), False
    for kind, patterns in (
        ("Real", (_REAL,)),
        ("Integer(Boolean)", (_BOOLEAN,)),
        ("Date", (_DATE,)),
        ("DateTime", (_DATE, _DATETIME)),
        ("Time", (_TIME,)),
    ):
        if kind in _PLAIN and every(_PLAIN[kind]):
            return kind, True
        if every(*patterns):
            return kind, False
    return "String", True


def _all_match(values: pa.Array, patterns: tuple[str, ...]) -> bool:
    matches = pc.match_substring_regex(values, patterns[0])
    for pattern in patterns[1:]:
        matches = pc.or_(matches, pc.match_substring_regex(values, pattern))
    return pc.all(matches).as_py()


def _integer_width(values: pa.Array) -> str:
    numbers = pc.cast(pc.utf8_trim_whitespace(values), pa.float64())  # only the range matters here
    bounds = pc.min_max(numbers).as_py()
    low, high = bounds["min"], bounds["max"]
    if low < -_INT64 or high >= _INT64:
        return "String"
    return "Integer" if _INT32[0] <= low and high <= _INT32[1] else "Integer64"


def _widest(current: str | None, new: str | None) -> str | None:
    if current is None or new is None or current == new:
        return current or new
    return _WIDER.get(frozenset({current, new}), "String")


# Booleans stay text: pyarrow's CSV reader knows fewer spellings of true and false than a cast.
_PARSED_WHEN_PLAIN = frozenset({"Integer", "Integer64", "Real", "Date"})
# The Arrow type GDAL (through pyogrio) gives each type, for the types read here without GDAL.
_ARROW_TYPES = {
    "Integer": pa.int32(),
    "Integer64": pa.int64(),
    "Real": pa.float64(),
    "Integer(Boolean)": pa.bool_(),
    "Date": pa.date32(),
    "String": pa.string(),
}


def readable_without_gdal(types: list[str]) -> bool:
    """Whether read_typed can convert every column (date-times and times are left to GDAL)."""
    return all(kind in _ARROW_TYPES for kind in types)


def read_typed(
    path: str | Path, names: list[str], types: list[str], batch_size: int, *, plain: list[bool] | None = None
) -> Iterator[pa.Table]:
    """The rows as Arrow tables of batch_size rows, each column converted to its type as GDAL does.

    plain: which columns hold only plain values (classify_columns): pyarrow parses those itself.
    """
    plain = plain or [False] * len(names)
    parsed = [
        kind == "String" or (is_plain and kind in _PARSED_WHEN_PLAIN)
        for kind, is_plain in zip(types, plain, strict=True)
    ]
    pending: list[pa.RecordBatch] = []
    rows = 0
    for block in _text_batches(
        path, len(names), [_ARROW_TYPES[k] if p else None for k, p in zip(types, parsed, strict=True)]
    ):
        pending.append(block)
        rows += block.num_rows
        while rows >= batch_size:
            table = pa.Table.from_batches(pending)
            yield _convert(table.slice(0, batch_size), names, types, parsed)
            pending, rows = table.slice(batch_size).to_batches(), rows - batch_size
    if rows:
        yield _convert(pa.Table.from_batches(pending), names, types, parsed)


def _convert(text: pa.Table, names: list[str], types: list[str], parsed: list[bool]) -> pa.Table:
    columns = [
        column.combine_chunks() if done else _typed(column.combine_chunks(), kind)
        for column, kind, done in zip(text.columns, types, parsed, strict=True)
    ]
    return pa.table(columns, names=names)


def _typed(text: pa.Array, kind: str) -> pa.Array:
    """Text as GDAL reads it into `kind`: numbers may carry spaces and a '+', dates '/' separators."""
    if kind in ("Integer", "Integer64"):
        text = pc.replace_substring_regex(pc.utf8_trim_whitespace(text), r"^\+", "")
    elif kind == "Real":
        text = pc.utf8_trim_whitespace(text)
    elif kind == "Date":
        text = pc.replace_substring(text, "/", "-")
    return text.cast(_ARROW_TYPES[kind])
