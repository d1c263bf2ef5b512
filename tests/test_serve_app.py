"""The HTTP API over real HTTP on Ray Serve: submission, idempotency, errors, auth, job life cycle."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import API_TOKEN, wait_until

from rayetl.pipelines import JOB_TYPES
from rayetl.store import audit


def _job_count(pool) -> int:
    with pool.connection() as conn:
        return audit.count_jobs(conn)


def _events(api, job_id) -> list[dict]:
    return api.get(f"/api/jobs/{job_id}/events").json()["items"]


def test_job_types_list_every_type_with_its_params_schema(api):
    listed = {t["name"]: t for t in api.get("/api/job-types").json()}
    assert set(listed) == set(JOB_TYPES)
    hello = listed["hello_world"]
    assert hello["stages"] == ["greet", "reply"]
    assert hello["params_schema"]["properties"]["n"]["maximum"] == 100_000


def test_health_reports_database_ray_and_storage(api):
    body = api.get("/api/health").json()
    assert body == {"status": "ok", "database": "ok", "ray": "ok", "storage": "ok"}


def test_hello_world_thousand_completes_with_every_task_recorded(api, pool, wait_for_job, unique):
    response = api.post("/api/jobs/hello_world", json={"n": 1000, "message": unique})
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    job = wait_for_job(job_id, timeout_s=120)
    assert job.status == "completed", job.error
    assert job.result["greetings"] == 1000 and job.result["replies"] == 1000 and job.result["matched"] == 1000
    assert job.result["last_reply"] == f"reply #999 to '{unique} #999'"
    body = api.get(f"/api/jobs/{job_id}").json()
    assert body["task_counts"] == {"completed": 2000}
    assert body["stage_progress"]["greet"]["completed"] == 1000
    assert body["stage_progress"]["reply"]["status"] == "completed"
    page = api.get(f"/api/jobs/{job_id}/tasks", params={"stage": "reply", "limit": 10, "offset": 990}).json()
    assert page["total"] == 1000
    assert [t["task_key"] for t in page["items"]] == [f"reply-{i}" for i in range(990, 1000)]
    assert all(t["attempt"] == 1 and t["duration_s"] is not None and t["node"] for t in page["items"])
    events = [e["event"] for e in _events(api, job_id)]
    assert events == ["submitted", "job_started", "stage_started", "stage_completed", "stage_started",
                      "stage_completed", "job_completed"]  # fmt: skip


def test_resubmitting_a_completed_job_returns_it_as_it_is(api, wait_for_job, unique):
    first = api.post("/api/jobs/hello_world", json={"n": 2, "message": unique})
    wait_for_job(first.json()["job_id"])
    again = api.post("/api/jobs/hello_world", json={"message": unique, "n": 2})
    assert again.status_code == 200
    body = again.json()
    assert body["idempotent"] is True and body["job_id"] == first.json()["job_id"]
    assert body["status"] == "completed" and body["result"]["replies"] == 2


def test_fifty_concurrent_identical_submissions_create_one_job_and_one_coordinator(
    api, pool, wait_for_job, unique
):
    params = {"n": 20, "message": unique}
    with ThreadPoolExecutor(50) as executor:
        responses = list(executor.map(lambda _: api.post("/api/jobs/hello_world", json=params), range(50)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 49 + [202]
    job_ids = {r.json()["job_id"] for r in responses}
    assert len(job_ids) == 1
    (job_id,) = job_ids
    assert wait_for_job(job_id).status == "completed"
    events = [e["event"] for e in _events(api, job_id)]
    # One coordinator: exactly one start, no resume, one submission.
    assert events.count("submitted") == 1 and events.count("job_started") == 1 and "job_resumed" not in events
    assert api.get(f"/api/jobs/{job_id}").json()["task_counts"] == {"completed": 40}


def test_transient_failures_are_retried_and_recorded(api, wait_for_job, unique):
    params = {"n": 6, "message": unique, "fail_transient": ["greet-2", "reply-5"], "transient_failures": 2}
    job_id = api.post("/api/jobs/hello_world", json=params).json()["job_id"]
    job = wait_for_job(job_id)
    assert job.status == "completed", job.error
    tasks = {t["task_key"]: t for t in api.get(f"/api/jobs/{job_id}/tasks").json()["items"]}
    assert tasks["greet-2"]["attempt"] == 3 and tasks["reply-5"]["attempt"] == 3
    assert tasks["greet-1"]["attempt"] == 1
    retried = [e for e in _events(api, job_id) if e["event"] == "task_retried"]
    assert sorted((e["task_key"], e["detail"]["attempt"]) for e in retried) == [
        ("greet-2", 1), ("greet-2", 2), ("reply-5", 1), ("reply-5", 2)
    ]  # fmt: skip
    assert all(e["detail"]["kind"] == "transient" and "injected" in e["detail"]["error"] for e in retried)
    assert job.stage_progress["greet"].retried == 2


def test_transient_failures_beyond_the_limit_fail_the_job(api, wait_for_job, settings, unique):
    params = {"n": 3, "message": unique, "fail_transient": ["greet-1"], "transient_failures": 10}
    job = wait_for_job(api.post("/api/jobs/hello_world", json=params).json()["job_id"])
    assert job.status == "failed"
    assert f"task 'greet-1' failed after {settings.task_max_attempts} attempt(s)" in job.error


def test_permanent_failure_fails_the_job_and_leaves_no_open_task(api, pool, wait_for_job, unique):
    params = {"n": 50, "message": unique, "fail_permanent": ["reply-3"]}
    job_id = api.post("/api/jobs/hello_world", json=params).json()["job_id"]
    job = wait_for_job(job_id)
    assert job.status == "failed"
    assert job.error == "stage 'reply': task 'reply-3' failed after 1 attempt(s): " \
        "reply-3: permanent failure injected by fail_permanent"  # fmt: skip
    with pool.connection() as conn:
        counts = audit.count_tasks_by_status(conn, job_id)
    assert counts.get("queued", 0) == 0 and counts.get("running", 0) == 0
    assert counts["failed"] >= 1
    failed_events = [e for e in _events(api, job_id) if e["event"] == "task_failed"]
    assert [(e["task_key"], e["detail"]["kind"]) for e in failed_events] == [("reply-3", "permanent")]


def test_cancel_mid_job_stops_every_task(api, pool, wait_for_job, unique):
    job_id = api.post("/api/jobs/hello_world", json={"n": 40, "message": unique, "sleep_s": 0.5}).json()[
        "job_id"
    ]
    wait_until(
        lambda: (
            api.get(f"/api/jobs/{job_id}").json()["stage_progress"].get("greet", {}).get("completed", 0) >= 2
        ),
        timeout_s=60,
        what="some greetings",
    )
    response = api.post(f"/api/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    with pool.connection() as conn:
        counts = audit.count_tasks_by_status(conn, job_id)
    assert counts.get("queued", 0) == 0 and counts.get("running", 0) == 0 and counts["cancelled"] > 0
    again = api.post(f"/api/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["message"]


def test_retry_of_a_failed_job_reruns_only_from_the_failed_stage(api, wait_for_job, unique):
    params = {"n": 10, "message": unique, "fail_permanent": ["reply-4"]}
    job_id = api.post("/api/jobs/hello_world", json=params).json()["job_id"]
    assert wait_for_job(job_id).status == "failed"
    response = api.post(f"/api/jobs/{job_id}/retry")
    assert response.status_code == 202 and response.json()["attempt"] == 2
    job = wait_for_job(job_id)
    assert job.status == "completed" and job.attempt == 2 and job.result["matched"] == 10
    second_attempt = [e for e in _events(api, job_id) if e["attempt"] == 2]
    assert second_attempt[0]["event"] == "retried"
    assert [e["detail"] for e in second_attempt if e["event"] == "job_started"] == [{"from_stage": "reply"}]
    assert api.post(f"/api/jobs/{job_id}/retry").status_code == 409


def test_resubmitting_a_failed_job_starts_a_new_attempt_from_scratch(api, wait_for_job, unique):
    params = {"n": 4, "message": unique, "fail_permanent": ["greet-1"]}
    first = api.post("/api/jobs/hello_world", json=params)
    assert wait_for_job(first.json()["job_id"]).status == "failed"
    again = api.post("/api/jobs/hello_world", json=params)
    assert again.status_code == 202 and again.json()["idempotent"] is False and again.json()["attempt"] == 2
    job = wait_for_job(again.json()["job_id"])
    assert job.status == "completed" and job.attempt == 2
    events = _events(api, job.id)
    assert [e["event"] for e in events].count("resubmitted") == 1
    assert [e["detail"] for e in events if e["event"] == "job_started" and e["attempt"] == 2] == [
        {"from_stage": "greet"}
    ]


def test_job_list_filters_and_paginates(api, wait_for_job, unique):
    job_id = api.post("/api/jobs/hello_world", json={"n": 1, "message": unique}).json()["job_id"]
    wait_for_job(job_id)
    page = api.get(
        "/api/jobs", params={"status": "completed", "job_type": "hello_world", "limit": 500}
    ).json()
    assert job_id in {j["id"] for j in page["items"]}
    assert all(j["status"] == "completed" and j["job_type"] == "hello_world" for j in page["items"])
    first = api.get("/api/jobs", params={"limit": 1}).json()
    assert len(first["items"]) == 1 and first["total"] >= 1


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/api/jobs/hello_wrld", {}, 404, "unknown job type 'hello_wrld'. Known types: hello_world"),
        ("/api/jobs/hello_world", {"n": "many"}, 422, "n: Input should be a valid integer"),
        ("/api/jobs/hello_world", {"n": 0}, 422, "n: Input should be greater than or equal to 1"),
        ("/api/jobs/hello_world", {"n": 100_001}, 422, "n: Input should be less than or equal to 100000"),
        ("/api/jobs/hello_world", {"n": 2, "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
        ("/api/jobs/hello_world", [1, 2], 422, "Input should be a valid dictionary"),
        ("/api/jobs/list_container_contents", {"prefix": "../etc"}, 422, "'../etc' leaves its container"),
        ("/api/jobs/list_container_contents", {"container_name": "nowhere"}, 404, "container 'nowhere'"),
    ],
)
def test_bad_requests_get_a_clear_4xx_and_create_nothing(api, pool, path, body, status, needle):
    before = _job_count(pool)
    response = api.post(path, json=body)
    assert response.status_code == status
    assert needle in response.json()["message"]
    assert _job_count(pool) == before


def test_invalid_params_are_reported_field_by_field(api):
    response = api.post("/api/jobs/hello_world", json={"n": 0, "colour": "red"})
    fields = {f["field"] for f in response.json()["fields"]}
    assert fields == {"n", "colour"}


def test_unknown_job_is_404(api):
    response = api.get("/api/jobs/0000")
    assert response.status_code == 404 and "no job with id '0000'" in response.json()["message"]
    assert api.post("/api/jobs/0000/cancel").status_code == 404


def test_token_is_required_when_configured_but_health_stays_open(api, pool, unique):
    before = _job_count(pool)
    missing = api.post("/secured/api/jobs/hello_world", json={"n": 1, "message": unique})
    wrong = api.get("/secured/api/jobs", headers={"Authorization": "Bearer nope"})
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["message"]
    assert wrong.status_code == 401
    assert _job_count(pool) == before
    assert api.get("/secured/api/health").status_code == 200
    allowed = api.get("/secured/api/jobs", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert allowed.status_code == 200


def test_openapi_docs_are_served(api):
    assert api.get("/docs").status_code == 200
    assert "/api/jobs/{job_type}" in api.get("/openapi.json").json()["paths"]
