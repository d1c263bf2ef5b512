"""The `rayetl` console script, run as a subprocess against the session's PostGIS, Ray and API."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import typer
from conftest import free_port

from rayetl.cli import parse_params

RAYETL = Path(sys.executable).with_name("rayetl")
JOB_LINE = re.compile(r"^job ([0-9a-f]{64}) (\w+)", re.MULTILINE)


def base_env() -> dict[str, str]:
    """os.environ without anything that would point the CLI elsewhere, and wide, plain output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYETL_") and k != "RAY_ADDRESS"}
    env.pop("FORCE_COLOR", None)
    # rich wraps at 80 columns when not on a terminal, which would split the messages under test.
    env.update(COLUMNS="250", NO_COLOR="1")
    return env


def session_env(settings) -> dict[str, str]:
    """Environment in which the CLI uses the session's database, storage and API."""
    return base_env() | {
        "RAYETL_DATABASE_URL": settings.database_url.get_secret_value(),
        "RAYETL_HOME": str(settings.home),
        "RAYETL_STORAGE_ROOT": str(settings.local_storage_root),
        "RAYETL_API_PORT": str(settings.api_port),
        # Same knobs as the session, in case this CLI creates the cluster's janitor.
        "RAYETL_JANITOR_INTERVAL_S": str(settings.janitor_interval_s),
        "RAYETL_JANITOR_STALE_AFTER_S": str(settings.janitor_stale_after_s),
        "RAYETL_RETRY_BACKOFF_S": str(settings.retry_backoff_s),
        "RAYETL_RETRY_BACKOFF_MAX_S": str(settings.retry_backoff_max_s),
        "RAYETL_PROGRESS_FLUSH_S": str(settings.progress_flush_s),
    }


def rayetl(*args: str, env: dict[str, str], timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RAYETL), *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def output(done: subprocess.CompletedProcess) -> str:
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def env(settings) -> dict[str, str]:
    return session_env(settings)


# -- -p parsing ---------------------------------------------------------------------------------


def test_params_are_read_as_json_when_they_parse_and_as_text_otherwise():
    pairs = [
        "n=5",
        "ratio=0.5",
        "flag=true",
        'fail_permanent=["reply-1"]',
        'options={"a": 1}',
        "message=hello world",
        'quoted="5"',
        "expr=a=b",
        "empty=",
    ]

    assert parse_params(pairs, None) == {
        "n": 5,
        "ratio": 0.5,
        "flag": True,
        "fail_permanent": ["reply-1"],
        "options": {"a": 1},
        "message": "hello world",
        "quoted": "5",
        "expr": "a=b",
        "empty": "",
    }


def test_params_from_the_command_line_override_the_params_file(tmp_path):
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps({"n": 3, "message": "from file"}))

    assert parse_params(["n=7"], params_file) == {"n": 7, "message": "from file"}


@pytest.mark.parametrize("pair", ["n", "=5"])
def test_param_without_a_key_and_value_is_rejected_with_an_example(pair):
    with pytest.raises(typer.BadParameter, match=rf"'{pair}' is not key=value \(e\.g\. -p n=10\)"):
        parse_params([pair], None)


# -- run: a job on the current Ray cluster, waited for ------------------------------------------


@pytest.fixture(scope="module")
def runs(env, ray_cluster):
    """The `rayetl run` commands under test, started together: each spends seconds on its job."""
    run_env = env | {"RAYETL_RAY_ADDRESS": ray_cluster}
    message = f"hi-{time.time_ns()}"
    commands = {
        "completing": ["run", "hello_world", "-p", "n=5", "-p", f"message={message}"],
        "failing": [
            "run", "hello_world", "-p", "n=3", "-p", f"message={message}", "-p", 'fail_permanent=["reply-1"]'
        ],
        "unknown type": ["run", "hello_wrld"],
        "timing out": [
            "run", "hello_world", "-p", "n=1", "-p", f"message={message}-slow", "-p", "sleep_s=20",
            "--timeout-s", "3",
        ],
    }  # fmt: skip
    started = {
        name: subprocess.Popen(
            [str(RAYETL), *args], env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, args in commands.items()
    }

    def finished(name: str) -> subprocess.CompletedProcess:
        process = started[name]
        stdout, stderr = process.communicate(timeout=120)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    yield message, finished
    for process in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def test_run_waits_for_the_job_and_prints_its_result(runs):
    message, finished = runs

    done = finished("completing")

    assert done.returncode == 0, output(done)
    assert re.search(r"^job [0-9a-f]{64} queued$", done.stdout, re.MULTILINE), done.stdout
    assert '"status": "completed"' in done.stdout
    assert '"greetings": 5' in done.stdout
    assert f'"last_reply": "reply #4 to \'{message} #4\'"' in done.stdout


def test_run_of_a_failing_job_exits_non_zero_and_names_the_failed_task(runs):
    _, finished = runs

    done = finished("failing")

    assert done.returncode == 1, output(done)
    assert '"status": "failed"' in done.stdout
    assert "job failed" in done.stderr
    assert "reply-1: permanent failure injected by fail_permanent" in done.stderr


def test_run_gives_up_waiting_after_its_timeout_and_says_the_job_goes_on(runs):
    _, finished = runs

    done = finished("timing out")

    assert done.returncode == 1, output(done)
    assert '"status": "timeout"' in done.stdout
    gave_up = r"job timeout: still (queued|running) after 3 s; the job goes on"
    assert re.search(gave_up, done.stderr), done.stderr
    assert re.search(r"`rayetl cancel [0-9a-f]{64}` stops it", done.stderr), done.stderr


def test_run_of_an_unknown_job_type_prints_the_message_without_a_traceback(runs):
    _, finished = runs

    done = finished("unknown type")

    assert done.returncode == 2, output(done)
    assert "error: unknown job type 'hello_wrld'. Known types: hello_world" in done.stderr
    assert "GET /api/job-types lists them" in done.stderr
    assert "Traceback" not in output(done)


# -- jobs through the API -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def submitted(api, env) -> tuple[str, str, subprocess.CompletedProcess]:
    """A hello_world job submitted with --wait, shared by the commands that look at it.

    Returns its job id, its message parameter and the finished `submit` process.
    """
    message = f"cli-{time.time_ns()}"
    done = rayetl("submit", "hello_world", "-p", "n=4", "-p", f"message={message}", "--wait", env=env)
    match = JOB_LINE.search(done.stdout)
    assert match, output(done)
    return match[1], message, done


def test_submit_wait_follows_the_job_and_prints_its_result(submitted):
    job_id, _, done = submitted

    assert done.returncode == 0, output(done)
    assert f"job {job_id} queued" in done.stdout
    result = json.loads(done.stdout[done.stdout.index("{") :])
    assert result["status"] == "completed"
    assert result["result"]["greetings"] == result["result"]["matched"] == 4
    assert result["error"] is None


def test_submit_of_the_same_job_again_says_already_submitted(env, submitted):
    job_id, message, _ = submitted

    done = rayetl("submit", "hello_world", "-p", f"message={message}", "-p", "n=4", env=env)

    assert done.returncode == 0, output(done)
    assert done.stdout.strip() == f"job {job_id} completed (already submitted)"


def test_status_shows_the_job(env, submitted):
    job_id, _, _ = submitted

    done = rayetl("status", job_id, env=env)

    assert done.returncode == 0, output(done)
    job = json.loads(done.stdout)
    assert (job["id"], job["job_type"], job["status"]) == (job_id, "hello_world", "completed")
    assert job["result"]["replies"] == 4
    assert job["task_counts"] == {"completed": 8}


def test_jobs_lists_the_job(env, submitted):
    job_id, _, _ = submitted

    done = rayetl("jobs", "--type", "hello_world", "--status", "completed", "--limit", "500", env=env)

    assert done.returncode == 0, output(done)
    row = next(line for line in done.stdout.splitlines() if job_id[:12] in line)
    assert "hello_world" in row and "completed" in row
    assert re.search(r"^\d+ of \d+$", done.stdout, re.MULTILINE)


def test_tasks_lists_the_tasks_of_the_job(env, submitted):
    job_id, _, _ = submitted

    done = rayetl("tasks", job_id, env=env)

    assert done.returncode == 0, output(done)
    keys = re.findall(r"\b((?:greet|reply)-\d)\b", done.stdout)
    assert keys == [f"greet-{i}" for i in range(4)] + [f"reply-{i}" for i in range(4)]
    assert "8 of 8" in done.stdout


def test_cancel_of_a_finished_job_prints_the_conflict_and_exits_non_zero(env, submitted):
    job_id, _, _ = submitted

    done = rayetl("cancel", job_id, env=env)

    assert done.returncode == 2, output(done)
    assert f"error: HTTP 409: job {job_id[:12]} is already completed" in done.stderr
    assert "only queued or running jobs can be cancelled" in done.stderr
    assert "Traceback" not in output(done)


def test_submit_with_an_invalid_param_prints_the_field_message(api, env):
    done = rayetl("submit", "hello_world", "-p", "n=0", env=env)

    assert done.returncode == 2, output(done)
    assert "error: HTTP 422: invalid parameters for hello_world: n: " in done.stderr
    assert "greater than or equal to 1" in done.stderr
    assert "Traceback" not in output(done)


def test_submit_with_a_malformed_param_is_a_usage_error(env):
    done = rayetl("submit", "hello_world", "-p", "n", env=env)

    assert done.returncode == 2, output(done)
    assert "'n' is not key=value (e.g. -p n=10)" in done.stderr


# -- storage ------------------------------------------------------------------------------------


def test_storage_put_ls_get_round_trip(env, settings, unique, tmp_path):
    container = f"cli-{unique}"
    local = tmp_path / "points.csv"
    local.write_text("id,name\n1,a\n2,b\n")
    size = local.stat().st_size

    put = rayetl("storage", "put", str(local), f"{container}/in/dir/points.csv", env=env)
    listed = rayetl("storage", "ls", container, env=env)
    got = rayetl(
        "storage", "get", f"{container}/in/dir/points.csv", str(tmp_path / "back/points.csv"), env=env
    )

    assert put.returncode == 0, output(put)
    assert put.stdout.strip() == f"{container}/in/dir/points.csv ({size} bytes)"
    stored = settings.local_storage_root / container / "in/dir/points.csv"
    assert stored.read_bytes() == local.read_bytes()
    assert listed.returncode == 0, output(listed)
    assert re.search(rf"in/dir/points\.csv\s*│\s*{size}\s*│", listed.stdout), listed.stdout
    assert got.returncode == 0, output(got)
    assert (tmp_path / "back/points.csv").read_bytes() == local.read_bytes()
    shutil.rmtree(settings.local_storage_root / container)


@pytest.mark.parametrize("command", ["put", "get"])
def test_storage_path_with_dot_dot_is_refused(env, settings, unique, tmp_path, command):
    container = f"cli-{unique}"
    (settings.local_storage_root / container).mkdir()
    local = tmp_path / "points.csv"
    local.write_text("id\n1\n")
    target = f"{container}/../escape.csv"
    args = ["put", str(local), target] if command == "put" else ["get", target, str(tmp_path / "out.csv")]

    done = rayetl("storage", *args, env=env)

    assert done.returncode == 2, output(done)
    assert f"error: path '../escape.csv' leaves container '{container}'" in done.stderr
    assert "without '..'" in done.stderr
    assert "Traceback" not in output(done)
    assert not (settings.local_storage_root / "escape.csv").exists()
    assert not (tmp_path / "out.csv").exists()
    assert list((settings.local_storage_root / container).iterdir()) == []
    shutil.rmtree(settings.local_storage_root / container)


def test_storage_put_refused_for_its_path_creates_no_container(env, settings, unique, tmp_path):
    container = f"cli-{unique}"
    local = tmp_path / "points.csv"
    local.write_text("id\n1\n")

    done = rayetl("storage", "put", str(local), f"{container}/../escape.csv", env=env)

    assert done.returncode == 2, output(done)
    assert f"error: path '../escape.csv' leaves container '{container}'" in done.stderr
    created = settings.local_storage_root / container
    left_behind = created.exists()
    shutil.rmtree(created, ignore_errors=True)
    assert not left_behind, f"a refused `storage put` still created the container folder {created}"


# -- the local stack: up, use, down -------------------------------------------------------------


def _is_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _processes_with_env(name: str, value: str) -> list[int]:
    """Pids of the processes started with the environment variable name=value.

    Ray renames its workers ("ray::ServeController"), but they keep the environment of the
    `ray start` that launched them.
    """
    marker = f"{name}={value}".encode()
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                pids.append(int(environ.parent.name))
        except OSError:  # the process ended while we looked
            continue
    return pids


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=5)
    except httpx.TransportError:
        return False
    return True


def wait_until_or_none(condition, *, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return None


def _state_api(dashboard_port: int, kind: str) -> list[dict]:
    response = httpx.get(
        f"http://127.0.0.1:{dashboard_port}/api/v0/{kind}", params={"limit": 10_000}, timeout=10
    )
    return response.json()["data"]["result"]["result"]


def _assert_dashboard_shows_readable_names(dashboard_port: int, job_id: str) -> None:
    """A person can follow the job in the dashboard: its coordinator's task named after the job attempt,
    on a JobCoordinator actor, and the job's tasks named type:stage:key."""
    coordinator = f"rayetl-job-hello_world-{job_id[:12]}-a1"
    expected = {
        coordinator,
        "hello_world:greet:greet-0",
        "hello_world:greet:greet-1",
        "hello_world:reply:reply-1",
    }
    seen: dict[str, str] = {}

    def listed() -> bool:
        seen.update((t["name"], t["func_or_class_name"]) for t in _state_api(dashboard_port, "tasks"))
        return expected <= set(seen)

    if not wait_until_or_none(listed, timeout_s=30):
        pytest.fail(f"the dashboard does not list {sorted(expected)}; it lists {sorted(seen)}")
    assert seen[coordinator] == "JobCoordinator.adopt"


@pytest.mark.stack
def test_up_starts_the_stack_and_down_stops_it():
    home = Path(tempfile.mkdtemp(prefix="rayetl-stack-", dir="/tmp"))
    home.chmod(0o755)
    ray_tmp = str(home / "t")  # short: Ray's socket paths live under it and must stay < 108 characters
    api_port, dashboard_port = free_port(), free_port()
    # No RAYETL_DATABASE_URL: `up` starts the stack's own private PostGIS, as on a user's machine.
    # (Sharing the session's database let the session's janitor take the stack's jobs over.)
    env = base_env() | {
        "RAYETL_HOME": str(home),
        "RAYETL_API_PORT": str(api_port),
        "RAYETL_DASHBOARD_PORT": str(dashboard_port),
        # Ray's own files (sessions, and the record of the cluster `ray start` made, which a bare
        # ray.init() joins) go under home, so that no other Ray user of this machine sees this cluster.
        "RAY_TMPDIR": ray_tmp,
    }
    api_url = f"http://127.0.0.1:{api_port}"
    ray_pgid = None
    try:
        up = rayetl("up", env=env, timeout_s=120)
        assert up.returncode == 0, output(up)
        assert f"API:           {api_url}" in up.stdout
        assert f"Ray dashboard: http://127.0.0.1:{dashboard_port}" in up.stdout
        ray_pgid = json.loads((home / "stack.json").read_text())["ray_pid"]
        ray_address = re.search(r"^Ray address:\s+(\S+)$", up.stdout, re.MULTILINE)[1]
        assert httpx.get(f"{api_url}/api/health", timeout=10).status_code == 200

        again = rayetl("up", env=env, timeout_s=120)
        assert again.returncode == 0, output(again)
        assert f"Ray address:   {ray_address}" in again.stdout
        assert json.loads((home / "stack.json").read_text())["ray_pid"] == ray_pgid

        submitted = rayetl("submit", "hello_world", "-p", "n=2", "-p", "message=stack", "--wait", env=env)
        assert submitted.returncode == 0, output(submitted)
        assert '"status": "completed"' in submitted.stdout
        assert '"last_reply": "reply #1 to \'stack #1\'"' in submitted.stdout
        job_id = re.search(r"^job ([0-9a-f]{64}) ", submitted.stdout, re.MULTILINE)[1]
        _assert_dashboard_shows_readable_names(dashboard_port, job_id)

        # The entry point for Ray jobs: `ray job submit -- rayetl run ...` on the stack's cluster.
        ray_cli = Path(sys.executable).with_name("ray")
        via_ray = subprocess.run(
            [str(ray_cli), "job", "submit", "--address", f"http://127.0.0.1:{dashboard_port}", "--",
             str(RAYETL), "run", "hello_world", "-p", "n=3", "-p", "message=via-ray-job"],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert via_ray.returncode == 0, output(via_ray)
        assert "succeeded" in via_ray.stdout and "reply #2 to 'via-ray-job #2'" in via_ray.stdout
    finally:
        down = rayetl("down", env=env, timeout_s=120)
        group_survived = ray_pgid is not None and _is_group_alive(ray_pgid)
        survivors = _processes_with_env("RAY_TMPDIR", ray_tmp)
        api_answers = _answers(f"{api_url}/api/health")
        address_file = Path(ray_tmp) / "ray" / "ray_current_cluster"
        address_left = address_file.read_text() if address_file.exists() else None
        # Leave no cluster behind, whatever `down` did: these are the processes this test started.
        if group_survived:
            os.killpg(ray_pgid, signal.SIGKILL)
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)

    assert down.returncode == 0, output(down)
    assert f"stopped: Ray head at {ray_address}" in down.stdout
    assert f"private PostGIS in {home / 'postgres'}" in down.stdout
    problems = [
        f"the Ray head's process group {ray_pgid} still ran after `down`" if group_survived else "",
        f"processes of the stopped cluster still ran after `down`: {survivors}" if survivors else "",
        f"the API still answered at {api_url} after `down`" if api_answers else "",
        # `ray stop` clears this record; a stale one (by default /tmp/ray/ray_current_cluster) makes
        # every later bare ray.init() on the machine try to join the stopped cluster and hang.
        f"`down` left {address_file} pointing at the stopped cluster ({address_left})"
        if address_left
        else "",
    ]
    assert not any(problems), "\n".join(p for p in problems if p)
