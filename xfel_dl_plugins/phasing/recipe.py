"""Recipe strings -> operator schedules.

Grammar (names case-insensitive, whitespace ignored)::

    schedule := step (('*' | ',') step)*          steps run left to right
    step     := atom ('**' INTEGER)?              repetition
    atom     := NAME ('(' [key '=' value (',' key '=' value)*] ')')? | '(' schedule ('|' schedule)* ')'

Names: ER, HIO, RAAR, DM, SW (alias SUP), OSS (oversampling smoothness, after HIO), GROW (dilate the
support), GUIDE (a guided restart, followed by SW). ``(A | B)`` runs both schedules from the same
iterates and keeps, per pattern, the one whose lead start has the lower BIC
(:class:`~.operators.Choice`). Example::

    (SW*HIO**50)**10 * RAAR(beta=0.8)**500 * ER**100

Errors raise :class:`RecipeError` with one line naming the offending token and its column.
"""

from __future__ import annotations

import re

from ..errors import StageError
from .operators import DM, ER, GROW, GUIDE, HIO, OSS, RAAR, SW, Choice, Operator, Repeat, Sequence

OPERATORS: dict[str, type[Operator]] = {"ER": ER, "HIO": HIO, "RAAR": RAAR, "DM": DM, "SW": SW, "SUP": SW,
                                        "OSS": OSS, "GUIDE": GUIDE, "GROW": GROW}

_TOKEN = re.compile(r"\s*(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<name>[A-Za-z_]\w*)|"
                    r"(?P<op>\*\*|[*(),=|]))")


class RecipeError(StageError):
    """A phasing recipe string is invalid."""


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            col = pos + len(text[pos:]) - len(text[pos:].lstrip())
            raise RecipeError(f"recipe {text!r}: unexpected character {text[col]!r} at column {col + 1}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    tokens.append(("end", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str, sw_defaults: dict | None = None):
        self.text = text
        self.sw_defaults = dict(sw_defaults or {})
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self):
        return self.tokens[self.i]

    def fail(self, expected: str):
        kind, value, col = self.peek()
        what = "end of recipe" if kind == "end" else f"token {value!r}"
        raise RecipeError(f"recipe {self.text!r}: unexpected {what} at column {col + 1} (expected {expected})")

    def take(self, value: str, expected: str):
        if self.peek()[1] != value or self.peek()[0] == "end":
            self.fail(expected)
        self.i += 1

    def schedule(self) -> Operator:
        steps = [self.step()]
        while self.peek()[1] in ("*", ","):
            self.i += 1
            steps.append(self.step())
        return steps[0] if len(steps) == 1 else Sequence(steps)

    def step(self) -> Operator:
        op = self.atom()
        if self.peek()[1] == "**":
            self.i += 1
            kind, value, _ = self.peek()
            if kind != "num" or not re.fullmatch(r"\d+", value):
                self.fail("a non-negative integer repeat count after '**'")
            self.i += 1
            op = Repeat(op, int(value))
        return op

    def atom(self) -> Operator:
        kind, value, col = self.peek()
        if value == "(" and kind == "op":
            self.i += 1
            branches = [self.schedule()]
            while self.peek()[1] == "|":
                self.i += 1
                branches.append(self.schedule())
            self.take(")", "')', '|' or '*'")
            if len(branches) == 1:
                return branches[0]
            try:
                return Choice(branches)
            except StageError as exc:
                raise RecipeError(f"recipe {self.text!r}: at column {col + 1}: {exc}") from None
        if kind != "name":
            self.fail(f"an operator name ({', '.join(OPERATORS)}) or '('")
        cls = OPERATORS.get(value.upper())
        if cls is None:
            raise RecipeError(f"recipe {self.text!r}: unknown operator {value!r} at column {col + 1} "
                              f"(known: {', '.join(OPERATORS)})")
        self.i += 1
        kwargs = self.arguments(value) if self.peek()[1] == "(" and self._is_call() else {}
        if cls is SW:
            kwargs = {**self.sw_defaults, **kwargs}
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise RecipeError(f"recipe {self.text!r}: bad parameters for {value} at column {col + 1}: {exc}") from None
        except StageError as exc:
            raise RecipeError(f"recipe {self.text!r}: {exc}") from None

    def _is_call(self) -> bool:
        """'NAME (' starts an argument list when followed by ')' or 'key ='."""
        nxt = self.tokens[self.i + 1]
        return nxt[1] == ")" or (nxt[0] == "name" and self.tokens[self.i + 2][1] == "=")

    def arguments(self, opname: str) -> dict:
        self.take("(", "'('")
        kwargs: dict = {}
        while self.peek()[1] != ")":
            kind, key, col = self.peek()
            if kind != "name":
                self.fail(f"a parameter name of {opname}")
            self.i += 1
            self.take("=", f"'=' after {key!r}")
            kind, value, _ = self.peek()
            if kind == "num":
                kwargs[key] = int(value) if re.fullmatch(r"[-+]?\d+", value) else float(value)
            elif kind == "name":
                kwargs[key] = {"true": True, "false": False}.get(value.lower(), value.lower())
            else:
                self.fail(f"a value for {key!r}")
            self.i += 1
            if self.peek()[1] == ",":
                self.i += 1
            elif self.peek()[1] != ")":
                self.fail("',' or ')'")
        self.i += 1
        return kwargs


def _guides_followed_by_sw(op: Operator) -> bool:
    """Whether every GUIDE of the schedule is followed by SW as it runs, a repeated block's end
    followed by its own start too (``(HIO**5 * GUIDE)**2 * SW * ER`` is not)."""
    steps = op.steps()
    return (all(not isinstance(step, GUIDE) or isinstance(following, SW)
                for step, following in zip(steps, steps[1:] + [None]))
            and all(isinstance(block[0], SW) for block in _repeated_blocks_ending_in_guide(op)))


def _repeated_blocks_ending_in_guide(op: Operator) -> list:
    """The steps of every block repeated more than once whose last step is a GUIDE."""
    children = op.ops if isinstance(op, Sequence) else [op.op] if isinstance(op, Repeat) else []
    found = [block for child in children for block in _repeated_blocks_ending_in_guide(child)]
    if isinstance(op, Repeat) and op.n > 1 and isinstance(op.steps()[-1], GUIDE):
        found.append(op.steps())
    return found


def parse_recipe(text: str, sw_defaults: dict | None = None) -> Operator:
    """Parse a recipe string into an operator schedule (raises :class:`RecipeError`).

    ``sw_defaults`` gives SW parameters (threshold, method, sigma, sigma_end, decay, force_shrink)
    used where the recipe's SW steps do not set them.
    """
    if not isinstance(text, str) or not text.strip():
        raise RecipeError("recipe is empty: give e.g. '(SW*HIO**50)**10 * RAAR**500 * ER**100'")
    parser = _Parser(text, sw_defaults)
    op = parser.schedule()
    if parser.peek()[0] != "end":
        parser.fail("'*', ',' or end of recipe")
    if not _guides_followed_by_sw(op):
        raise RecipeError(f"recipe {text!r}: GUIDE must be followed by SW (it leaves the support the whole array)")
    if op.n_iterations == 0:
        raise RecipeError(f"recipe {text!r} performs no iteration (add ER, HIO, RAAR or DM)")
    return op
