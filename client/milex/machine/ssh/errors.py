"""The errors of SSH connections and tunnels, apart from paramiko so that naming them costs nothing."""

from __future__ import annotations

from milex_common.errors import MilexError


class TunnelError(MilexError):
    """The SSH connection, or a channel through it to the remote agent, could not be set up."""


class BackingOff(TunnelError):
    """A channel was refused without trying: the last attempt failed a moment ago."""


class LinkDown(TunnelError):
    """The machine does not answer: no route to it, no TCP connection, or an SSH session gone silent (a
    closed lid, a change of network). Nothing went through; the next attempt tries again."""


class UnknownHostError(TunnelError):
    """The server's host key is in no known_hosts file: it is never accepted silently."""


class HostKeyChangedError(TunnelError):
    """The server's host key differs from the one known_hosts holds for it."""


class AuthError(TunnelError):
    """The server accepted none of the keys, passphrases or answers we have."""


class PromptUnavailable(AuthError):
    """The server wants a passphrase or an answer, and there is no terminal to ask the user."""


class TunnelStopping(TunnelError):
    """The tunnel closed a check of its link without an answer: it is stopping (it found that the link
    needs a code it cannot ask, or it was told to stop). A new one replaces it."""


ERRORS: dict[str, type[TunnelError]] = {
    kind.__name__: kind
    for kind in (TunnelError, LinkDown, UnknownHostError, HostKeyChangedError, AuthError, PromptUnavailable)
}
