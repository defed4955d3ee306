"""The CEL builder (translate/cel.py): the shapes CEL's parser would give, every node numbered."""

from __future__ import annotations

from legation.controller.translate.cel import (
    Expr,
    all_of,
    call,
    const,
    expression,
    ident,
    index,
    member,
    select,
)


def ids(node: Expr) -> list[int]:
    out = [node.id]
    kind = node.WhichOneof("expr_kind")
    if kind == "select_expr":
        out += ids(node.select_expr.operand)
    elif kind == "call_expr":
        if node.call_expr.HasField("target"):
            out += ids(node.call_expr.target)
        for arg in node.call_expr.args:
            out += ids(arg)
    return out


def test_size_of_a_header_is_a_call_on_an_index_of_a_select() -> None:
    header = index(select(ident("request"), "headers"), "authorization")
    expr = expression(call("_>_", call("size", member(header, "trim")), const(8192)))
    gt = expr.call_expr
    assert gt.function == "_>_" and gt.args[1].const_expr.int64_value == 8192
    trim = gt.args[0].call_expr.args[0].call_expr
    assert trim.function == "trim" and trim.target.call_expr.function == "_[_]"
    assert trim.target.call_expr.args[1].const_expr.string_value == "authorization"
    assert ids(expr) == list(range(1, len(ids(expr)) + 1))  # unique, pre-order


def test_and_folds_left_and_leaves_the_input_unnumbered() -> None:
    a, b, c = ident("a"), ident("b"), ident("c")
    folded = all_of(a, b, c)
    assert folded.call_expr.function == "_&&_"
    assert folded.call_expr.args[0].call_expr.args[0].ident_expr.name == "a"
    numbered = expression(folded)
    assert folded.id == 0 and numbered.id == 1
    assert all_of(a) is a
