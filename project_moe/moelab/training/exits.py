"""Exit codes of a run, shared by every command of the study, and the one line an error is told in."""
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_PEER_FAILED = 2, 3, 4


def first_line(error: BaseException) -> str:
    """An exception as one line: the first line of its message, else its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
