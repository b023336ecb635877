"""A client test's missing prerequisite: a skip naming the install command, in CI a failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clients import prerequisites


def test_missing_chromium_skips_with_the_command_that_installs_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(prerequisites.REQUIRE_ENV, raising=False)
    monkeypatch.setattr(prerequisites, "CHROMIUM", tmp_path / "no-chromium")
    with pytest.raises(pytest.skip.Exception) as skipped:
        prerequisites.require_chromium()
    assert "apt-get install -y --no-install-recommends chromium" in str(skipped.value)


def test_missing_packages_fail_when_ci_requires_the_client_tests(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(prerequisites.REQUIRE_ENV, "1")
    monkeypatch.setattr(prerequisites, "NODE_MODULES", tmp_path)
    with pytest.raises(pytest.fail.Exception) as failed:
        prerequisites.require_packages("@amplitude/analytics-browser")
    assert "@amplitude/analytics-browser" in str(failed.value)
    assert "npm ci --prefix tests/clients" in str(failed.value)
