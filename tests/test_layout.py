"""The test suite keeps its layout (read with ``ast``; nothing is imported or run):

- tests/conftest.py only registers the plugins (``pytest_plugins``);
- fixtures live in plugin modules (tests/plugins/) or in the test module that uses
  them, never in tests/helpers/, and nobody imports a fixture function to make it
  visible: a test takes a fixture as an argument;
- plain helpers live in tests/helpers/: nobody imports tests.conftest, a test module
  or a plugin module;
- site documents are built by tests/helpers/site.py only (tests/test_settings.py
  writes raw YAML, as its subject is the parser's account of lines).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SITE_BUILDER = "tests/helpers/site.py"
RAW_SITES_ALLOWED = {SITE_BUILDER, "tests/test_settings.py"}
KEY = "secret_env"  # a token's key in a site file: who writes it builds a site's tokens
YAML_KEY = re.compile(rf"\b{KEY}\s*:")


@dataclass(frozen=True)
class Module:
    path: Path
    tree: ast.Module

    @property
    def where(self) -> str:
        return self.path.relative_to(ROOT).as_posix()

    @property
    def name(self) -> str:
        parts = list(self.path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        return ".".join(parts)

    @property
    def package(self) -> str:
        return self.name if self.path.name == "__init__.py" else self.name.rpartition(".")[0]


@cache
def modules() -> dict[str, Module]:
    """Every module under tests/, by its dotted name."""
    found = {}
    for path in sorted(TESTS.rglob("*.py")):
        if "__pycache__" not in path.parts:
            module = Module(path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
            found[module.name] = module
    return found


def source_of(module: Module, node: ast.ImportFrom) -> str:
    """The dotted name a ``from ... import`` imports from (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    parts = module.package.split(".")
    package = parts[: len(parts) - node.level + 1]
    return ".".join([*package, node.module] if node.module else package)


def imported_modules(module: Module) -> Iterator[tuple[int, str]]:
    """(line, module) for every module that ``module`` imports: ``import a.b`` imports
    a.b, ``from a import b`` imports a, and a.b too when that is a module of tests/."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            source = source_of(module, node)
            yield node.lineno, source
            for alias in node.names:
                if f"{source}.{alias.name}" in modules():
                    yield node.lineno, f"{source}.{alias.name}"


def imported_names(module: Module) -> Iterator[tuple[int, str, str]]:
    """(line, module, name) for every ``from module import name``."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                yield node.lineno, source_of(module, node), alias.name


def is_fixture(decorator: ast.expr) -> bool:
    """``@pytest.fixture``, ``@pytest_asyncio.fixture(...)``, ``@fixture``, ..."""
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    if isinstance(target, ast.Attribute):
        return target.attr == "fixture"
    return isinstance(target, ast.Name) and target.id == "fixture"


def fixtures(module: Module) -> dict[str, int]:
    """The module's fixture functions (by function name) and their lines."""
    return {
        node.name: node.lineno
        for node in module.tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(is_fixture(d) for d in node.decorator_list)
    }


def is_test_module(name: str) -> bool:
    return name.startswith("tests.") and name.rpartition(".")[2].startswith("test_")


def report(problems: list[str]) -> None:
    assert not problems, "the test suite's layout:\n" + "\n".join(problems)


# -- the checks ----------------------------------------------------------------------


def test_conftest_only_registers_the_plugins() -> None:
    conftest = modules()["tests.conftest"]
    problems = []
    for i, node in enumerate(conftest.tree.body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == [
            "pytest_plugins"
        ]:
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            what = f"{type(node).__name__.removesuffix('Def').lower()} {node.name}"
        else:
            what = ast.unparse(node).splitlines()[0]
        problems.append(
            f"{conftest.where}:{node.lineno}: `{what}`: conftest.py only lists pytest_plugins; "
            "move a fixture to a plugin module under tests/plugins/ (listed there), anything "
            "else to tests/helpers/, and import it from there"
        )
    report(problems)


def test_nobody_imports_conftest_a_test_module_or_a_plugin() -> None:
    problems = []
    for module in modules().values():
        for line, source in imported_modules(module):
            if source == "tests.conftest":
                what = "tests.conftest"
                fix = "import the helper from its module under tests/helpers/"
            elif is_test_module(source) and source != module.name:
                what = f"the test module {source}"
                fix = "move what both use to a module under tests/helpers/"
            elif source.startswith("tests.plugins.") and not module.name.startswith(
                "tests.plugins."
            ):
                what = f"the plugin {source}"
                fix = (
                    "take its fixtures as arguments (tests/conftest.py registers the plugin) "
                    "and import plain helpers from tests/helpers/ (move them there)"
                )
            else:
                continue
            problems.append(f"{module.where}:{line}: imports {what}: {fix}")
    report(sorted(set(problems)))


def test_nobody_imports_a_fixture_function() -> None:
    defined = {name: fixtures(module) for name, module in modules().items()}
    problems = [
        f"{module.where}:{line}: imports the fixture function {name} from {source}: take "
        "the fixture as an argument instead (from a plugin module under tests/plugins/ "
        "that tests/conftest.py lists in pytest_plugins; move it there if it is elsewhere)"
        for module in modules().values()
        for line, source, name in imported_names(module)
        if name in defined.get(source, {})
    ]
    report(problems)


def test_helpers_define_no_fixtures() -> None:
    problems = [
        f"{module.where}:{line}: defines the fixture {name}: move it to a plugin module "
        "under tests/plugins/ (listed in tests/conftest.py's pytest_plugins)"
        for module in modules().values()
        if module.name.startswith("tests.helpers.")
        for name, line in fixtures(module).items()
    ]
    report(problems)


def test_only_the_site_builder_writes_a_sites_tokens() -> None:
    problems = []
    for module in modules().values():
        if module.where in RAW_SITES_ALLOWED:
            continue
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Dict):
                raw = any(isinstance(k, ast.Constant) and k.value == KEY for k in node.keys)
            elif isinstance(node, ast.Call):
                raw = any(k.arg == KEY for k in node.keywords)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                raw = bool(YAML_KEY.search(node.value))  # a site file as YAML text
            else:
                continue
            if raw:
                problems.append(
                    f"{module.where}:{node.lineno}: writes a site's tokens ({KEY}) itself: "
                    f"build the site document with {SITE_BUILDER} (site.doc(...); "
                    "tokens=site.hub_token(...) for a hub's token only)"
                )
    report(problems)
