"""CSV column types are GDAL's own (checked against GDAL's AUTODETECT_TYPE), found at pyarrow speed."""

import numpy as np
import pyogrio
import pytest

from rayetl.pipelines.csv_types import (
    CsvNotTyped,
    classify_columns,
    column_types,
    read_typed,
    readable_without_gdal,
)
from rayetl.pipelines.vector_formats import ConverterParams, VectorFormat
from rayetl.pipelines.vector_source import read_batches

# GDAL's detection, as pyogrio reports it, in .csvt words (String and Time both read as "object").
_GDAL_TYPES = {
    "int32": "Integer",
    "int64": "Integer64",
    "float64": "Real",
    "bool": "Integer(Boolean)",
    "datetime64[D]": "Date",
    "datetime64[ms]": "DateTime",
}
_AUTODETECT = {"AUTODETECT_TYPE": "YES", "AUTODETECT_SIZE_LIMIT": "0", "EMPTY_STRING_AS_NULL": "YES"}

COLUMNS = {
    "integers": ["1", "-2", "+3", " 4", "0", "-0"],
    "leading_zeros": ["00123", "8"],
    "signed_leading_zero": ["-012"],
    "integer64": ["1", "2147483648"],
    "reals": ["1e5", "1.", ".5", "-.5", "1.5e-3", "0.0", "inf", "nan"],
    "integers_and_reals": ["1", "2.5"],
    "real_with_leading_zero": ["0123.5"],
    "text": ["straße", "١٢", "1,5", "0x10", "1_000", "1 000", "1e", "e5"],
    "numbers_and_text": ["1", "x"],
    "dates": ["2024-01-02", "2024/01/02"],
    "dates_and_datetimes": ["2024-01-02", "2024-01-02 10:11:12"],
    "datetimes": ["2024-01-02T10:11:12Z", "2024-01-02T10:11:12.5+02:00"],
    "dates_and_numbers": ["2024-01-02", "5"],
    "short_date": ["2024-1-2"],
    "compact_date": ["20240102"],
    "times": ["10:11:12", "10:11"],
    "times_and_dates": ["10:11:12", "2024-01-02"],
    "booleans": ["true", "FALSE", "False"],
    "booleans_and_bits": ["true", "1", "0"],
    "empty": ["", ""],
}


def _write_columns(path, columns: dict[str, list[str]]) -> None:
    rows = max(map(len, columns.values()))
    lines = [",".join(columns)]
    for row in range(rows):
        values = [(values[row] if row < len(values) else "") for values in columns.values()]
        lines.append(",".join(f'"{value}"' if "," in value else value for value in values))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _gdal_types(path) -> list[str]:
    info = pyogrio.read_info(path, **_AUTODETECT)
    frame = pyogrio.read_dataframe(path, read_geometry=False, **_AUTODETECT)
    types = []
    for name, dtype in zip(info["fields"], info["dtypes"], strict=True):
        values = frame[name].dropna()
        is_time = dtype == "object" and len(values) and type(values.iloc[0]).__name__ == "time"
        types.append("Time" if is_time else _GDAL_TYPES.get(str(dtype), "String"))
    return types


def test_types_are_the_ones_gdal_detects(tmp_path):
    path = tmp_path / "columns.csv"
    _write_columns(path, COLUMNS)

    assert dict(zip(COLUMNS, column_types(path), strict=True)) == dict(
        zip(COLUMNS, _gdal_types(path), strict=True)
    )


# Columns pyarrow parses itself (plain) or reads as text to convert as GDAL does (not plain).
PLAIN_OR_NOT = {
    "plain_integers": (["1", "-2", "0", "-0"], True),
    "integers_with_a_sign_or_space": (["1", "+2", " 3"], False),
    "plain_integer64": (["1", "-2147483649"], True),
    "plain_reals": (["1e5", "1.", ".5", "-.5", "2", "1.5E-3"], True),
    "reals_with_inf": (["1.5", "inf"], False),
    "reals_with_a_space": (["1.5", " 2.5"], False),
    "plain_dates": (["2024-01-02", "2024-02-29"], True),
    "dates_with_slashes": (["2024-01-02", "2024/01/03"], False),
}


def test_plain_columns_are_parsed_by_pyarrow_into_the_values_gdal_reads(tmp_path):
    path = tmp_path / "plain.csv"
    _write_columns(path, {name: values for name, (values, _) in PLAIN_OR_NOT.items()})

    classified = classify_columns(path)
    assert classified.plain == [plain for _, plain in PLAIN_OR_NOT.values()]
    names = list(PLAIN_OR_NOT)
    (parsed,) = read_typed(path, names, classified.types, 100, plain=classified.plain)
    (from_text,) = read_typed(path, names, classified.types, 100)  # every column converted from text
    expected = pyogrio.read_arrow(path, read_geometry=False, **_AUTODETECT)[1]
    assert parsed.equals(expected) and from_text.equals(expected)


@pytest.mark.parametrize("value", ["+", ".", "5 ", "99999999999999999999"])
def test_values_gdal_would_lose_keep_their_column_as_text(tmp_path, value):
    path = tmp_path / "lossy.csv"
    path.write_text(f"a,b\n{value},1\n", encoding="utf-8")

    assert column_types(path)[0] == "String"


def test_types_hold_for_every_block_of_a_big_file(tmp_path):
    # 2M rows span several of pyarrow's blocks: a real far down turns an integer column Real,
    # one text value turns a date column String.
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as file:
        file.write("n,day\n")
        file.writelines(f"{row},2024-01-02\n" for row in range(2_000_000))
        file.write("2.5,not a date\n")

    assert column_types(path) == ["Real", "String"]


def test_a_file_pyarrow_cannot_read_as_gdal_does_is_left_to_gdal(tmp_path):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1,2\n3\n", encoding="utf-8")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("a,b\nstraße,1\n".encode("latin-1"))

    for path in (ragged, latin1):
        with pytest.raises(CsvNotTyped):
            column_types(path)


@pytest.mark.parametrize(
    ("when", "without_gdal"),
    [
        (["2024-01-02", "2024/01/03", "2024-01-04"], True),  # dates: pyarrow reads the file
        (["2024-01-02", "2024/01/03 10:11:12", "2024-01-04T10:11:12Z"], False),  # GDAL, told the types
    ],
)
def test_a_lat_lon_csv_reads_as_with_gdals_own_detection(tmp_path, when, without_gdal):
    path = tmp_path / "points.csv"
    path.write_text(
        "id,lat,lon,zip,when,value,flag,note,big\n"
        f"1,40.5,-3.25,00123,{when[0]},1.5,true,straße, +7\n"
        "\n"
        f"2,41,-4,00456,{when[1]},2,FALSE,,2147483648\n"
        f'3,42.125,-5,,{when[2]},,1,"a, b",-3\n',
        encoding="utf-8",
    )
    expected = pyogrio.read_arrow(path, read_geometry=False, **_AUTODETECT)[1]
    assert readable_without_gdal(column_types(path)) == without_gdal

    params = ConverterParams(lat_name="lat", lon_name="lon")
    (batch,) = read_batches(path, VectorFormat.CSV, params, batch_size=10)

    assert batch.attributes.equals(expected)
    assert batch.rows.tolist() == [1, 2, 3]
    assert not list(tmp_path.glob("*.csvt"))  # the types went to a temporary folder, not beside the file


def test_a_big_csv_comes_in_batches_of_the_asked_size_with_every_row_once(tmp_path):
    path = tmp_path / "many.csv"
    rows = 1_500_000  # over 16 MB: several of pyarrow's blocks
    with path.open("w", encoding="utf-8") as file:
        file.write("id,lat,lon,label\n")
        file.writelines(f"{row},{row % 90}.5,{row % 180}.25,row {row}\n" for row in range(rows))
    params = ConverterParams(lat_name="lat", lon_name="lon")

    batches = list(read_batches(path, VectorFormat.CSV, params, batch_size=400_000))

    assert [len(batch) for batch in batches] == [400_000, 400_000, 400_000, 300_000]
    ids = np.concatenate([batch.attributes.column("id").to_numpy() for batch in batches])
    assert np.array_equal(ids, np.arange(rows)) and batches[-1].rows[-1] == rows
    assert batches[-1].attributes.column("label")[-1].as_py() == f"row {rows - 1}"
