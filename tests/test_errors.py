"""Every expected failure is declared in errors.py with a kind, and the daemon answers each kind with one code."""

import ast
import inspect
from pathlib import Path

import grpc

from neeko_npc import errors
from neeko_npc.server.service import STATUS

PKG = Path(__file__).resolve().parent.parent / "neeko_npc"
ERROR_NAMES = {name for name, obj in vars(errors).items() if inspect.isclass(obj) and issubclass(obj, errors.NeekoError)}


def errors_declared_outside(source: str) -> list[str]:
    """Classes in ``source`` that subclass one of errors.py's: each would be an error outside the taxonomy."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
            if bases & ERROR_NAMES:
                found.append(node.name)
    return found


def test_every_error_class_lives_in_errors_py():
    bad = [f"{p.relative_to(PKG)}: {name}" for p in PKG.rglob("*.py") if p.name != "errors.py"
           for name in errors_declared_outside(p.read_text())]
    assert not bad, bad
    # and the check has teeth
    assert errors_declared_outside("class Oops(errors.PoolBusy):\n    pass\n") == ["Oops"]


def test_every_error_has_a_kind_and_every_kind_one_status_code():
    classes = [getattr(errors, n) for n in sorted(ERROR_NAMES)]
    assert {c.kind for c in classes} <= set(errors.Kind.ALL)
    assert set(STATUS) == set(errors.Kind.ALL)
    assert STATUS[errors.UnknownRole.kind] == grpc.StatusCode.NOT_FOUND
    assert STATUS[errors.ContextTooLarge.kind] == grpc.StatusCode.INVALID_ARGUMENT
    assert STATUS[errors.UpstreamBusy.kind] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert STATUS[errors.UpstreamUnavailable.kind] == grpc.StatusCode.UNAVAILABLE
    assert STATUS[errors.NonFiniteLogits.kind] == grpc.StatusCode.INTERNAL


def test_an_unknown_role_prints_its_message_unquoted():
    assert str(errors.UnknownRole("no NPC 'x'")) == "no NPC 'x'"  # a KeyError would print it in quotes
