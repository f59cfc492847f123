"""Fixtures used across the test groups (library/, runner/, end_to_end/); helpers and constants are in support/."""

import pytest

from support.helpers import run_cli


@pytest.fixture
def cli(tmp_path):
    return lambda *args, **kw: run_cli(*args, cwd=tmp_path, **kw)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3 server (SeaweedFS) for the whole session; tests use their own prefixes."""
    from support.s3_server import WeedServer

    server = WeedServer(tmp_path_factory.mktemp("weed"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch):
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return s3.env
