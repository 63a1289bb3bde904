"""The one exception type users see: a one-line message naming the file, key or value at fault."""


class BertforgeError(Exception):
    """A problem with the user's input (file, checkpoint, column, option), printed as one line by the CLI."""
