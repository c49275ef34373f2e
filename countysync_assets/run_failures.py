"""What a failed run says, in one line: the innermost error a step failed with."""

from dagster._utils.error import SerializableErrorInfo


def first_reason(error: SerializableErrorInfo) -> str:
    """The first line of the innermost error: our own message, not Dagster's wrapper
    ("Error occurred while executing op ...") or the exception's class path."""
    while error.cause is not None:
        error = error.cause
    first = error.message.strip().splitlines()[0]
    return first.split(f"{error.cls_name}: ", 1)[-1] if error.cls_name else first
