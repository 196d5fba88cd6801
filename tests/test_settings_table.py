"""The settings table in docs/configuration.md is generated from PubSubSettings (names,
environment variables, types, defaults, meanings): the two cannot drift apart."""

from __future__ import annotations

import re

from fastapi_pubsub_cluster import PubSubSettings
from tools.settings_table import END, PAGE, START, page_with, table


def test_the_configuration_page_holds_the_generated_settings_table() -> None:
    page = PAGE.read_text()
    assert START in page and END in page
    assert page_with(table(), page) == page, "run: python -m tools.settings_table --write"


def test_every_pubsub_variable_the_docs_name_is_a_setting() -> None:
    from tests.test_docs_snippets import SOURCES

    known = {PubSubSettings.environment_variable(name) for name in PubSubSettings.model_fields}
    named = set()
    for path in SOURCES:
        named |= set(re.findall(r"\bPUBSUB_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    demo = {name for name in named if name.startswith("PUBSUB_DEMO")}
    typo = {"PUBSUB_REDIS_URI"}  # the docs' example of a misspelt variable
    assert named - demo - typo - known == set()
