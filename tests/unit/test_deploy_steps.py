"""The deploy's and the rollback's step tables are what docs/deployment.md lists, in the same order and under
the same names."""

from __future__ import annotations

import re
from pathlib import Path

from tako.deploy.rollback import ROLLBACK
from tako.deploy.steps import PREPARE, RELEASE, SWITCH

DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"


def documented_steps(section_title: str = "Deploy steps") -> list[tuple[str, str]]:
    """(name, what the cleanup does) of each row of the steps table in a section of docs/deployment.md."""
    section = DOC.read_text().split(f"## {section_title}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| \*\*([a-z]+)\*\* \| .* \| (.*?) ?\|$", section, flags=re.MULTILINE)


def test_the_docs_list_the_steps_of_the_table_in_order_with_their_cleanup() -> None:
    assert documented_steps() == [(step.name, step.undoes) for step in (*PREPARE, RELEASE, *SWITCH)]


def test_the_docs_list_the_rollback_steps_in_order_with_their_cleanup() -> None:
    assert documented_steps("Releases and rollback") == [(step.name, step.undoes) for step in ROLLBACK]


def test_every_step_says_what_it_does() -> None:
    for step in (*PREPARE, RELEASE, *SWITCH, *ROLLBACK):
        assert step.does and step.name.isidentifier(), step
