"""segstream's public names are declared three times (the lazy loader's ``_EXPORTS``, ``__all__``,
the imports type checkers read): read from the source, the three name the same things."""

from __future__ import annotations

import ast
from pathlib import Path

INIT = Path(__file__).resolve().parents[1] / "segstream" / "__init__.py"


def _module_level() -> list[ast.stmt]:
    return ast.parse(INIT.read_text()).body


def _assigned(name: str) -> ast.expr:
    (value,) = [s.value for s in _module_level() if isinstance(s, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == name for t in s.targets)]
    return value


def _type_checking_block() -> ast.If:
    (block,) = [s for s in _module_level() if isinstance(s, ast.If) and isinstance(s.test, ast.Name)
                and s.test.id == "TYPE_CHECKING"]
    return block


def test_all_is_a_literal_list_of_names_a_type_checker_can_read():
    listed = _assigned("__all__")
    assert isinstance(listed, ast.List), "mypy and pyright read __all__ only when it is written out"
    assert all(isinstance(item, ast.Constant) and isinstance(item.value, str) for item in listed.elts)
    names = [item.value for item in listed.elts]
    assert len(names) == len(set(names))


def test_all_exports_and_type_checking_imports_name_the_same_things():
    exports = ast.literal_eval(_assigned("_EXPORTS"))
    listed = set(ast.literal_eval(_assigned("__all__"))) - {"__version__"}
    imported = {}
    for statement in _type_checking_block().body:
        assert isinstance(statement, ast.ImportFrom)
        for alias in statement.names:
            assert alias.asname in (None, alias.name)
            imported[alias.name] = statement.module
    assert sorted(listed ^ set(exports)) == [], "__all__ and _EXPORTS differ"
    assert imported == exports, "the TYPE_CHECKING imports and _EXPORTS differ (a name, or its module)"
    assert len(exports) > 50  # read the real lists, not empty ones


def test_the_lazy_loader_is_hidden_from_type_checkers():
    # a module-level __getattr__ -> Any would let a type checker accept any misspelt segstream.Name
    top = {s.name for s in _module_level() if isinstance(s, ast.FunctionDef)}
    assert "__getattr__" not in top
    (hidden,) = [s for s in _module_level() if isinstance(s, ast.If) and isinstance(s.test, ast.UnaryOp)
                 and isinstance(s.test.op, ast.Not) and getattr(s.test.operand, "id", None) == "TYPE_CHECKING"]
    assert "__getattr__" in {s.name for s in hidden.body if isinstance(s, ast.FunctionDef)}


def test_every_error_the_readme_lists_is_a_public_name():
    """README's table of errors is what a program catches: each is ``segstream.<Name>``
    (ResourceLimit, raised by ``run()`` when the system refuses a thread, was not)."""
    readme = (INIT.parents[1] / "README.md").read_text()
    table = readme[readme.index("| error | exit | raised when |"):].split("\n\n")[0]
    listed = {line.split("`")[1] for line in table.splitlines()[2:]}
    assert {"ResourceLimit", "IdleTimeout", "ConfigError"} <= listed
    assert listed <= set(ast.literal_eval(_assigned("_EXPORTS")))
