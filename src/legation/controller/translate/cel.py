"""A parsed CEL expression (google.api.expr.v1alpha1.Expr), built node by node.

Envoy's RBAC takes a policy's `condition` only as a parsed AST (it has no CEL parser for RBAC
conditions), so the few expressions the native filters need are built here rather than parsed:
`call("_>_", call("size", ident("x")), const(5))` is `size(x) > 5`. `expression()` numbers
the nodes. Envoy evaluates no comprehensions (macros such as `exists`), so there are none here.
"""

from __future__ import annotations

import itertools

from google.api.expr.v1alpha1.syntax_pb2 import Constant, Expr

__all__ = [
    "Expr",
    "all_of",
    "any_of",
    "call",
    "const",
    "expression",
    "ident",
    "index",
    "member",
    "negate",
    "select",
]


def ident(name: str) -> Expr:
    return Expr(ident_expr=Expr.Ident(name=name))


def const(value: str | int | float | bool) -> Expr:
    if isinstance(value, bool):
        return Expr(const_expr=Constant(bool_value=value))
    if isinstance(value, int):
        return Expr(const_expr=Constant(int64_value=value))
    if isinstance(value, float):
        return Expr(const_expr=Constant(double_value=value))
    return Expr(const_expr=Constant(string_value=value))


def select(operand: Expr, field: str, *, test_only: bool = False) -> Expr:
    """`operand.field`; with test_only, `has(operand.field)`."""
    return Expr(select_expr=Expr.Select(operand=operand, field=field, test_only=test_only))


def index(operand: Expr, key: Expr | str) -> Expr:
    """`operand[key]`."""
    return call("_[_]", operand, const(key) if isinstance(key, str) else key)


def call(function: str, *args: Expr) -> Expr:
    return Expr(call_expr=Expr.Call(function=function, args=list(args)))


def member(target: Expr, function: str, *args: Expr) -> Expr:
    """`target.function(args)`, e.g. `s.startsWith('x')`."""
    return Expr(call_expr=Expr.Call(target=target, function=function, args=list(args)))


def negate(operand: Expr) -> Expr:
    return call("!_", operand)


def all_of(*operands: Expr) -> Expr:
    return _fold("_&&_", operands)


def any_of(*operands: Expr) -> Expr:
    return _fold("_||_", operands)


def _fold(function: str, operands: tuple[Expr, ...]) -> Expr:
    expr = operands[0]
    for operand in operands[1:]:
        expr = call(function, expr, operand)
    return expr


def expression(root: Expr) -> Expr:
    """A copy of `root` with every node numbered (1, 2, … in pre-order)."""
    out = Expr()
    out.CopyFrom(root)
    counter = itertools.count(1)
    _number(out, counter)
    return out


def _number(node: Expr, counter: itertools.count[int]) -> None:
    node.id = next(counter)
    kind = node.WhichOneof("expr_kind")
    if kind == "select_expr":
        _number(node.select_expr.operand, counter)
    elif kind == "call_expr":
        if node.call_expr.HasField("target"):
            _number(node.call_expr.target, counter)
        for arg in node.call_expr.args:
            _number(arg, counter)
