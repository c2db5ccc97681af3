from tests.fixtures.s3 import moto_server, s3_bucket  # noqa: F401
from tests.fixtures.tansu import tansu  # noqa: F401

from pathlib import Path

import pytest

from tests.sinks.lakes import LakeSetup, make_lake


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> LakeSetup:
    bucket = request.getfixturevalue("s3_bucket") if request.param == "s3" else None
    return make_lake(request.param, tmp_path, bucket)
