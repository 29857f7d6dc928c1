"""The one exception type users of dm_core see."""


class DMError(Exception):
    """A user-facing failure: bad input, missing data, an unreadable file, a diverged run.

    The message is one line that says what is wrong and what to do. CLIs print it as ``error: <message>`` and exit 2.
    """
