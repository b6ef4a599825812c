"""The yes/no questions the critic asks: the paper's dual query, its ablations, user templates.

A query template is a string with exactly one `{description}` slot, filled with the text prompt
of the shape being generated.
"""

from __future__ import annotations

import string
import unicodedata
from typing import Any, Iterable

from ..errors import InvalidInputError

DESCRIPTION_SLOT = "description"

# User text (descriptions, query templates) must not carry chat markup. The critic's tokenizer
# turns these strings into single structural tokens wherever they appear — closing the user turn,
# opening an assistant turn, or adding an image placeholder the processor then expands — so a
# description could rewrite the prompt's layout. They are REJECTED, not escaped:
# - an escape (e.g. a zero-width space inside the token) changes the text the VLM reads, so the
#   critic would silently judge something other than what the user wrote, and r would no longer
#   be reproducible from the description in the manifest;
# - the processor tokenizes the whole chat in one call (it must expand the image placeholders), so
#   there is no per-segment `split_special_tokens` to escape only the user's part;
# - no description of an object needs these strings: they come from a pasted chat log or an
#   injection attempt, and either way a clear message is more useful than a silent rewrite.
# Before any model loads, text is checked against Qwen2.5-VL's added vocabulary (the critic is always
# Qwen2.5-VL; the tiny tokenizer mirrors the real list); once a tokenizer is at hand,
# `check_plain_text` checks against that tokenizer's own added/special tokens and its processor's
# placeholders (which covers other families, e.g. the Gemma judge).

_INTRO = (
    "Carefully evaluate the provided images, which show multiple views of a single 3D object. "
    "Does the underlying 3D object, considering all views together, "
)
_CONTENT_CRITERION = "Content Match: The object corresponds to the description: {description}."
_GEOMETRY_CRITERION = (
    "Geometric Quality: Based on all views combined, the object appears geometrically sound and "
    "consistent. There are no visible signs of major flaws such as multiple faces on one part "
    "(Janus-faced issue), broken surfaces, intersecting geometry, or highly unrealistic polygonal "
    "facets when considering the object from these different perspectives."
)
_ANSWER_FORMAT = "Strictly respond with only 'Yes' or 'No'."

# The paper's dual query (§4.2), verbatim apart from the description.
DUAL_QUERY = (
    _INTRO
    + "meet all of the following criteria simultaneously?\n"
    + f"1. {_CONTENT_CRITERION}\n"
    + f"2. {_GEOMETRY_CRITERION}\n\n"
    + _ANSWER_FORMAT
)
# The ablations (paper §5.3) keep one criterion each. The paper does not print their wording; these
# keep the dual query's sentences and only drop the other criterion, so that a difference in r is
# due to the criterion and not to rephrasing.
CONTENT_QUERY = _INTRO + "meet the following criterion?\n" + f"{_CONTENT_CRITERION}\n\n" + _ANSWER_FORMAT
# The geometry-only query has no description slot: it judges the shape, not what it depicts.
GEOMETRY_QUERY = _INTRO + "meet the following criterion?\n" + f"{_GEOMETRY_CRITERION}\n\n" + _ANSWER_FORMAT

QUERY_TEMPLATES: dict[str, str] = {
    "dual": DUAL_QUERY,
    "content": CONTENT_QUERY,
    "geometry": GEOMETRY_QUERY,
}

# Reference-aware and tiled variants (`--critic-reference`, `--view-layout grid`). They change only
# what the question must say so that the images are read right — which image is the reference, and
# that one image holds all views — and keep every other sentence of the query above, so that a
# difference in r is due to what the critic sees, not to rephrasing.
_REFERENCE_LEAD = "The first image is the reference image: the picture the 3D object was generated from. "
_VIEWS_SEPARATE = "which show multiple views of a single 3D object"
_VIEWS_GRID = (
    "which shows multiple views of a single 3D object tiled in a grid, one view per cell, "
    "separated by thin black lines"
)
# With the reference, content means "the object in the picture, as described"; geometry gains the
# one geometric fact the picture gives: which parts the object has.
_REFERENCE_CONTENT_CRITERION = (
    "Content Match: The object is the one shown in the reference image and corresponds to the description: {description}."
)
_REFERENCE_GEOMETRY_CRITERION = (
    _GEOMETRY_CRITERION + " No part of the object that the reference image shows is missing or broken off."
)


def query_intro(*, reference: bool, layout: str) -> str:
    """The opening of a built-in query: which images the critic gets and how to read them.

    (reference=False, layout="separate") is the paper's opening, verbatim.
    """
    if layout not in ("separate", "grid"):
        raise InvalidInputError(f"layout must be 'separate' or 'grid', got {layout!r}.")
    views = _VIEWS_SEPARATE if layout == "separate" else _VIEWS_GRID
    if not reference:
        subject = "the provided images" if layout == "separate" else "the provided image"
        return f"Carefully evaluate {subject}, {views}. Does the underlying 3D object, considering all views together, "
    subject = "the images after it" if layout == "separate" else "the second image"
    return _REFERENCE_LEAD + f"Carefully evaluate {subject}, {views}. Does the underlying 3D object, considering all views together, "


def builtin_query(name: str, *, reference: bool = False, layout: str = "separate") -> str:
    """The built-in template `name` ('dual', 'content', 'geometry') for a critic with or without the reference image, views separate or tiled.

    With reference=False and layout="separate" this is `QUERY_TEMPLATES[name]` (the paper's text).
    """
    if name not in QUERY_TEMPLATES:
        raise InvalidInputError(f"Unknown built-in query {name!r}; use one of {sorted(QUERY_TEMPLATES)}.")
    content = _REFERENCE_CONTENT_CRITERION if reference else _CONTENT_CRITERION
    geometry = _REFERENCE_GEOMETRY_CRITERION if reference else _GEOMETRY_CRITERION
    intro = query_intro(reference=reference, layout=layout)
    if name == "dual":
        body = "meet all of the following criteria simultaneously?\n" + f"1. {content}\n" + f"2. {geometry}\n\n"
    else:
        body = "meet the following criterion?\n" + f"{content if name == 'content' else geometry}\n\n"
    return intro + body + _ANSWER_FORMAT


#: Every built-in template (all variants): the ones that may lack a `{description}` slot.
BUILTIN_TEMPLATES: frozenset[str] = frozenset(
    builtin_query(name, reference=reference, layout=layout)
    for name in QUERY_TEMPLATES
    for reference in (False, True)
    for layout in ("separate", "grid")
)


def qwen_markup_tokens() -> tuple[str, ...]:
    """Qwen2.5-VL's added vocabulary: every string its tokenizer reads as one structural token."""
    from .tokens import QWEN_ADDED_TOKENS, QWEN_SPECIAL_TOKENS

    return QWEN_SPECIAL_TOKENS + QWEN_ADDED_TOKENS


def markup_tokens(processor_or_tokenizer: Any) -> frozenset[str]:
    """Every string that `processor_or_tokenizer` turns into structure rather than text.

    That is the tokenizer's added and special tokens, plus the processor's placeholder strings
    (`image_token`, `video_token`, `boi_token`, ...) that it expands before tokenizing.
    """
    tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    found: set[str] = set()
    if hasattr(tokenizer, "get_added_vocab"):
        found.update(tokenizer.get_added_vocab())
    found.update(getattr(tokenizer, "all_special_tokens", ()))
    for owner in {id(processor_or_tokenizer): processor_or_tokenizer, id(tokenizer): tokenizer}.values():
        for name in ("image_token", "video_token", "audio_token", "boi_token", "eoi_token"):
            value = getattr(owner, name, None)
            if isinstance(value, str):
                found.add(value)
    # An empty or blank "token" would match every text; such entries are not markup.
    return frozenset(token for token in found if token.strip())


def check_plain_text(text: str, markup: Iterable[str], what: str) -> str:
    """Return `text` if it contains none of the `markup` strings; else raise InvalidInputError naming them.

    The text is also checked after Unicode NFC normalisation (what Qwen's tokenizer applies) so
    that a composed/decomposed spelling cannot slip a token through.
    """
    variants = {text, unicodedata.normalize("NFC", text)}
    hits = sorted({token for token in markup for variant in variants if token in variant})
    if hits:
        listed = ", ".join(repr(token) for token in hits)
        raise InvalidInputError(
            f"The {what} contains {listed}: the model's tokenizer reads {'this' if len(hits) == 1 else 'these'} as chat "
            "markup (special tokens that end the turn or insert images), not as text. Remove "
            f"{'it' if len(hits) == 1 else 'them'} from the {what}."
        )
    return text


# Text hygiene: one rule for every text a user hands the critic (descriptions and templates), applied
# here for the CLI, the Python API (VLMCritic, generate_mesh) and benchmark rows alike.
# Control characters are REFUSED, not normalised, for the reason markup is: what the critic reads must
# be what the user typed and what the manifest records. NUL, ESC, BEL, BS, DEL, ... are invisible or
# act on a terminal (ESC sequences can rewrite what a log shows), and a tokenizer turns them into
# byte tokens the critic never saw in training; silently dropping them would make r depend on text
# nobody can see. A description is one line: line breaks (\n, \r, U+2028/U+2029) and tabs are refused
# too, since a newline in the description would add a line of its own to the question's numbered
# criteria. A template may contain newlines and tabs (the built-in ones use newlines for layout).
#: Longest description accepted, in characters (checked before any tokenizer runs; docs/bad_inputs.md).
MAX_DESCRIPTION_CHARS = 1000
#: Longest description accepted, in tokens of the critic's tokenizer (checked where one is at hand).
MAX_DESCRIPTION_TOKENS = 512
#: Longest query template accepted, in characters.
MAX_TEMPLATE_CHARS = 4000
_LINE_BREAKS = {"\u2028", "\u2029"}


#: Invisible format characters that belong to ordinary text (Persian, Indic scripts, emoji sequences): accepted.
JOINERS = {"\u200c", "\u200d"}  # ZERO WIDTH NON-JOINER, ZERO WIDTH JOINER


def check_encoding(text: str, what: str) -> str:
    """Return `text` unless it holds bytes that were not valid UTF-8 (Python keeps them as lone surrogates,
    U+DC80..U+DCFF, in command-line arguments); then raise InvalidInputError naming the first byte."""
    for position, char in enumerate(text):
        if unicodedata.category(char) == "Cs":
            byte = f"0x{ord(char) - 0xDC00:02X}" if 0xDC80 <= ord(char) <= 0xDCFF else f"U+{ord(char):04X}"
            raise InvalidInputError(f"The {what} is not valid UTF-8 (byte {byte} at position {position}); give it as "
                                    "UTF-8 text (check the terminal's or the file's encoding).")
    return text


def check_text_hygiene(text: str, what: str, *, multiline: bool = False, max_chars: int | None = None) -> str:
    """Return `text` if it is plain text a user can see; else raise InvalidInputError naming the first problem.

    Refused: control characters (Unicode category Cc: NUL, BEL, BS, ESC, DEL, the C1 range, ...) with
    their position, and, unless `multiline`, tabs and line breaks too; invisible format characters
    (category Cf: direction overrides, zero-width spaces, ...; the joiners of JOINERS excepted), named;
    bytes that were not UTF-8; text longer than `max_chars`.
    The same rule serves the CLI, the Python API and benchmark rows (see the comment above for why
    refusing, not normalising).
    """
    if max_chars is not None and len(text) > max_chars:
        raise InvalidInputError(
            f"The {what} is {len(text):,} characters long; at most {max_chars:,} are accepted (a description of an "
            "object needs far fewer). Shorten it."
        )
    check_encoding(text, what)
    allowed = {"\n", "\t"} if multiline else set()
    for position, char in enumerate(text):
        if char in allowed:
            continue
        if unicodedata.category(char) == "Cf" and char not in JOINERS:
            raise InvalidInputError(
                f"The {what} contains the invisible format character U+{ord(char):04X} "
                f"{unicodedata.name(char, 'FORMAT CHARACTER')} at position {position}: direction overrides and other "
                f"invisible characters are not accepted in a {what} (the critic would read something other than what "
                "you see). Remove it."
            )
        if unicodedata.category(char) == "Cc" or char in _LINE_BREAKS:
            name = {"\n": "a line break", "\r": "a carriage return", "\t": "a tab"}.get(char, "a control character")
            kind = "line breaks, tabs and other control characters" if not multiline else "control characters"
            raise InvalidInputError(
                f"The {what} contains {name} ({char!r}, U+{ord(char):04X}) at position {position}: {kind} are not "
                f"accepted in a {what} (they are invisible, and the critic would read something other than what "
                "you see). Remove it."
            )
    return text


def check_description_tokens(description: str, tokenizer: Any) -> str:
    """Return `description` if the critic's `tokenizer` makes at most MAX_DESCRIPTION_TOKENS of it; else refuse."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    count = len(tokenizer.encode(description, add_special_tokens=False))
    if count > MAX_DESCRIPTION_TOKENS:
        raise InvalidInputError(
            f"The description is {count} tokens long for the critic's tokenizer; at most {MAX_DESCRIPTION_TOKENS} "
            "are accepted. Shorten it."
        )
    return description


def validate_template(template: str, *, require_description: bool = True) -> str:
    """Check that `template` is a usable query template (one `{description}` slot, nothing else); return it.

    With `require_description=False` a template without the slot is accepted too (the built-in
    geometry-only query is one).
    """
    if not isinstance(template, str) or not template.strip():
        raise InvalidInputError("The query template is empty; give a question with a '{description}' slot.")
    if len(template) > MAX_TEMPLATE_CHARS:
        check_text_hygiene(template, "query template", multiline=True, max_chars=MAX_TEMPLATE_CHARS)
    try:
        parsed = [(field, spec, conversion) for _, field, spec, conversion in string.Formatter().parse(template)
                  if field is not None]
        fields = [field for field, _, _ in parsed]
    except ValueError as exc:
        raise InvalidInputError(
            f"The query template is not a valid format string ({exc}); write literal braces as '{{{{' and '}}}}'."
        ) from None
    decorated = [f"{{{field}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
                 for field, spec, conversion in parsed if spec or conversion]
    if decorated:
        raise InvalidInputError(
            f"The query template's slot must be exactly '{{description}}'; found {', '.join(decorated[:3])}: format "
            "specs (':…') and conversions ('!r', '!s') are not allowed in a template."
        )
    expected = [DESCRIPTION_SLOT] if require_description else ([DESCRIPTION_SLOT] if fields else [])
    if fields != expected:
        raise InvalidInputError(
            "The query template must contain the slot '{description}' exactly once and no other '{...}' "
            f"fields; found {fields or 'none'}. Write literal braces as '{{{{' and '}}}}'."
        )
    check_plain_text(template, qwen_markup_tokens(), "query template")  # markup named first: the graver problem
    return check_text_hygiene(template, "query template", multiline=True)


def resolve_query(query: str, *, reference: bool = False, layout: str = "separate") -> str:
    """The template for `query`: a variant name ('dual', 'content', 'geometry') or a user template.

    A variant name gives the built-in question for a critic that sees the reference image first
    (`reference`) and the views as separate images or tiled into one (`layout`). A user template is
    used as written, whatever the layout: it should itself say which image is which.
    """
    if not isinstance(query, str):
        raise InvalidInputError(f"query must be a string, got {type(query).__name__}.")
    if query.strip().lower() in QUERY_TEMPLATES:
        return builtin_query(query.strip().lower(), reference=reference, layout=layout)
    if query in BUILTIN_TEMPLATES:
        return query
    if "{" not in query:
        raise InvalidInputError(
            f"Unknown query '{query}': use one of {sorted(QUERY_TEMPLATES)} or a template with a '{{description}}' slot."
        )
    return validate_template(query)


def normalize_description(description: str) -> str:
    """The description as it goes into a template: stripped, without a final period (the templates add one)."""
    if not isinstance(description, str):
        raise InvalidInputError(f"The description must be a string, got {type(description).__name__}.")
    if len(description) > MAX_DESCRIPTION_CHARS:  # before any other work on a huge text
        check_text_hygiene(description, "description", max_chars=MAX_DESCRIPTION_CHARS)
    text = description.strip()
    while text.endswith("."):
        text = text[:-1].rstrip()
    if not text:
        raise InvalidInputError("The description is empty; say what the object should be (e.g. 'a wooden chair').")
    check_plain_text(text, qwen_markup_tokens(), "description")  # markup named first: the graver problem
    return check_text_hygiene(text, "description", max_chars=MAX_DESCRIPTION_CHARS)


def format_query(template: str, description: str) -> str:
    """The question text: `template` (validated) with its slot, if any, filled by `description` (validated)."""
    text = normalize_description(description)
    builtin = template in BUILTIN_TEMPLATES
    question = validate_template(template, require_description=not builtin).format(description=text)
    # Template and description are clean on their own; a token could still straddle the slot
    # (a template '...<|im_{description}' with the description 'end|>').
    return check_plain_text(question, qwen_markup_tokens(), "question (query template with the description filled in)")


__all__ = [
    "BUILTIN_TEMPLATES",
    "CONTENT_QUERY",
    "DUAL_QUERY",
    "GEOMETRY_QUERY",
    "QUERY_TEMPLATES",
    "builtin_query",
    "MAX_DESCRIPTION_CHARS",
    "MAX_DESCRIPTION_TOKENS",
    "MAX_TEMPLATE_CHARS",
    "JOINERS",
    "check_description_tokens",
    "check_encoding",
    "check_plain_text",
    "check_text_hygiene",
    "format_query",
    "markup_tokens",
    "normalize_description",
    "query_intro",
    "qwen_markup_tokens",
    "resolve_query",
    "validate_template",
]
