"""The multi grader: sub-graders combined by a formula, as OpenAI's `calculate_output`.

The formula is checked by walking its `ast` before anything runs: numbers, the sub-grader names, + - * / **,
unary minus and plus, parentheses, and the functions min, max, abs, sqrt, log, exp, floor, ceil. Anything else
(attributes, subscripts, comparisons, //, %, other calls, keyword arguments) is refused at load, naming the
unsupported piece. Number literals are made floats, so `10 ** 10 ** 10` overflows at once instead of computing a
huge integer. A formula that fails on a row (log(0), a division by zero) or gives a value that is not finite is a
GraderError naming the row. Sub-graders are named "<multi>.<key>" in errors; the formula uses the keys.
"""

from __future__ import annotations

import ast
import math

from qlora_kit.graders.base import Batch, Grader
from qlora_kit.graders.spec import Spec

FUNCTIONS = {"min": min, "max": max, "abs": abs, "sqrt": math.sqrt, "log": math.log, "exp": math.exp,
             "floor": math.floor, "ceil": math.ceil}
_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_UNARY = {ast.USub: "-", ast.UAdd: "+"}
_NAMED = {ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|",
          ast.BitXor: "^", ast.BitAnd: "&", ast.Not: "not", ast.Invert: "~"}
HELP = "+ - * / **, parentheses, numbers, the sub-grader names and " + ", ".join(FUNCTIONS)


def _piece(node: ast.AST) -> str:
    op = getattr(node, "op", None)
    if op is not None and type(op) not in _BINARY and type(op) not in _UNARY:
        return repr(_NAMED.get(type(op), type(op).__name__))
    return repr(ast.unparse(node))


def _check(node: ast.AST, names: set[str]) -> str | None:
    """The first unsupported piece of the expression, described, or None."""
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _check(node.left, names) or _check(node.right, names)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check(node.operand, names)
    if isinstance(node, ast.Constant):
        ok = isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
        return None if ok else f"{_piece(node)} is not a number"
    if isinstance(node, ast.Name):
        known = ", ".join(sorted(names))
        return None if node.id in names else f"unknown name {node.id!r} (the sub-graders are {known})"
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            return f"function {ast.unparse(node.func)!r} is not supported"
        if node.keywords or not node.args or any(isinstance(a, ast.Starred) for a in node.args):
            return f"{_piece(node)}: give the function plain arguments"
        return next(filter(None, (_check(a, names) for a in node.args)), None)
    return f"{_piece(node)} is not supported"


class _Floats(ast.NodeTransformer):
    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        return ast.copy_location(ast.Constant(float(node.value)), node)


def compile_formula(text: str, names: set[str]):
    """The formula compiled (after the check above); raises ValueError with the one-line reason."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"calculate_output {text!r} is not a formula") from None
    problem = _check(tree.body, names)
    if problem:
        raise ValueError(f"calculate_output {text!r}: {problem}; use {HELP}")
    return compile(ast.fix_missing_locations(_Floats().visit(tree)), "<calculate_output>", "eval")


class Multi(Grader):
    type = "multi"

    def __init__(self, spec: Spec):
        super().__init__(spec.name)
        spec.allow("graders", "calculate_output")
        subs = spec.get("graders", dict)
        if not subs:
            raise spec.error("'graders' is empty; give the sub-graders the formula combines")
        self.formula_text = spec.get("calculate_output")
        self.graders: dict[str, Grader] = {}
        try:
            for key, sub in subs.items():
                self.graders[key] = spec.build(sub, f"{spec.path}.graders.{key}", f"{spec.name}.{key}")
            try:
                self.formula = compile_formula(self.formula_text, {str(key) for key in subs})
            except ValueError as exc:
                raise spec.error(str(exc)) from None
        except BaseException:
            self.close()  # sub-graders built so far (python workers are started lazily, but be sure)
            raise

    def score(self, batch: Batch) -> list[float]:
        columns = {key: grader.score(batch) for key, grader in self.graders.items()}
        out = []
        for i in range(len(batch)):
            values = {key: column[i] for key, column in columns.items()}
            try:
                value = eval(self.formula, {"__builtins__": {}, **FUNCTIONS}, values)  # checked: see _check
            except (ArithmeticError, ValueError) as exc:
                raise self.fail_row(batch.wheres[i], f"calculate_output raised {type(exc).__name__}: {exc}") from None
            out.append(self.checked(value, batch.wheres[i]))
        return out

    def close(self) -> None:
        for grader in self.graders.values():
            grader.close()
