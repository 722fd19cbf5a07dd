"""User-facing errors: one line on stderr, exit status 2, no traceback."""
import functools
import sys
import warnings


class AVVPError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


def one_line(msg, limit=None):
    """A message on one line: inner newlines (e.g. from a library's exception text) become spaces;
    with `limit`, cut to that many characters (torch's texts can list every key of a model)."""
    text = " ".join(part.strip() for part in str(msg).splitlines() if part.strip())
    return text if limit is None or len(text) <= limit else text[:limit] + " ..."


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"warning: {one_line(message)}\n"


def cli(main):
    """Wrap a command's main(): AVVPError and KeyboardInterrupt become one line and a non-zero exit."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        old_format, warnings.formatwarning = warnings.formatwarning, _one_line_warning
        try:
            return main(*args, **kwargs)
        except AVVPError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
        finally:
            warnings.formatwarning = old_format

    return wrapper
