"""The one exception type for bad input and failed stages: its message is a single line that names the
file, option or stage and what is wrong, and it is what users see (never a traceback)."""


class HarnessError(Exception):
    pass
