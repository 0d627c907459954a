"""``require_tool``: a bare ``pytest`` skips tests whose system tool is missing; ``.ci/run``
(``CONVSERVE_REQUIRE_SYSTEM_TOOLS=1``) fails them."""

from __future__ import annotations

import sys
from pathlib import Path

import conftest
import pytest
from conftest import require_tool


def test_a_present_tool_is_found_by_name_or_path() -> None:
    assert require_tool(Path(sys.executable), "install Python") == sys.executable
    assert Path(require_tool("sh", "apt-get install dash")).name == "sh"


def test_a_missing_tool_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "REQUIRE_SYSTEM_TOOLS", False)
    with pytest.raises(pytest.skip.Exception, match="no-such-tool is missing: apt-get install "
                                                    "no-such-tool .CONVSERVE_REQUIRE_SYSTEM_TOOLS"):
        require_tool("no-such-tool", "apt-get install no-such-tool")


def test_a_missing_tool_fails_where_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "REQUIRE_SYSTEM_TOOLS", True)
    with pytest.raises(pytest.fail.Exception, match=r"/nowhere/chromium is missing: apt-get "
                                                    r"install chromium \(required"):
        require_tool(Path("/nowhere/chromium"), "apt-get install chromium")
