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
    from ..tiny.qwen import QWEN_ADDED_TOKENS, QWEN_SPECIAL_TOKENS

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


def validate_template(template: str, *, require_description: bool = True) -> str:
    """Check that `template` is a usable query template (one `{description}` slot, nothing else); return it.

    With `require_description=False` a template without the slot is accepted too (the built-in
    geometry-only query is one).
    """
    if not isinstance(template, str) or not template.strip():
        raise InvalidInputError("The query template is empty; give a question with a '{description}' slot.")
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise InvalidInputError(
            f"The query template is not a valid format string ({exc}); write literal braces as '{{{{' and '}}}}'."
        ) from None
    expected = [DESCRIPTION_SLOT] if require_description else ([DESCRIPTION_SLOT] if fields else [])
    if fields != expected:
        raise InvalidInputError(
            "The query template must contain the slot '{description}' exactly once and no other '{...}' "
            f"fields; found {fields or 'none'}. Write literal braces as '{{{{' and '}}}}'."
        )
    return check_plain_text(template, qwen_markup_tokens(), "query template")


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
    text = description.strip()
    while text.endswith("."):
        text = text[:-1].rstrip()
    if not text:
        raise InvalidInputError("The description is empty; say what the object should be (e.g. 'a wooden chair').")
    return check_plain_text(text, qwen_markup_tokens(), "description")


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
    "check_plain_text",
    "format_query",
    "markup_tokens",
    "normalize_description",
    "query_intro",
    "qwen_markup_tokens",
    "resolve_query",
    "validate_template",
]
