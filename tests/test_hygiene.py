"""Code hygiene over the runtime packages (agent/, drivers/, models/, sync/, edge_agent/), from
their source files:

* logging has one style: ``log = logging.getLogger(__name__)`` (never a literal logger name), a
  constant message and the fields in ``extra={...}`` (no %-args, no f-string or computed
  message). A message may also be picked from a module-level table of constant strings
  (``MESSAGES.get(kind, "default")``): it is still one of a fixed set of greppable lines;
* no module over ~400 lines and no function over ~60, except the few listed in ``ALLOWED``
  with the reason they are not split yet.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "drivers", "models", "sync", "edge_agent")
LEVELS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
LOGGERS = {"log", "logger", "logging"}

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# path (or path::function) -> (the most lines it may have, why it is over the limit today).
# Empty: every module and function is within the limits. An entry is a split still to make
# (say which), capped at its size when added so it cannot grow meanwhile.
ALLOWED: dict[str, tuple[int, str]] = {
}


def sources() -> Iterator[Path]:
    for pkg in PACKAGES:
        yield from sorted((REPO / pkg).rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _constant_tables(tree: ast.Module) -> set[str]:
    """Module-level names bound to a dict literal whose values are all constant strings."""
    out = set()
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and all(isinstance(v, ast.Constant) and isinstance(v.value, str)
                        for v in node.value.values)):
            out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return out


def _is_constant_message(msg: ast.expr, tables: set[str]) -> bool:
    if isinstance(msg, ast.Constant) and isinstance(msg.value, str):
        return True
    if isinstance(msg, ast.Subscript):                               # TABLE[kind]
        return isinstance(msg.value, ast.Name) and msg.value.id in tables
    if (isinstance(msg, ast.Call) and isinstance(msg.func, ast.Attribute)  # TABLE.get(k, "x")
            and msg.func.attr == "get" and isinstance(msg.func.value, ast.Name)
            and msg.func.value.id in tables):
        return all(_is_constant_message(a, tables) for a in msg.args[1:])
    return False


def _logger_call(node: ast.Call) -> bool:
    f = node.func
    if not (isinstance(f, ast.Attribute) and f.attr in LEVELS):
        return False
    v = f.value
    if isinstance(v, ast.Name):
        return v.id in LOGGERS
    if isinstance(v, ast.Attribute):                                 # self.log.warning(...)
        return v.attr in LOGGERS - {"logging"}
    return (isinstance(v, ast.Call) and isinstance(v.func, ast.Attribute)
            and v.func.attr == "getLogger")                          # getLogger(...).info(...)


def logging_problems(path: Path) -> list[str]:
    return logging_problems_in(path.read_text(), rel(path))


def logging_problems_in(text: str, name: str) -> list[str]:
    tree = ast.parse(text, name)
    tables = _constant_tables(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        where = f"{name}:{node.lineno}"
        f = node.func
        if (isinstance(f, ast.Attribute) and f.attr == "getLogger" and node.args
                and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).startswith("edge_agent")):
            found.append(f"{where}: getLogger({node.args[0].value!r}); use __name__")
        if not _logger_call(node):
            continue
        args = node.args[1:] if isinstance(f, ast.Attribute) and f.attr == "log" else node.args
        if not args:
            continue
        if not _is_constant_message(args[0], tables):
            found.append(f"{where}: message is not a constant: {ast.unparse(args[0])[:60]}")
        if len(args) > 1:
            found.append(f"{where}: %-args in a logging call; put the fields in extra")
    return found


def size_problems(path: Path) -> list[str]:
    text = path.read_text()
    found = []
    n = len(text.splitlines())
    cap = ALLOWED.get(rel(path), (MAX_MODULE_LINES, ""))[0]
    if n > cap:
        found.append(f"{rel(path)}: {n} lines (max {cap})")
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            key = f"{rel(path)}::{node.name}"
            fcap = ALLOWED.get(key, (MAX_FUNCTION_LINES, ""))[0]
            if length > fcap:
                found.append(f"{key} (line {node.lineno}): {length} lines (max {fcap})")
    return found


def test_the_walk_sees_every_package() -> None:
    seen = {rel(p).split("/")[0] for p in sources()}
    assert seen == set(PACKAGES)
    assert sum(1 for _ in sources()) >= 80


def test_logging_has_one_style() -> None:
    problems = [p for path in sources() for p in logging_problems(path)]
    assert problems == [], "\n".join(problems)


def test_modules_and_functions_stay_small() -> None:
    problems = [p for path in sources() for p in size_problems(path)]
    print("\n".join(problems))
    assert problems == [], "\n".join(problems)


def test_allow_list_has_no_stale_entries() -> None:
    """An entry that is no longer over the limit is removed, so the list only shrinks."""
    stale = []
    for key in ALLOWED:
        path = REPO / key.split("::")[0]
        if not path.exists():
            stale.append(key)
            continue
        over = size_problems_unfiltered(path)
        if key not in over:
            stale.append(key)
    assert stale == []


def size_problems_unfiltered(path: Path) -> set[str]:
    text = path.read_text()
    over = {rel(path)} if len(text.splitlines()) > MAX_MODULE_LINES else set()
    for node in ast.walk(ast.parse(text, str(path))):
        if (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and (node.end_lineno or node.lineno) - node.lineno + 1 > MAX_FUNCTION_LINES):
            over.add(f"{rel(path)}::{node.name}")
    return over


@pytest.mark.parametrize(("source", "problem"), [
    ('import logging\nlogging.getLogger("edge_agent.x")\n', "getLogger('edge_agent.x')"),
    ('log.warning(f"x {y}")\n', "message is not a constant"),
    ('log.info("x %s", y)\n', "%-args"),
    ('self.log.error("x %s" % y)\n', "message is not a constant"),
    ('log.log(20, "x %d", 3)\n', "%-args"),
    ('log.warning(kind, extra={"a": 1})\n', "message is not a constant"),
    ('T = {"a": "b"}\nlog.warning(T.get(k, f"{k}"))\n', "message is not a constant"),
])
def test_the_logging_check_catches(source: str, problem: str) -> None:
    found = logging_problems_in(source, "probe.py")
    assert len(found) == 1 and problem in found[0], found


def test_the_logging_check_accepts_the_one_style() -> None:
    source = ('import logging\nlog = logging.getLogger(__name__)\n'
              'M = {"a": "registry unreachable"}\n'
              'log.warning("x", extra={"driver": "d"})\nlog.warning(M.get(k, "other"))\n'
              'log.exception("y")\nlogging.getLogger("asyncua").setLevel(40)\n')
    assert logging_problems_in(source, "probe.py") == []
