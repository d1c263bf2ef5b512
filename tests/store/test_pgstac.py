"""The pgstac writer against a real pgstac: collections, idempotent item upserts, serialised writers."""

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
import pystac
import pytest

from rayetl.errors import InvalidRequest, NotFound, PermanentError
from rayetl.store import pgstac


@pytest.fixture
def collection_id(pool) -> str:
    collection_id = f"test-{uuid.uuid4().hex[:12]}"
    with pool.connection() as conn:
        assert pgstac.ensure_collection(
            conn, pgstac.default_collection(collection_id, "rayetl test collection")
        )
    return collection_id


def make_item(
    collection_id: str,
    item_id: str,
    *,
    x: float = 10.0,
    y: float = 50.0,
    when: datetime = datetime(2024, 5, 1, 12, tzinfo=UTC),
    row_count: int = 3,
) -> pystac.Item:
    """A 1×1 degree square at (x, y), with one asset and a table:row_count property."""
    bbox = [x, y, x + 1, y + 1]
    ring = [[x, y], [x + 1, y], [x + 1, y + 1], [x, y + 1], [x, y]]
    item = pystac.Item(
        id=item_id,
        geometry={"type": "Polygon", "coordinates": [ring]},
        bbox=bbox,
        datetime=when,
        properties={"table:row_count": row_count, "title": f"table {item_id}"},
        collection=collection_id,
    )
    item.add_asset(
        "data",
        pystac.Asset(
            href=f"abfs://data/{item_id}.parquet", media_type="application/x-parquet", roles=["data"]
        ),
    )
    return item


def test_upserted_item_reads_back_through_search_and_get(pool, collection_id):
    with pool.connection() as conn:
        pgstac.upsert_item(conn, make_item(collection_id, "roads"))
        pgstac.upsert_item(conn, make_item(collection_id, "rivers", x=100.0))

        stored = pgstac.get_item(conn, collection_id, "roads")
        found = pgstac.search_items(conn, collection_id)
        by_id = pgstac.search_items(conn, collection_id, ids=["rivers"])
        by_bbox = pgstac.search_items(conn, collection_id, bbox=(9.5, 49.5, 10.5, 50.5))

    assert stored["id"] == "roads" and stored["collection"] == collection_id
    assert stored["properties"]["table:row_count"] == 3
    assert stored["properties"]["datetime"].startswith("2024-05-01T12:00:00")
    assert stored["assets"]["data"]["href"] == "abfs://data/roads.parquet"
    assert stored["geometry"]["type"] == "Polygon"
    assert stored["bbox"] == [10.0, 50.0, 11.0, 51.0]
    assert sorted(f["id"] for f in found) == ["rivers", "roads"]
    assert [f["id"] for f in by_id] == ["rivers"]
    assert [f["id"] for f in by_bbox] == ["roads"]


def test_missing_item_reads_as_none(pool, collection_id):
    with pool.connection() as conn:
        assert pgstac.get_item(conn, collection_id, "nothing-here") is None
        assert pgstac.search_items(conn, collection_id, ids=["nothing-here"]) == []


def test_search_refuses_a_malformed_bbox(pool, collection_id):
    with (
        pool.connection() as conn,
        pytest.raises(InvalidRequest, match=r"bbox \[1, 2, 3\] must have 4 numbers"),
    ):
        pgstac.search_items(conn, collection_id, bbox=[1, 2, 3])


def test_reupsert_replaces_the_item(pool, collection_id):
    with pool.connection() as conn:
        pgstac.upsert_item(conn, make_item(collection_id, "roads", row_count=3))
        pgstac.upsert_item(conn, make_item(collection_id, "roads", row_count=7))
        # A batch that repeats an id keeps the last one.
        pgstac.upsert_items(conn, [make_item(collection_id, "roads", row_count=8).to_dict()] * 2)
        pgstac.upsert_items(conn, [make_item(collection_id, "roads", row_count=9)])
        found = pgstac.search_items(conn, collection_id)

    assert [(f["id"], f["properties"]["table:row_count"]) for f in found] == [("roads", 9)]


def test_concurrent_writers_of_one_collection_lose_no_items(pool):
    collection_id = f"test-{uuid.uuid4().hex[:12]}"
    start = datetime(2024, 1, 1, tzinfo=UTC)

    def write(writer: int) -> int:
        items = [
            make_item(
                collection_id, f"w{writer}-{i}", x=i - 90.0, when=start + timedelta(hours=writer * 25 + i)
            )
            for i in range(25)
        ]
        with pool.connection() as conn:
            # Every writer ensures the collection too, as parallel ingest tasks do.
            pgstac.ensure_collection(conn, pgstac.default_collection(collection_id, "concurrent writers"))
            return pgstac.upsert_items(conn, items)

    with ThreadPoolExecutor(8) as executor:
        written = list(executor.map(write, range(8)))

    assert written == [25] * 8
    with pool.connection() as conn:
        found = pgstac.search_items(conn, collection_id, limit=1000)
        counted = conn.execute(
            "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM pgstac.items WHERE collection = %s",
            (collection_id,),
        ).fetchone()
    assert len(found) == 200
    assert counted == {"n": 200, "ids": 200}


def test_ensure_collection_keeps_an_existing_collection(pool, collection_id):
    changed = pgstac.default_collection(collection_id, "a different description")
    with pool.connection() as conn:
        assert pgstac.ensure_collection(conn, changed) is False
        assert pgstac.get_collection(conn, collection_id)["description"] == "rayetl test collection"
        assert pgstac.ensure_collection(conn, changed, replace=True) is True
        assert pgstac.get_collection(conn, collection_id)["description"] == "a different description"


def test_collection_extent_covers_the_items(settings, collection_id):
    first = datetime(2023, 3, 1, 6, tzinfo=UTC)
    last = datetime(2024, 11, 30, 18, tzinfo=UTC)
    # Its own connection, in a time zone that is not UTC: the extent must still come out in UTC.
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        conn.execute("SET TIME ZONE 'Asia/Kolkata'")
        assert pgstac.update_collection_extent(conn, collection_id) is None  # no items yet
        pgstac.upsert_items(
            conn,
            [
                make_item(collection_id, "west", x=-20.0, y=-10.0, when=first),
                make_item(collection_id, "east", x=30.0, y=40.0, when=last),
            ],
        )
        extent = pgstac.update_collection_extent(conn, collection_id)
        stored = pgstac.get_collection(conn, collection_id)

    assert stored["extent"] == extent
    assert extent["spatial"]["bbox"] == [[-20.0, -10.0, 31.0, 41.0]]
    assert extent["temporal"]["interval"] == [["2023-03-01T06:00:00Z", "2024-11-30T18:00:00Z"]]
    # Still a valid STAC collection.
    parsed = pystac.Collection.from_dict(stored).extent
    assert parsed.spatial.bboxes == [[-20.0, -10.0, 31.0, 41.0]]
    assert parsed.temporal.intervals == [[first, last]]


def test_delete_item(pool, collection_id):
    with pool.connection() as conn:
        pgstac.upsert_items(conn, [make_item(collection_id, "keep"), make_item(collection_id, "drop")])
        assert pgstac.delete_item(conn, collection_id, "drop") is True
        assert pgstac.delete_item(conn, collection_id, "drop") is False
        assert pgstac.get_item(conn, collection_id, "drop") is None
        assert [f["id"] for f in pgstac.search_items(conn, collection_id)] == ["keep"]


def test_upsert_into_a_missing_collection_names_it(pool):
    missing = f"test-missing-{uuid.uuid4().hex[:8]}"
    with pool.connection() as conn:
        with pytest.raises(NotFound, match=f"'{missing}' do not exist; create them with ensure_collection"):
            pgstac.upsert_item(conn, make_item(missing, "roads"))
        assert pgstac.get_collection(conn, missing) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["properties"].pop("datetime"), "properties need 'datetime'"),
        (lambda d: d["properties"].update(datetime="last tuesday"), "'last tuesday' is not an RFC 3339"),
        (lambda d: (d.pop("geometry"), d.pop("bbox")), "neither a geometry nor a bbox"),
        (
            lambda d: d.update(geometry={"type": "Polygon", "coordinates": "x"}),
            "geometry is not valid GeoJSON",
        ),
        (lambda d: d.update(bbox=[1, 2, 3]), r"bbox \[1, 2, 3\] is not 4 or 6 numbers"),
        (lambda d: d.pop("collection"), "no 'collection'"),
    ],
    ids=["no-datetime", "bad-datetime", "no-geometry", "bad-geometry", "bad-bbox", "no-collection"],
)
def test_invalid_item_is_refused_with_its_id(pool, collection_id, change, message):
    content = make_item(collection_id, "broken").to_dict()
    change(content)
    with pool.connection() as conn:
        with pytest.raises(
            PermanentError, match=rf"STAC item 'broken' cannot be stored in pgstac: .*{message}"
        ):
            pgstac.upsert_items(conn, [make_item(collection_id, "fine"), content])
        # Nothing of the batch was written.
        assert pgstac.search_items(conn, collection_id) == []


def test_item_pgstac_rejects_is_named(pool, collection_id):
    content = make_item(collection_id, "inverted").to_dict()
    content["properties"].update(start_datetime="2024-02-01T00:00:00Z", end_datetime="2024-01-01T00:00:00Z")
    with pool.connection() as conn:
        with pytest.raises(PermanentError, match="pgstac rejected STAC item 'inverted'.*start_datetime"):
            pgstac.upsert_item(conn, content)
        assert pgstac.get_item(conn, collection_id, "inverted") is None


def test_functions_open_their_own_connection_from_settings(settings):
    collection_id = f"test-{uuid.uuid4().hex[:12]}"
    assert pgstac.ensure_collection(settings, pgstac.default_collection(collection_id, "from settings"))
    pgstac.upsert_item(settings, make_item(collection_id, "roads"))
    assert pgstac.get_item(settings.database_url.get_secret_value(), collection_id, "roads")["id"] == "roads"


def test_search_path_does_not_leak_into_the_pooled_connection(pool, collection_id):
    with pool.connection() as conn:
        before = conn.execute("SHOW search_path").fetchone()["search_path"]
        pgstac.search_items(conn, collection_id)
        assert conn.execute("SHOW search_path").fetchone()["search_path"] == before
