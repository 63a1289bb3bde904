"""The one exception type users see: a one-line message naming the file, key or value at fault."""


class BertforgeError(Exception):
    """A problem with the user's input (file, checkpoint, column, option), printed as one line by the CLI."""


def missing_extra(what: str, extra: str) -> BertforgeError:
    """The error for a feature whose optional dependencies are not installed: how to add them, from
    PyPI or from a clone of this repository."""
    return BertforgeError(
        f"{what} needs the {extra} extra: pip install 'bertforge[{extra}]' (in a clone: pip install -e '.[{extra}]')"
    )
