"""The job contract is enforced when a job type is defined, and every registered type obeys it."""

import pytest
from pydantic import ConfigDict

from rayetl.errors import NotFound
from rayetl.pipelines import JOB_TYPES, build_registry, get_job_type
from rayetl.pipelines.contract import JobContractError, JobParams, JobType, Stage, StreamItem, TaskSpec
from rayetl.pipelines.hello_world import HELLO_WORLD


class _Params(JobParams):
    n: int = 1


def _plan(params, outputs):
    return [TaskSpec("only")]


def _run():
    return 1


def _finalize(params, outputs):
    return {}


def _stream():
    yield StreamItem("a", 1)


_CONSUMER = Stage("two", plan=_plan, run=_run)


def _job(**overrides) -> JobType:
    fields = dict(
        name="sample", params=_Params, stages=(Stage("one", plan=_plan, run=_run),), finalize=_finalize
    )
    fields.update(overrides)
    return JobType(**fields)


def test_complete_job_type_is_accepted():
    assert _job().stage_names == ["one"]


def test_streaming_stage_feeding_a_consumer_is_accepted():
    stages = (Stage("one", plan=_plan, run=_stream, streams=True), _CONSUMER)
    assert _job(stages=stages, cleanup=lambda params, job_id, settings: None).stage_names == ["one", "two"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"finalize": None}, "finalize is missing"),
        ({"params": None}, "params is missing"),
        ({"stages": ()}, "stages is missing"),
        ({"stages": (Stage("one", run=_run),)}, "stage 'one': plan is missing"),
        ({"stages": (Stage("one", plan=_plan),)}, "stage 'one': run is missing"),
        ({"stages": (Stage("one", plan=_plan, run=lambda: 1),)}, "run must be a module-level function"),
        (
            {"stages": (Stage("one", plan=_plan, run=_run), Stage("one", plan=_plan, run=_run))},
            "stage name 'one' is used twice",
        ),
        ({"name": "Bad Name"}, "the name must be lower-case"),
        ({"finalize": lambda params: {}}, "finalize must accept (params, outputs)"),
        ({"preflight": lambda: None}, "preflight must accept (params, settings)"),
        ({"cleanup": lambda params: None}, "cleanup must accept (params, job_id, settings)"),
        (
            {"stages": (Stage("one", plan=_plan, run=_run, streams=True), _CONSUMER)},
            "run must be a generator function",
        ),
        (
            {"stages": (Stage("one", plan=_plan, run=_stream, streams=True, durable=True), _CONSUMER)},
            "cannot be durable",
        ),
        ({"stages": (Stage("one", plan=_plan, run=_stream, streams=True),)}, "a later stage must consume"),
        (
            {
                "stages": (
                    Stage("one", plan=_plan, run=_stream, streams=True),
                    Stage("two", plan=_plan, run=_stream, streams=True),
                    Stage("three", plan=_plan, run=_run),
                )
            },
            "which streams too",
        ),
    ],
)
def test_incomplete_job_type_fails_at_definition_naming_the_part(overrides, message):
    with pytest.raises(JobContractError) as excinfo:
        _job(**overrides)
    assert message in str(excinfo.value)
    assert "job type" in str(excinfo.value)


def test_params_that_accept_unknown_fields_are_refused():
    class Loose(JobParams):
        model_config = ConfigDict(extra="allow")

    with pytest.raises(JobContractError, match="must reject unknown fields"):
        _job(params=Loose)


def test_registry_refuses_duplicate_names():
    with pytest.raises(JobContractError, match="registered twice"):
        build_registry([_job(), _job()])


def test_unknown_job_type_message_lists_known_types():
    with pytest.raises(NotFound) as excinfo:
        get_job_type("hello_wrld")
    message = str(excinfo.value)
    assert "unknown job type 'hello_wrld'" in message
    for name in JOB_TYPES:
        assert name in message


@pytest.mark.parametrize("job_type", list(JOB_TYPES.values()), ids=list(JOB_TYPES))
def test_every_registered_job_type_obeys_the_contract(job_type):
    assert job_type.params.model_config["extra"] == "forbid"
    assert job_type.params.model_config["frozen"] is True
    assert job_type.stages and callable(job_type.finalize)
    schema = job_type.params.model_json_schema()
    assert schema["type"] == "object"
    assert schema.get("additionalProperties") is False
    # Rebuilding the type runs the contract checks again.
    assert JobType(**{f: getattr(job_type, f) for f in job_type.__dataclass_fields__}).name == job_type.name


def test_job_id_is_hashed_from_params_with_defaults_applied():
    implicit = HELLO_WORLD.parse_params({})
    explicit = HELLO_WORLD.parse_params({"n": 3, "message": "hello"})
    other = HELLO_WORLD.parse_params({"n": 4})
    assert HELLO_WORLD.job_id(implicit) == HELLO_WORLD.job_id(explicit)
    assert HELLO_WORLD.job_id(implicit) != HELLO_WORLD.job_id(other)
    assert len(HELLO_WORLD.job_id(implicit)) == 64


def test_hello_world_rejects_task_keys_that_do_not_exist():
    with pytest.raises(ValueError, match="task key 'greet-5' does not exist"):
        HELLO_WORLD.parse_params({"n": 5, "fail_transient": ["greet-5"]})
