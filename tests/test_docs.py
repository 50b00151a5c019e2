"""The docs stay true: what README.md and docs/*.md say exists does, and the commands they quote run.

Each test reads the Markdown as a reader would and compares it with the code: every setting in the
configuration table, every fail code and route in the protocol, the two commands of the README
against .ci/run, every relative link, and the shell commands that can run here in a second.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from app import create_app
from streamchat.config import Settings
from streamchat.protocol import FAIL_CODES, HTTP_ERROR_CODES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
MARKDOWN_FILES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def section(text: str, heading: str) -> str:
    """Return the body of the Markdown section under ``heading`` (a whole line, e.g. "## Routes")."""
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    level = heading.split(" ", 1)[0]
    end = re.search(rf"^#{{1,{len(level)}}} ", text[start:], flags=re.MULTILINE)
    return text[start:] if end is None else text[start : start + end.start()]


def test_section_stops_at_the_next_heading_of_its_level_or_above():
    text = "# A\n\n## B\nb1\n### C\nc1\n## D\nd1\n"
    assert section(text, "## B") == "b1\n### C\nc1\n"
    assert section(text, "### C") == "c1\n"


# --- what the reference documents ------------------------------------------------------------------------


def test_configuration_documents_every_setting():
    table = section((DOCS / "configuration.md").read_text(), "## Every setting")
    documented = re.findall(r"^\| `([A-Z0-9_]+)` \|", table, flags=re.MULTILINE)
    settings = {field.name.upper() for field in fields(Settings)}
    gunicorn_conf = (ROOT / "gunicorn.conf.py").read_text()
    gunicorn = set(re.findall(r'os\.environ\.(?:get|setdefault)\("([A-Z0-9_]+)"', gunicorn_conf))
    gunicorn |= set(re.findall(r'_whole_number\("([A-Z0-9_]+)"', gunicorn_conf))
    assert len(documented) == len(set(documented)), "a setting has two rows"
    assert set(documented) == settings | gunicorn


@pytest.mark.parametrize("code", sorted(FAIL_CODES))
def test_protocol_documents_every_fail_code(code):
    table = section((DOCS / "protocol.md").read_text(), "## Fail codes")
    assert re.search(rf"^\|.*`{code}`.*\|$", table, flags=re.MULTILINE), f"{code!r} has no row"


@pytest.mark.parametrize("code", sorted(HTTP_ERROR_CODES))
def test_protocol_documents_every_http_error_code(code):
    table = section(
        (DOCS / "protocol.md").read_text(), "## The request body, and the errors before any stream starts"
    )
    # A status, or a class of them ("4xx") for a code that several statuses share.
    assert re.search(rf"^\| \d(\d\d|xx) \|.*`{code}`.*\|$", table, flags=re.MULTILINE), f"{code!r} has no row"


def test_protocol_documents_every_route():
    table = section((DOCS / "protocol.md").read_text(), "## Routes")
    documented = set(re.findall(r"^\| `(GET|POST|PUT|PATCH|DELETE) (/[^`]*)` \|", table, flags=re.MULTILINE))
    routes = {
        (method, re.sub(r"<(?:\w+:)?(\w+)>", r"<id>", rule.rule))
        for rule in create_app().url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert documented == routes


# --- the README's commands ---------------------------------------------------------------------------------


def test_readme_run_and_test_commands_are_what_ci_runs():
    run, test = re.findall(r"^python3 -m venv .*$", README, flags=re.MULTILINE)
    ci = (ROOT / ".ci" / "run").read_text()
    assert run.endswith("pip install -r requirements.txt && gunicorn")
    assert test.endswith("pip install -r requirements-dev.txt && python -m pytest")
    assert re.search(rf"^{re.escape(test)}$", ci, flags=re.MULTILINE)
    # The run command comes first, and trying it with curl right after it, before the tests.
    assert README.index(run) < README.index("### Try it with curl") < README.index(test)


def test_readme_inner_loop_leaves_out_every_registered_marker():
    (expression,) = re.findall(r'^python -m pytest -m "([^"]+)"$', README, flags=re.MULTILINE)
    left_out = re.findall(r"not (\w+)", expression)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    registered = [line.split(":", 1)[0] for line in pyproject["tool"]["pytest"]["ini_options"]["markers"]]
    assert expression == " and ".join(f"not {name}" for name in left_out)
    assert sorted(left_out) == sorted(registered)


def requirement_names(path: Path) -> set[str]:
    """Return the normalized project names a requirements file lists, following ``-r`` includes."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            names |= requirement_names(path.parent / line[3:].strip())
        elif line:
            names.add(normalized(re.match(r"[A-Za-z0-9._-]+", line).group()))
    return names


def normalized(name: str) -> str:
    """Return a project name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_packages(*paths: Path) -> set[str]:
    """Return the top-level third-party modules that the Python files under ``paths`` import."""
    local = {"app", "wsgi", "streamchat", "fakeupstream", "bench", "examples", "conftest"}
    local |= {test_module.stem for test_module in (ROOT / "tests").glob("*.py")}
    modules = set()
    for path in paths:
        for source in [path] if path.is_file() else path.rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    return modules - local - set(sys.stdlib_module_names)


@pytest.mark.parametrize(
    ("paths", "requirements"),
    [
        (["app.py", "wsgi.py", "gunicorn.conf.py", "streamchat"], ["requirements.txt"]),
        (["tests", "fakeupstream", "bench", "examples"], ["requirements-dev.txt", "bench/requirements.txt"]),
    ],
    ids=["service", "tests and benchmark"],
)
def test_requirements_declare_every_package_imported(paths, requirements):
    """Each package the code imports is declared, not merely brought by another one (as httpx2 by openai)."""
    declared = set().union(*(requirement_names(ROOT / name) for name in requirements))
    distributions = importlib.metadata.packages_distributions()
    for module in sorted(imported_packages(*(ROOT / path for path in paths))):
        providers = {normalized(name) for name in distributions.get(module, [module])}
        assert providers & declared, (
            f"{module} is imported but none of {sorted(providers)} is in {requirements}"
        )


def test_requirements_install_the_service_only():
    runtime = (ROOT / "requirements.txt").read_text()
    dev = (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert dev[[line.startswith("#") for line in dev].index(False)] == "-r requirements.txt"
    for tool in ("pytest", "playwright", "fastapi", "uvicorn", "httpx-sse"):
        assert not re.search(rf"^{tool}\b", runtime, flags=re.MULTILINE), f"{tool} is not needed to run"


# --- links -------------------------------------------------------------------------------------------------


def anchors(markdown: str) -> set[str]:
    """Return the anchors that GitHub makes of a Markdown file's headings."""
    headings = re.findall(r"^#+ (.+)$", strip_code(markdown), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def strip_code(markdown: str) -> str:
    """Return the Markdown without its fenced code blocks (a `#` comment there is no heading)."""
    return re.sub(r"^```.*?^```$", "", markdown, flags=re.MULTILINE | re.DOTALL)


def relative_links() -> list[tuple[str, Path, str]]:
    """Return (file, target, anchor) for every relative link in README.md and docs/*.md."""
    links = []
    for path in MARKDOWN_FILES:
        for target in re.findall(r"\]\(([^)\s]+)\)", strip_code(path.read_text())):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            file, _, anchor = target.partition("#")
            target_path = Path(os.path.normpath(path.parent / file)) if file else path
            links.append((path.relative_to(ROOT).as_posix(), target_path, anchor))
    return links


def test_docs_have_relative_links_to_check():
    assert len(relative_links()) > 20


@pytest.mark.parametrize(
    ("source", "target", "anchor"),
    relative_links(),
    ids=[f"{source}->{target.relative_to(ROOT)}#{anchor}" for source, target, anchor in relative_links()],
)
def test_docs_relative_link_points_to_an_existing_file(source, target, anchor):
    assert target.exists(), f"{source} links to {target.relative_to(ROOT)}, which does not exist"
    if anchor:
        assert anchor in anchors(target.read_text()), f"{source}: no heading makes #{anchor} in {target.name}"


# --- commands quoted in the docs ------------------------------------------------------------------------


def quoted_commands() -> list[tuple[str, str]]:
    """Return (file, command) for each command in a ```sh block of README.md and docs/*.md."""
    commands = []
    for path in MARKDOWN_FILES:
        for block in re.findall(r"^```sh\n(.*?)^```$", path.read_text(), flags=re.MULTILINE | re.DOTALL):
            for command in block.replace("\\\n", " ").splitlines():
                command = re.sub(r"\s{2,}#.*$", "", command).strip()  # a trailing comment
                if command and not command.startswith("#"):
                    commands.append((path.relative_to(ROOT).as_posix(), command))
    return commands


# What runs here in a second and needs nothing else: Python one-liners (with settings in front) and
# `--help`. Not run: commands that start a server and wait (gunicorn, the fake upstream), need one
# running (curl), install something (pip, npm), take minutes (the benchmark) or run this very suite.
QUICK = re.compile(r"^(?:[A-Z0-9_]+=\S+ )*python -c \"[^\"]+\"$|^python -m [\w.]+ --help$")


def quick_commands() -> list[tuple[str, str]]:
    """Return the quoted commands that the test below runs (see QUICK)."""
    return [(source, command) for source, command in quoted_commands() if QUICK.match(command)]


def test_docs_quote_quick_commands():
    assert len(quick_commands()) >= 4


@pytest.mark.parametrize(("source", "command"), quick_commands())
def test_docs_quoted_command_runs(source, command):
    """Run one quick command from the docs in a shell, in the project's folder, as a reader would."""
    # `python` is this interpreter; the reader's own settings stay out of it.
    env = {k: v for k, v in os.environ.items() if k.upper() not in {f.name.upper() for f in fields(Settings)}}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"{source}: {command}\n{result.stderr}"
    assert result.stdout.strip(), f"{source}: {command} printed nothing"


# --- the test toolbox ----------------------------------------------------------------------------------


def test_marker_lists_in_conftest_name_existing_tests():
    """Each module and test that conftest marks exists, so a rename cannot bring it back to the loop."""
    from conftest import MODULE_MARKERS, SLOW_TESTS

    for module in MODULE_MARKERS:
        assert (ROOT / "tests" / module).is_file(), f"{module} is no test module"
    for entry in SLOW_TESTS:
        module, name = entry.split("::")
        source = (ROOT / "tests" / module).read_text()
        assert f"def {name.split('[')[0]}(" in source, f"{entry} is no test"
