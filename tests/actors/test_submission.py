"""Parameter validation at submission: every problem is reported field by field, with a fix."""

import pytest
from pydantic import Field

from rayetl.actors.submission import parse_params
from rayetl.errors import InvalidRequest
from rayetl.pipelines.contract import JobParams, JobType, Stage, TaskSpec
from rayetl.settings import Settings


class _Params(JobParams):
    blob_name: str
    table_name: str
    n: int = Field(1, ge=1)


def _plan(params, outputs):
    return [TaskSpec("only")]


def _run():
    return None


def _finalize(params, outputs):
    return {}


_JOB = JobType("sample_job", params=_Params, stages=(Stage("one", plan=_plan, run=_run),), finalize=_finalize)


def test_missing_required_fields_are_each_named():
    with pytest.raises(InvalidRequest) as excinfo:
        parse_params(_JOB, {"n": 0}, Settings())
    fields = {f["field"]: f["message"] for f in excinfo.value.fields}
    assert fields == {
        "blob_name": "Field required",
        "table_name": "Field required",
        "n": "Input should be greater than or equal to 1",
    }
    message = str(excinfo.value)
    assert message.startswith("invalid parameters for sample_job: ")
    assert "blob_name: Field required" in message and "GET /api/job-types shows the parameters" in message
