r"""What text the model sees: multi-field passage templates and the long-document policy.

A search hit has fields (``title``, ``text``, ...) and a cross-encoder has a
fixed window (512 tokens for most), shared between the query and the passage.
This module decides, with pure functions and no model code, how a hit becomes
one passage string (:func:`render_passage` for any :data:`TemplateLike`: a
:class:`PassageTemplate`, a format string or a callable; every front-end, the
proxy included, renders through it) and which tokens of a long passage are
scored (:func:`longest_first` for ``truncate``, :func:`plan_windows` for
``chunk``).

Binding a tokenizer to a template:
    A template's per-field budgets are in tokens of the model that scores the
    passage, so the template needs that model's tokenizer. It only needs one
    operation, ``truncate(text, max_tokens) -> str`` (the :class:`TokenTruncator`
    protocol), which :meth:`CrossEncoderScorer.bind_template
    <secondpass.pipeline.scorer.CrossEncoderScorer.bind_template>` provides
    without loading the model until the first render. A template with no
    tokenizer counts whitespace-separated words instead, which is a fair
    approximation (English WordPiece runs at about 1.3 tokens per word).

Example:
    >>> template = PassageTemplate(fields=("title", "text"), budgets={"title": 4})
    >>> template.render({"title": "A very long title that goes on", "text": "Body."})
    'A very long title\nBody.'
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, TypeAlias, runtime_checkable

from secondpass.errors import ConfigurationError
from secondpass.types import Hit

LongDocumentPolicy = Literal["truncate", "chunk"]
"""``truncate``: keep the head of the passage (tail cut); ``chunk``: score overlapping windows."""

_WORD = re.compile(r"\S+")


@runtime_checkable
class TokenTruncator(Protocol):
    """Cuts a text to its first ``max_tokens`` tokens, returning a prefix of the original string."""

    def truncate(self, text: str, max_tokens: int) -> str:
        """Return the longest prefix of ``text`` that holds at most ``max_tokens`` tokens."""
        ...


class WhitespaceTruncator:
    """Counts whitespace-separated words as tokens; the fallback when no tokenizer is bound."""

    def truncate(self, text: str, max_tokens: int) -> str:
        """Return the prefix of ``text`` that ends after its ``max_tokens``-th word."""
        if max_tokens <= 0:
            return ""
        for count, match in enumerate(_WORD.finditer(text), start=1):
            if count == max_tokens:
                return text[: match.end()]
        return text


@dataclass(frozen=True, slots=True)
class PassageTemplate:
    r"""Builds the passage the model scores from a hit's fields.

    Fields are taken in ``fields`` order; a missing or blank field is left out
    (so a hit with no text at all renders as ``""`` and is never sent to the
    model). Each field named in ``budgets`` is cut to that many tokens of the
    bound ``tokenizer`` before joining, so a long title cannot crowd out the
    body. ``labels=True`` prefixes each part with ``"<field>: "``, which helps
    some models tell the title from the body.

    The facade calls ``template.render(hit.fields)``. Bind the scoring model's
    tokenizer with ``scorer.bind_template(template)`` (lazy: nothing loads
    until the first render), or pass any :class:`TokenTruncator` as
    ``tokenizer``; without one, budgets count words.

    Example:
        >>> PassageTemplate(fields=("title", "text"), labels=True).render(
        ...     {"title": "Cats", "text": "They purr."})
        'title: Cats\ntext: They purr.'
    """

    fields: tuple[str, ...] = ("title", "text")
    budgets: Mapping[str, int] = field(default_factory=dict)
    separator: str = "\n"
    labels: bool = False
    tokenizer: TokenTruncator | None = None

    def __post_init__(self) -> None:
        if isinstance(self.fields, str):
            # A bare string would iterate as characters: accept it as one field name.
            object.__setattr__(self, "fields", (self.fields,))
        else:
            object.__setattr__(self, "fields", tuple(self.fields))
        if not self.fields:
            msg = "PassageTemplate.fields must name at least one field"
            raise ConfigurationError(msg)
        unknown = sorted(set(self.budgets) - set(self.fields))
        if unknown:
            msg = f"PassageTemplate.budgets names fields that are not in fields: {unknown}"
            raise ConfigurationError(msg)
        for name, budget in self.budgets.items():
            if not isinstance(budget, int) or budget < 1:
                msg = f"PassageTemplate budget for {name!r} must be a positive integer of tokens, got {budget!r}"
                raise ConfigurationError(msg)

    def bind(self, tokenizer: TokenTruncator) -> PassageTemplate:
        """Return a copy of this template that counts budgets with ``tokenizer``."""
        return replace(self, tokenizer=tokenizer)

    def render(self, fields: Mapping[str, str]) -> str:
        """Return the passage text for one hit's ``fields`` (``""`` when every field is blank)."""
        truncator = self.tokenizer if self.tokenizer is not None else WhitespaceTruncator()
        parts: list[str] = []
        for name in self.fields:
            value = fields.get(name)
            if value is None:
                continue
            text = str(value).strip()
            if not text:
                continue
            budget = self.budgets.get(name)
            if budget is not None:
                text = truncator.truncate(text, budget).rstrip()
            if text:
                parts.append(f"{name}: {text}" if self.labels else text)
        return self.separator.join(parts)


@dataclass(frozen=True, slots=True)
class PassagePlan:
    """Which tokens of one (query, passage) pair are scored.

    ``query_keep`` is the number of leading query tokens kept; ``windows`` are
    ``(start, end)`` token ranges of the passage, one per forward pass (one
    window unless the policy is ``chunk`` and the passage does not fit);
    ``truncated`` is true when some passage tokens are in no window.
    """

    query_keep: int
    windows: tuple[tuple[int, int], ...]
    truncated: bool


def longest_first(first: int, second: int, budget: int) -> tuple[int, int]:
    """Lengths to keep of a pair so that together they fit ``budget`` tokens.

    The same rule as Hugging Face tokenizers' ``longest_first`` truncation
    (trim the longer side first; when both are long, split the budget in half,
    the odd token going to the second), so that a ``truncate`` passage is
    scored on exactly the tokens ``CrossEncoder.predict`` would use.

    Example:
        >>> longest_first(10, 1000, 509)
        (10, 499)
    """
    if budget < 0:
        msg = f"token budget must not be negative, got {budget}"
        raise ConfigurationError(msg)
    if first + second <= budget:
        return first, second
    swapped = first > second
    short, long_ = (second, first) if swapped else (first, second)
    if short > budget:
        long_ = short
    else:
        long_ = max(short, budget - short)
    if short + long_ > budget:
        short = budget // 2
        long_ = short + budget % 2
    return (long_, short) if swapped else (short, long_)


def plan_windows(
    query_tokens: int,
    passage_tokens: int,
    budget: int,
    *,
    policy: LongDocumentPolicy = "truncate",
    max_chunks: int = 8,
    overlap: int = 64,
) -> PassagePlan:
    """Plan how a passage of ``passage_tokens`` is scored beside a query in ``budget`` tokens.

    ``budget`` is the model's window minus its special tokens. Under
    ``truncate`` (and under ``chunk`` when the pair fits) this is exactly
    :func:`longest_first`. Under ``chunk`` a passage that does not fit is cut
    into windows of equal size that overlap by ``overlap`` tokens, each scored
    beside the (possibly shortened, to at most half the budget) query; at most
    ``max_chunks`` windows are kept, from the start of the passage.

    Example:
        >>> plan_windows(10, 1000, 509, policy="chunk", max_chunks=3, overlap=50).windows
        ((0, 499), (449, 948), (898, 1000))
    """
    if policy not in ("truncate", "chunk"):
        msg = f"long_document policy must be 'truncate' or 'chunk', got {policy!r}"
        raise ConfigurationError(msg)
    if max_chunks < 1:
        msg = f"max_chunks must be at least 1, got {max_chunks}"
        raise ConfigurationError(msg)
    if overlap < 0:
        msg = f"chunk overlap must not be negative, got {overlap}"
        raise ConfigurationError(msg)
    if policy == "truncate" or query_tokens + passage_tokens <= budget:
        keep_q, keep_p = longest_first(query_tokens, passage_tokens, budget)
        return PassagePlan(keep_q, ((0, keep_p),), keep_p < passage_tokens)
    keep_q = min(query_tokens, budget // 2)
    width = max(1, budget - keep_q)
    step = max(1, width - min(overlap, width // 2))
    windows: list[tuple[int, int]] = []
    start = 0
    while len(windows) < max_chunks:
        end = min(start + width, passage_tokens)
        windows.append((start, end))
        if end >= passage_tokens:
            break
        start += step
    return PassagePlan(keep_q, tuple(windows), windows[-1][1] < passage_tokens)


def is_blank(passage: str) -> bool:
    """True for an empty or whitespace-only passage, which is never sent to the model."""
    return not passage or passage.isspace()


def split_blank(passages: Sequence[str]) -> tuple[list[int], list[int]]:
    """Indices of passages to score and of blank passages, each in input order."""
    scored: list[int] = []
    blank: list[int] = []
    for index, passage in enumerate(passages):
        (blank if is_blank(passage) else scored).append(index)
    return scored, blank


TemplateLike: TypeAlias = PassageTemplate | str | Callable[[Hit], str]
"""How a hit becomes the passage the model reads.

A :class:`PassageTemplate` (field order, token budgets per field, labels)
renders ``hit.fields``; a string is a ``str.format`` template over
``hit.fields`` (``"{title}: {body}"``, a field the hit lacks renders as
``""``); a callable gets the hit and returns the text. ``None`` joins the
non-blank values of ``hit.fields`` with newlines, in the connector's order.
"""


class _BlankMissing(dict[str, str]):
    """Format mapping that renders a field the hit does not have as empty text."""

    def __missing__(self, key: str) -> str:
        return ""


def check_template(template: TemplateLike | None) -> None:
    """Reject string templates that do more than name fields.

    Attribute or index lookups (``{title.__class__}``) would let a template reach
    into Python objects; plain names are all a passage needs. Front-ends call
    this when they are configured, so a bad template fails at start-up rather
    than on the first request.
    """
    if template is None or callable(template) or isinstance(template, PassageTemplate):
        return
    if not isinstance(template, str):
        msg = "template must be a PassageTemplate, a str.format string, a callable(Hit) -> str, or None"
        raise ConfigurationError(msg)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        msg = f"template is not a valid format string: {exc}"
        raise ConfigurationError(msg) from exc
    for _, name, _, _ in parsed:
        if name is not None and not name.isidentifier():
            msg = f"template fields must be plain field names, got {{{name}}}"
            raise ConfigurationError(msg)


def render_passage(hit: Hit, template: TemplateLike | None = None) -> str:
    """Return the text the model scores for ``hit`` (see :data:`TemplateLike`).

    Example:
        >>> render_passage(Hit("d", "1", 1.0, 1, {"title": "Cats", "body": "purr"}), "{title}: {body}")
        'Cats: purr'
    """
    if template is None:
        return "\n".join(v.strip() for v in hit.fields.values() if v and v.strip())
    if isinstance(template, PassageTemplate):
        return template.render(hit.fields)
    if callable(template):
        return str(template(hit))
    return template.format_map(_BlankMissing(hit.fields)).strip()
