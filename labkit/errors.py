"""The one exception type a lab raises for bad input or a bad environment."""


class LabError(Exception):
    """A problem the user can fix: the message names the file, column or device, and what to do.

    Raised before long work starts wherever possible. `python -m labkit` and the invoke tasks print
    the message alone (no traceback) and exit with status 2.
    """
