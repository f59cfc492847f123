"""Fixtures used only by the runner's tests."""

import time

import pytest

from ehrseq_runner.storage.uri import open_storage


@pytest.fixture(params=["file", "s3"])
def storage(request, tmp_path):
    """The same tests on file:// storage and on the real S3 server (a fresh prefix per test)."""
    if request.param == "file":
        return open_storage(f"file://{tmp_path}/runs")
    request.getfixturevalue("s3_env")
    return open_storage(f"s3://ehrseq-test/{request.module.__name__.removeprefix('test_')}-{time.time_ns()}")
