"""Invalid settings described for people: one line, every problem named by its field.

Usage:
    from alpaca_serve.core.errors import describe_errors
    try:
        settings = ServerSettings()
    except ValidationError as err:
        print(f"invalid settings: {describe_errors(err)}")   # "port: ...; max_queue: ..."
"""

from __future__ import annotations

from pydantic import ValidationError


def describe_errors(err: ValidationError) -> str:
    """The problems of invalid settings (any pydantic model's) on one line:
    `field: what is wrong; ...`."""
    return "; ".join(
        (f"{'.'.join(str(part) for part in error['loc'])}: " if error["loc"] else "")
        + error["msg"].removeprefix("Value error, ")
        for error in err.errors()
    )
