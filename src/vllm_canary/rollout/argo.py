"""Argo Rollouts' measurement rules, to check the chart's AnalysisTemplate offline.

* `evaluate_result`: argo-rollouts utils/evaluate/evaluate.go `EvaluateResult`: a condition
  that cannot be evaluated is Error; the failure condition wins; neither met is Inconclusive;
  with only a success condition, "not met" is Failed.
* `assess`: analysis/analysis.go `assessMetricStatus` for a finished list of measurements
  (failureLimit, inconclusiveLimit, consecutiveErrorLimit default 4, then count reached =
  Successful: so an inconclusiveLimit >= count lets a run with no data pass).
* `evaluate`: the subset of github.com/expr-lang/expr (v1.17, what Argo compiles conditions
  with, `expr.Compile(cond, expr.Env(env))` then `expr.Run`) that conditions use: literals
  (int, float, string, bool, nil, arrays), comments, `! not - +`, `** ^ * / % + -`,
  comparisons (chained, as expr allows `1 < 2 < 3`), `== !=`, `in`/`not in`, `contains`,
  `startsWith`, `endsWith`, `&& and || or` (short-circuit), `?:`, `??`, indexing (negative
  from the end), calls of `len` and of Argo's env functions (`isNaN`, `isInf`, `asInt`,
  `asFloat`, `isNil`, `default`). As in expr, the whole expression is type-checked against
  the env before it runs, so a type mismatch in a branch that would not run is still an
  error, and `/` always yields a float. Precedence and associativity are expr's
  (parser/operator/operator.go).

Why not a package: PyPI's enchanter-golem wraps expr v1.17.8, but it takes no list
variables and no Python functions (so neither `result` as a vector nor `isNaN`), and its
`1 / 2` is 0 where expr's runtime.Divide returns 0.5. On the ten scalar expressions tried
(chained comparisons, `-2 ** 2`, `%`, `^`, ternaries, `in`, `len` of runes) it agreed with
this module.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class ExprError(Exception):
    """The condition does not compile or fails at run time (Argo: measurement Error)."""


class FloatList(list):  # type: ignore[type-arg]
    """A Go []float64 (the Prometheus provider's vector `result`): typed even when empty."""


BINARY = {"??": 500, "**": 100, "^": 100, "*": 60, "/": 60, "%": 60, "+": 30, "-": 30,
          "==": 20, "!=": 20, "<": 20, ">": 20, "<=": 20, ">=": 20, "in": 20, "contains": 20,
          "startsWith": 20, "endsWith": 20, "not in": 20, "and": 15, "&&": 15, "or": 10,
          "||": 10}
RIGHT = {"**", "^"}
COMPARE = {"<", ">", "<=", ">="}
UNARY = {"not": 50, "!": 50, "-": 90, "+": 90}
TOKEN = re.compile(r"""
    (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<num>0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|(?:\d[\d_]*)?\.\d+(?:[eE][-+]?\d+)?
            |\d[\d_]*(?:[eE][-+]?\d+)?)
  | (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<name>[A-Za-z_$][A-Za-z0-9_]*)
  | (?P<op>\*\*|==|!=|<=|>=|&&|\|\||\?\?|[-+*/%^<>!()\[\],?:])
""", re.X | re.S)


@dataclass
class Node:
    kind: str  # lit, name, unary, binary, cond, index, call, array
    value: Any = None
    args: tuple[Node, ...] = ()


def _tokens(src: str) -> list[tuple[str, Any]]:
    out, pos = [], 0
    while pos < len(src):
        m = TOKEN.match(src, pos)
        if not m:
            raise ExprError(f"unexpected token {src[pos]!r} (1:{pos + 1})")
        pos = m.end()
        kind, text = m.lastgroup, m.group()
        if kind == "ws":
            continue
        if kind == "num":
            t = text.replace("_", "")
            if t[:2].lower() in ("0x", "0o", "0b"):
                out.append(("lit", int(t, 0)))
            else:
                out.append(("lit", float(t) if any(c in t for c in ".eE") else int(t)))
        elif kind == "str":
            body = text[1:-1]
            out.append(("lit", body if text[0] == "`" else
                        body.encode("latin-1", "backslashreplace").decode("unicode_escape")))
        elif kind == "name" and text in ("true", "false"):
            out.append(("lit", text == "true"))
        elif kind == "name" and text == "nil":
            out.append(("lit", None))
        elif kind == "name" and text in ("and", "or", "not", "in", "contains", "startsWith",
                                         "endsWith"):
            out.append(("op", text))
        else:
            out.append((kind or "op", text))
    return [*out, ("end", None)]


class _Parser:
    def __init__(self, src: str) -> None:
        self.toks, self.i = _tokens(src), 0

    def peek(self) -> tuple[str, Any]:
        return self.toks[self.i]

    def take(self, want: str | None = None) -> tuple[str, Any]:
        tok = self.toks[self.i]
        if want is not None and tok != ("op", want):
            raise ExprError(f"unexpected token {tok[1]!r}, expected {want!r}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.expression()
        if self.peek()[0] != "end":
            raise ExprError(f"unexpected token {self.peek()[1]!r}")
        return node

    def expression(self, prec: int = 0) -> Node:
        left = self.unary()
        chained: Node | None = None  # the right operand of a comparison just parsed
        while True:
            kind, op = self.peek()
            if kind == "op" and op == "not" and self.toks[self.i + 1] == ("op", "in"):
                op = "not in"
            if kind != "op" or op not in BINARY or BINARY[op] < prec:
                break
            self.take()
            if op == "not in":
                self.take("in")
            p = BINARY[op]
            right = self.expression(p if op in RIGHT else p + 1)
            if op in COMPARE and chained is not None:  # 1 < 2 < 3: (1 < 2) && (2 < 3)
                left = Node("binary", "&&", (left, Node("binary", op, (chained, right))))
            else:
                left = Node("binary", op, (left, right))
            chained = right if op in COMPARE else None
        if prec == 0 and self.peek() == ("op", "?"):
            self.take()
            yes = self.expression()
            self.take(":")
            return Node("cond", None, (left, yes, self.expression()))
        return left

    def unary(self) -> Node:
        kind, op = self.peek()
        if kind == "op" and op in UNARY:
            self.take()
            return self.postfix(Node("unary", op, (self.expression(UNARY[op]),)))
        return self.postfix(self.primary())

    def primary(self) -> Node:
        kind, val = self.take()
        if kind == "lit":
            return Node("lit", val)
        if kind == "name":
            if self.peek() == ("op", "("):
                self.take()
                return Node("call", val, self.items(")"))
            return Node("name", val)
        if (kind, val) == ("op", "("):
            node = self.expression()
            self.take(")")
            return node
        if (kind, val) == ("op", "["):
            return Node("array", None, self.items("]"))
        raise ExprError(f"unexpected token {val!r}")

    def items(self, close: str) -> tuple[Node, ...]:
        """Comma-separated expressions up to and including `close` (call arguments, arrays)."""
        out = []
        while self.peek() != ("op", close):
            out.append(self.expression())
            if self.peek() == ("op", ","):
                self.take()
        self.take(close)
        return tuple(out)

    def postfix(self, node: Node) -> Node:
        while self.peek() == ("op", "["):
            self.take()
            index = self.expression()
            self.take("]")
            node = Node("index", None, (node, index))
        return node


# ---- types (expr's checker, for what conditions use) ---------------------------------------

def _type(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, FloatList):
        return "[]float"
    if isinstance(value, list):
        return "[]any"
    if callable(value):
        return "func"
    return "any"


NUMBER = {"int", "float"}
FUNCS: dict[str, tuple[tuple[str, ...], str]] = {  # name -> (argument types, result type)
    "isNaN": (("number",), "bool"), "isInf": (("number",), "bool"), "asInt": (("any",), "int"),
    "asFloat": (("any",), "float"), "isNil": (("any",), "bool"),
    "default": (("any", "any"), "any"), "len": (("any",), "int")}


def _fits(t: str, want: str) -> bool:
    return want == "any" or t == "any" or t == want or (want == "number" and t in NUMBER)


def _check(node: Node, env: dict[str, Any]) -> str:
    k, a = node.kind, node.args
    if k == "lit":
        return _type(node.value)
    if k == "array":
        for x in a:
            _check(x, env)
        return "[]any"
    if k == "name":
        if node.value not in env:
            raise ExprError(f"unknown name {node.value}")
        return _type(env[node.value])
    if k == "call":
        if node.value not in FUNCS or (node.value != "len" and node.value not in env):
            raise ExprError(f"unknown name {node.value}")
        params, out = FUNCS[node.value]
        if len(a) != len(params):
            raise ExprError(f"invalid number of arguments for {node.value}")
        for x, want in zip(a, params, strict=True):
            t = _check(x, env)
            if not _fits(t, want) or (node.value == "len" and t in NUMBER | {"bool", "nil"}):
                raise ExprError(f"cannot use {t} as argument of {node.value}")
        return out
    if k == "index":
        t, i = _check(a[0], env), _check(a[1], env)
        if t not in ("[]float", "[]any", "string", "any") or not _fits(i, "int"):
            raise ExprError(f"cannot index {t} with {i}")
        return {"[]float": "float", "string": "string"}.get(t, "any")
    if k == "cond":
        if not _fits(_check(a[0], env), "bool"):
            raise ExprError("non-bool expression in ternary condition")
        t1, t2 = _check(a[1], env), _check(a[2], env)
        return t1 if t1 == t2 else "any"
    if k == "unary":
        t = _check(a[0], env)
        want = "bool" if node.value in ("!", "not") else "number"
        if not _fits(t, want):
            raise ExprError(f"invalid operation: {node.value} ({t})")
        return t
    op, lt, rt = node.value, _check(a[0], env), _check(a[1], env)
    if op in ("&&", "and", "||", "or"):
        if not (_fits(lt, "bool") and _fits(rt, "bool")):
            raise ExprError(f"invalid operation: {op} (mismatched types {lt} and {rt})")
        return "bool"
    if op in ("==", "!="):
        if "any" in (lt, rt) or "nil" in (lt, rt) or lt == rt or {lt, rt} <= NUMBER or \
                {lt, rt} <= {"[]float", "[]any"}:
            return "bool"
        raise ExprError(f"invalid operation: {op} (mismatched types {lt} and {rt})")
    if op == "??":
        return lt if lt == rt else "any"
    if op in ("in", "not in"):
        if rt not in ("[]float", "[]any", "any"):
            raise ExprError(f"invalid operation: {op} (mismatched types {lt} and {rt})")
        return "bool"
    if op in ("contains", "startsWith", "endsWith"):
        if not (_fits(lt, "string") and _fits(rt, "string")):
            raise ExprError(f"invalid operation: {op} (mismatched types {lt} and {rt})")
        return "bool"
    ok_num = _fits(lt, "number") and _fits(rt, "number")
    if op in COMPARE:
        if ok_num or (_fits(lt, "string") and _fits(rt, "string")):
            return "bool"
    elif op == "+" and lt == rt == "string":
        return "string"
    elif ok_num:
        if op in ("/", "**", "^"):
            return "float"
        if op == "%":
            if _fits(lt, "int") and _fits(rt, "int"):
                return "int"
        else:
            return "int" if lt == rt == "int" else ("float" if "float" in (lt, rt) else "any")
    raise ExprError(f"invalid operation: {op} (mismatched types {lt} and {rt})")


# ---- evaluation ----------------------------------------------------------------------------

def _equal(x: Any, y: Any) -> bool:
    if isinstance(x, bool) or isinstance(y, bool):
        return type(x) is type(y) and x == y
    if isinstance(x, int | float) and isinstance(y, int | float):
        return bool(x == y)
    return type(x) is type(y) and x == y if x is not None and y is not None else x is y


def _run(node: Node, env: dict[str, Any]) -> Any:
    k, a = node.kind, node.args
    if k == "lit":
        return node.value
    if k == "array":
        return [_run(x, env) for x in a]
    if k == "name":
        return env[node.value]
    if k == "call":
        args = [_run(x, env) for x in a]
        if node.value == "len":
            if not isinstance(args[0], list | str):
                raise ExprError(f"invalid argument for len (type {_type(args[0])})")
            return len(args[0])
        fn: Callable[..., Any] = env[node.value]
        try:
            return fn(*args)
        except (TypeError, ValueError) as exc:
            raise ExprError(str(exc)) from None
    if k == "index":
        seq, i = _run(a[0], env), _run(a[1], env)
        if seq is None:
            raise ExprError("cannot fetch from nil")
        j = i + len(seq) if i < 0 else i
        if not 0 <= j < len(seq):
            raise ExprError(f"index out of range: {i} (array length is {len(seq)})")
        return seq[j]
    if k == "cond":
        return _run(a[1], env) if _run(a[0], env) else _run(a[2], env)
    if k == "unary":
        v = _run(a[0], env)
        return (not v) if node.value in ("!", "not") else (-v if node.value == "-" else v)
    op = node.value
    if op in ("&&", "and"):
        return bool(_run(a[0], env)) and bool(_run(a[1], env))
    if op in ("||", "or"):
        return bool(_run(a[0], env)) or bool(_run(a[1], env))
    if op == "??":
        left = _run(a[0], env)
        return left if left is not None else _run(a[1], env)
    x, y = _run(a[0], env), _run(a[1], env)
    if op == "==":
        return _equal(x, y)
    if op == "!=":
        return not _equal(x, y)
    if op in ("in", "not in"):
        found = y is not None and any(_equal(x, item) for item in y)
        return found if op == "in" else not found
    if op == "contains":
        return y in x
    if op == "startsWith":
        return bool(x.startswith(y))
    if op == "endsWith":
        return bool(x.endswith(y))
    if None in (x, y):
        raise ExprError(f"invalid operation: {op} with nil")
    if op == "<":
        return x < y
    if op == ">":
        return x > y
    if op == "<=":
        return x <= y
    if op == ">=":
        return x >= y
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if op == "/":
        fx, fy = float(x), float(y)
        if fy == 0:
            return math.nan if fx == 0 or math.isnan(fx) else math.copysign(math.inf, fx) * \
                math.copysign(1.0, fy)
        return fx / fy
    if op == "%":
        if y == 0:
            raise ExprError("integer divide by zero")
        return int(math.fmod(x, y))  # Go's % truncates toward zero
    if op in ("**", "^"):
        return float(x) ** float(y)
    raise ExprError(f"unknown operator {op}")


def evaluate(condition: str, env: dict[str, Any]) -> Any:
    """Compile (type-check against `env`) and run one expression; raises ExprError."""
    tree = _Parser(condition).parse()
    _check(tree, env)
    return _run(tree, env)


def argo_env(result: Any) -> dict[str, Any]:
    """The env Argo's EvalCondition gives a condition (utils/evaluate/evaluate.go)."""
    def as_float(v: Any) -> float:
        return float(v)

    def as_int(v: Any) -> int:
        return int(float(v)) if not isinstance(v, str) else int(v)

    return {"result": result, "asInt": as_int, "asFloat": as_float, "isNaN": math.isnan,
            "isInf": math.isinf, "isNil": lambda _: result is None,
            "default": lambda _, d: d if result is None else result}


def eval_condition(result: Any, condition: str) -> bool:
    """Argo's EvalCondition: the condition must yield a bool."""
    out = evaluate(condition, argo_env(result))
    if not isinstance(out, bool):
        raise ExprError(f"expected bool, but got {_type(out)}")
    return out


def evaluate_result(result: Any, success: str = "", failure: str = "") -> str:
    """Argo's EvaluateResult: Successful, Failed, Inconclusive or Error."""
    try:
        ok = eval_condition(result, success) if success else False
        bad = eval_condition(result, failure) if failure else False
    except ExprError:
        return "Error"
    if not success and not failure:
        return "Successful"
    if success and not failure:
        bad = not ok
    if failure and not success:
        ok = not bad
    if bad:
        return "Failed"
    return "Successful" if ok else "Inconclusive"


def assess(phases: list[str], count: int, failure_limit: int = 0,
           inconclusive_limit: int = 0, consecutive_error_limit: int = 4) -> str:
    """Argo's assessMetricStatus after these measurements (no consecutiveSuccessLimit):
    Failed, Inconclusive, Error, Successful (count reached) or Running."""
    failed = phases.count("Failed")
    inconclusive = phases.count("Inconclusive")
    consecutive_errors = 0
    for p in reversed(phases):
        if p != "Error":
            break
        consecutive_errors += 1
    phase = ""
    if failure_limit >= 0 and failed > failure_limit:
        phase = "Failed"
    if inconclusive > inconclusive_limit:
        phase = "Inconclusive"
    if consecutive_errors > consecutive_error_limit:
        phase = "Error"
    if phase:
        return phase
    return "Successful" if len(phases) >= count else "Running"
