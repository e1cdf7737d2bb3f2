"""User-facing errors.

`UserError` is raised for problems the user can fix (bad paths, bad flags, bad files). Command-line
entry points catch it and print its message as one paragraph without a traceback (unless --debug).
"""


class UserError(Exception):
    """A problem caused by the user's input, with a message that says what to do."""
