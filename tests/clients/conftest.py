"""Name each JS client test's outcome at the end of the run, so a log shows they ran."""

from __future__ import annotations

import pytest

from tests.clients.prerequisites import version_of

_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # The call phase decides; a skip or failure in setup is the outcome when there is none.
    if report.when == "call" or report.outcome != "passed":
        _outcomes[report.nodeid] = report.outcome.upper()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _outcomes:
        return
    terminalreporter.section("JS client tests (official Amplitude SDKs)")
    terminalreporter.line(
        f"chromium: {version_of('/usr/bin/chromium') or 'not installed'}; "
        f"node: {version_of('node') or 'not installed'}"
    )
    for nodeid, outcome in _outcomes.items():
        terminalreporter.line(f"{outcome} {nodeid}")
