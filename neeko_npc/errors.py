"""Every expected failure of neeko-npc, in one place. Standard library only: every layer may import it.

An expected failure is bad input or a missing piece the user can fix (a damaged role file, a wrong option, an
unknown NPC, a full pool); its message names what is wrong and how to fix it, and the CLI prints it as one line.
Anything else is a bug and keeps its traceback.

Each error has a ``kind``, one of :class:`Kind`; the daemon answers a kind with one gRPC status code
(server/service.py, ``STATUS``), so a new error needs a kind, not a new row in the service.

    NeekoError                        Kind.BROKEN unless a subclass says otherwise
      InputError (ValueError)         Kind.INVALID: a file, option or request that cannot be used as given
        BadRequest                      a request outside the daemon's limits
          ContextTooLarge                 its prompt does not fit the context
        InvalidBlend, BlendError        a procedural NPC's blend that cannot be served
        AssetError, ProfileError, DialogueError, GGUFFormatError, BaseModelError   a file
      UnknownRole (KeyError)          Kind.NOT_FOUND
      PoolBusy (RuntimeError)         Kind.BUSY: retry shortly
        UpstreamBusy                    the gateway's upstream is overloaded
      UpstreamUnavailable             Kind.UNAVAILABLE: the gateway's upstream cannot be reached
      NonFiniteLogits, UpstreamFailed, LlamaError   Kind.BROKEN: a role or a backend failed
"""

from __future__ import annotations

from pathlib import Path


class Kind:
    """What sort of failure an error is; the service maps each to one status code."""

    INVALID = "invalid"  # the caller's input: fix the request, file or option
    NOT_FOUND = "not_found"  # no such NPC
    BUSY = "busy"  # no room now: retry shortly
    UNAVAILABLE = "unavailable"  # something the daemon depends on cannot be reached
    BROKEN = "broken"  # a role file or a backend failed while working
    ALL = (INVALID, NOT_FOUND, BUSY, UNAVAILABLE, BROKEN)


class NeekoError(Exception):
    """An expected failure; ``str()`` is the whole message for the user."""

    kind = Kind.BROKEN

    def __str__(self) -> str:  # KeyError subclasses would otherwise print their message quoted
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


# -- the caller's input ------------------------------------------------------------------------


class InputError(NeekoError, ValueError):
    """A file, option or request that cannot be used as given."""

    kind = Kind.INVALID


class BadRequest(InputError):
    """A request outside the daemon's limits or malformed; the message names the limit and its `serve` flag."""


class ContextTooLarge(BadRequest):
    """A prompt that does not fit the context, even with every remembered exchange dropped."""


class InvalidBlend(InputError):
    """A procedural NPC's blend or profile that cannot be served; the message says why."""


class BlendError(InputError):
    """A request-time blend that cannot be used (roles/gate.py's checks); the message says what is wrong."""


class AssetError(InputError):
    """A role file that cannot be loaded. ``str()`` names the file and the fix."""

    def __init__(self, path: str | Path, problem: str, fix: str = ""):
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        msg = f"{self.path}: {problem}"
        if fix:
            msg += f" ({fix})"
        super().__init__(msg)


class ProfileError(InputError):
    """A profile file that cannot be used; the message names the file and the fix."""


class DialogueError(InputError):
    """A dialogue file that cannot be used; the message names file, line and fix."""


class GGUFFormatError(InputError):
    """A file that is not a GGUF file this code can read."""


class BaseModelError(InputError):
    """A base model that cannot be found or used."""


# -- no such NPC -------------------------------------------------------------------------------


class UnknownRole(NeekoError, KeyError):
    """No hosted NPC has this id; the message lists the known ones."""

    kind = Kind.NOT_FOUND


# -- no room now -------------------------------------------------------------------------------


class PoolBusy(NeekoError, RuntimeError):
    """No context (or batch place) came free in time, or the daemon is shutting down; retry shortly."""

    kind = Kind.BUSY


class UpstreamBusy(PoolBusy):
    """The gateway's upstream is overloaded (HTTP 429 or 503); retry shortly."""


# -- something the daemon depends on -----------------------------------------------------------


class UpstreamUnavailable(NeekoError, RuntimeError):
    """The gateway's upstream server cannot be reached, or dropped a line midway; retry, or check --upstream."""

    kind = Kind.UNAVAILABLE


# -- a role or a backend failed ----------------------------------------------------------------


class NonFiniteLogits(NeekoError, RuntimeError):
    """The model's output for a reply held NaN or infinity (a broken adapter): the reply cannot go on."""


class UpstreamFailed(NeekoError, RuntimeError):
    """The gateway's upstream answered with an error that is not the request's fault (a refused key, a crash)."""


class LlamaError(NeekoError, RuntimeError):
    """llama.cpp refused something: a model it cannot load, a decode that failed."""
