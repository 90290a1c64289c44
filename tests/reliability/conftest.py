"""The reliability suite's figures: each test hands its line to `figures`, and the lines are
printed together at the end of every run (CI's log included), not only with -s."""

from __future__ import annotations

import pytest

_LINES: list[str] = []


@pytest.fixture
def figures(request):
    def add(line: str) -> None:
        print(line)
        _LINES.append(f"{request.node.name}: {line}")

    return add


def pytest_terminal_summary(terminalreporter) -> None:
    if _LINES:
        terminalreporter.section("reliability figures")
        for line in _LINES:
            terminalreporter.write_line(line)
