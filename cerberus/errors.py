"""The one exception the command line turns into a single line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input from the user: an option, a file, a study name. The message is the whole story:
    what is wrong and what is allowed, in one line, with no traceback."""
