"""The yes/no questions the critic asks: the paper's dual query, its ablations, user templates.

A query template is a string with exactly one `{description}` slot, filled with the text prompt
of the shape being generated.
"""

from __future__ import annotations

import string

from ..errors import InvalidInputError

DESCRIPTION_SLOT = "description"

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
    return template


def resolve_query(query: str) -> str:
    """The template for `query`: a variant name ('dual', 'content', 'geometry') or a user template."""
    if not isinstance(query, str):
        raise InvalidInputError(f"query must be a string, got {type(query).__name__}.")
    if query.strip().lower() in QUERY_TEMPLATES:
        return QUERY_TEMPLATES[query.strip().lower()]
    if query in QUERY_TEMPLATES.values():
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
    return text


def format_query(template: str, description: str) -> str:
    """The question text: `template` (validated) with its slot, if any, filled by `description` (validated)."""
    text = normalize_description(description)
    builtin = template in QUERY_TEMPLATES.values()
    return validate_template(template, require_description=not builtin).format(description=text)


__all__ = [
    "CONTENT_QUERY",
    "DUAL_QUERY",
    "GEOMETRY_QUERY",
    "QUERY_TEMPLATES",
    "format_query",
    "normalize_description",
    "resolve_query",
    "validate_template",
]
