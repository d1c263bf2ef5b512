"""/features over real HTTP on Ray Serve: tipg serves the data schemas' tables, and sees changes at once."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import API_TOKEN
from psycopg import sql

from rayetl.features import features_url, viewer_url
from rayetl.store.postgis import STAGING_PREFIX

SQUARES = [("north", 0.0), ("south", 2.0), ("east", 4.0)]


def _create_table(conn, schema: str, table: str, rows: list[tuple[str, float]]) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    target = sql.Identifier(schema, table)
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (fid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text, "
            "geom geometry(MultiPolygon, 4326))"
        ).format(target)
    )
    for name, x in rows:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (name, geom) VALUES (%s, ST_Multi(ST_MakeEnvelope(%s, 0, %s, 1, 4326)))"
            ).format(target),
            (name, x, x + 1),
        )


@pytest.fixture
def geo_table(pool, unique):
    """Make tables in `geo` (or another schema) with three squares each; drop them afterwards."""
    made: list[tuple[str, str]] = []

    def make(suffix: str = "", *, schema: str = "geo", prefix: str = "", rows=SQUARES) -> str:
        table = f"{prefix}t{unique}{suffix}"
        with pool.connection() as conn:
            _create_table(conn, schema, table, rows)
        made.append((schema, table))
        return table

    yield make
    with pool.connection() as conn:
        for schema, table in made:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, table)))
            if schema != "geo":
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _collection_ids(api, prefix: str = "", **kwargs) -> set[str]:
    response = api.get(f"{prefix}/features/collections", params={"limit": 1000}, **kwargs)
    assert response.status_code == 200, response.text
    return {c["id"] for c in response.json()["collections"]}


def test_landing_page_and_openapi_describe_the_features_api(api, settings):
    landing = api.get("/features/")
    assert landing.status_code == 200, landing.text
    hrefs = {link["href"] for link in landing.json()["links"]}
    assert {f"{settings.base_url}/features/conformance", f"{settings.base_url}/features/collections"} <= hrefs
    paths = api.get("/openapi.json").json()["paths"]
    assert "/features/collections/{collectionId}/items" in paths and "/api/jobs/{job_type}" in paths


def test_new_table_is_listed_at_once_with_prefixed_links(api, settings, geo_table):
    table = geo_table()
    response = api.get("/features/collections", params={"limit": 1000})
    listed = {c["id"]: c for c in response.json()["collections"]}
    assert f"geo.{table}" in listed
    base = f"{settings.base_url}/features/"
    links = [link["href"] for link in listed[f"geo.{table}"]["links"]]
    assert links and all(href.startswith(base) for href in links), links


def test_items_are_geojson_with_every_row_and_its_properties(api, settings, geo_table):
    table = geo_table()
    response = api.get(f"/features/collections/geo.{table}/items", params={"limit": 100})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/geo+json")
    body = response.json()
    assert body["type"] == "FeatureCollection" and body["numberMatched"] == body["numberReturned"] == 3
    assert sorted(f["properties"]["name"] for f in body["features"]) == ["east", "north", "south"]
    assert {f["geometry"]["type"] for f in body["features"]} == {"MultiPolygon"}
    assert all(link["href"].startswith(f"{settings.base_url}/features/") for link in body["links"])
    self_link = next(link["href"] for link in body["links"] if link["rel"] == "self")
    assert self_link.startswith(features_url(settings, "geo", table))


def test_vector_tile_is_protobuf_with_the_table_s_features(api, geo_table):
    table = geo_table()
    response = api.get(f"/features/collections/geo.{table}/tiles/WebMercatorQuad/0/0/0")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.mapbox-vector-tile"
    # An MVT is a protobuf whose first field is a layer (field 3, length-delimited: 0x1a); tipg names
    # the layer "default" and writes the properties as values.
    assert response.content[:1] == b"\x1a" and b"default" in response.content
    assert all(name.encode() in response.content for name, _ in SQUARES)


def test_viewer_url_answers_with_an_html_map(api, settings, geo_table):
    table = geo_table()
    response = api.get(viewer_url(settings, "geo", table))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert f"/features/collections/geo.{table}/tiles/WebMercatorQuad/style.json" in response.text


def test_tables_outside_the_data_schemas_are_not_served(api, geo_table, unique):
    table = geo_table(schema=f"private_{unique}")
    assert not any(table in cid for cid in _collection_ids(api))
    response = api.get(f"/features/collections/private_{unique}.{table}/items")
    assert response.status_code == 404


def test_dropped_table_disappears(api, pool, geo_table):
    table = geo_table()
    assert f"geo.{table}" in _collection_ids(api)
    with pool.connection() as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("geo", table)))
    assert f"geo.{table}" not in _collection_ids(api)
    assert api.get(f"/features/collections/geo.{table}/items").status_code == 404


def _swap(pool, *, table: str, staging: str) -> None:
    """Replace geo.<table> by geo.<staging> in one transaction, as store.postgis publishes a table."""
    with pool.connection() as conn, conn.transaction():
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("geo", table)))
        conn.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                sql.Identifier("geo", staging), sql.Identifier(table)
            )
        )


def test_table_swapped_under_the_same_name_serves_its_new_rows(api, pool, geo_table):
    table = geo_table()
    assert api.get(f"/features/collections/geo.{table}/items").json()["numberMatched"] == 3
    staging = geo_table("_new", rows=[("only", 10.0)])
    with pool.connection() as conn:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN kind text DEFAULT 'new'").format(
                sql.Identifier("geo", staging)
            )
        )
    _swap(pool, table=table, staging=staging)
    body = api.get(f"/features/collections/geo.{table}/items").json()
    assert body["numberMatched"] == 1
    assert body["features"][0]["properties"] == {"fid": 1, "kind": "new", "name": "only"}
    assert f"geo.{staging}" not in _collection_ids(api)


def test_staging_tables_of_jobs_are_not_served(api, geo_table):
    staging = geo_table(prefix=STAGING_PREFIX)
    assert f"geo.{staging}" not in _collection_ids(api)
    assert api.get(f"/features/collections/geo.{staging}/items").status_code == 404


def test_no_request_fails_while_a_job_swaps_a_table_in_again_and_again(api, pool, geo_table):
    # A swap committed while tipg reads the catalog must neither fail a request nor hide the table.
    table = geo_table()
    paths = [
        f"/features/collections/geo.{table}/items",
        f"/features/collections/geo.{table}/tiles/WebMercatorQuad/0/0/0",
    ]
    done = threading.Event()

    def read(path: str) -> list[int]:
        statuses = []
        while not done.is_set():
            statuses.append(api.get(path).status_code)
        return statuses

    with ThreadPoolExecutor(8) as executor:
        readers = [executor.submit(read, paths[i % 2]) for i in range(8)]
        for i in range(30):
            staging = geo_table(f"_v{i}", prefix=STAGING_PREFIX, rows=[(f"v{i}", float(i))])
            _swap(pool, table=table, staging=staging)
        done.set()
        statuses = [status for reader in readers for status in reader.result()]
    assert statuses and set(statuses) == {200}
    (last,) = api.get(f"/features/collections/geo.{table}/items").json()["features"]
    assert last["properties"]["name"] == "v29"


def test_concurrent_requests_after_a_new_table_all_see_it(api, geo_table):
    table = geo_table()
    with ThreadPoolExecutor(16) as executor:
        responses = list(
            executor.map(lambda _: api.get(f"/features/collections/geo.{table}/items"), range(32))
        )
    assert [r.status_code for r in responses] == [200] * 32
    assert {r.json()["numberMatched"] for r in responses} == {3}


def test_token_is_required_for_features_when_configured(api, geo_table):
    table = geo_table()
    missing = api.get("/secured/features/collections")
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["message"]
    assert api.get(f"/secured/features/collections/geo.{table}/items").status_code == 401
    assert api.get("/secured/api/health").status_code == 200
    allowed = {"headers": {"Authorization": f"Bearer {API_TOKEN}"}}
    assert f"geo.{table}" in _collection_ids(api, "/secured", **allowed)
    body = api.get(f"/secured/features/collections/geo.{table}/items", **allowed).json()
    assert body["numberMatched"] == 3
    assert all("/secured/features/" in link["href"] for link in body["links"])
