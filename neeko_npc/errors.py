"""The one base class of expected failures. Standard library only: every layer may import it.

An expected failure is bad input or a missing piece the user can fix (a damaged role file, a wrong
option, an unknown NPC); its message names what is wrong and how to fix it, and the CLI prints it as
one line. Anything else is a bug and keeps its traceback."""


class NeekoError(Exception):
    """An expected failure; ``str()`` is the whole message for the user."""

    def __str__(self) -> str:  # KeyError subclasses would otherwise print their message quoted
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InputError(NeekoError, ValueError):
    """A file, option or request that cannot be used as given."""
