"""The README stays true: every setting, fail code and route it documents exists, and vice versa."""

import re
from dataclasses import fields
from pathlib import Path

import pytest

from app import create_app
from streamchat.config import Settings
from streamchat.providers.base import FAIL_CODES

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
GUNICORN_CONF = (Path(__file__).resolve().parent.parent / "gunicorn.conf.py").read_text()


def config_table_variables() -> set[str]:
    """Return the variable names in the README's configuration table."""
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z_]+)` \|", section, flags=re.MULTILINE))


def test_readme_documents_every_setting():
    settings = {field.name.upper() for field in fields(Settings)}
    gunicorn = set(re.findall(r'os\.environ\.(?:get|setdefault)\("([A-Z_]+)"', GUNICORN_CONF))
    assert config_table_variables() == settings | gunicorn


@pytest.mark.parametrize("code", sorted(FAIL_CODES))
def test_readme_documents_every_fail_code(code):
    assert f"`{code}`" in README


def test_readme_documents_every_route():
    app = create_app()
    documented = set(re.findall(r"^\| `(GET|POST) (/[^`]*)` \|", README, flags=re.MULTILINE))
    routes = {
        (method, re.sub(r"<(?:\w+:)?(\w+)>", r"<id>", rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert documented == routes


def test_readme_test_command_is_what_ci_runs():
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    commands = re.findall(r"^python3 -m venv .*$", README, flags=re.MULTILINE)
    assert len(commands) == 2
    assert commands[1] in ci
    assert commands[0].endswith("&& gunicorn")
