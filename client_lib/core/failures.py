"""Why a network call failed, in words, whichever HTTP library raised it.

requests, httpx and the standard library wrap the operating system's error in their own exceptions
(requests' ConnectionError around urllib3's around ConnectionRefusedError); the message names the cause
found in that chain rather than the outermost wrapper, so "connection refused" and "host not found" are
told apart. Nothing of the exception's own text is used: it may quote a URL's query or a remote's answer."""

from __future__ import annotations

import http.client
import socket
import ssl

# How far down a chain of wrapped exceptions the cause is looked for.
_DEPTH = 12

_CLOSED = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, http.client.RemoteDisconnected, http.client.IncompleteRead)


def network_failure(exc: BaseException) -> str:
    """What went wrong in `exc` (a failed HTTP call), in words; its class name for anything unforeseen."""
    chain = _chain(exc)
    for kinds, words in _WORDS:
        if any(isinstance(cause, kinds) for cause in chain):
            return words
    names = [type(cause).__name__ for cause in chain]
    if any("Timeout" in name for name in names):
        return "timed out"
    if any("ProtocolError" in name for name in names):  # httpx's: closed early, or not HTTP, told by no OS error
        return "the connection was closed, or the answer was not HTTP"
    return exc.__class__.__name__


_WORDS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
    (socket.gaierror, "host not found"),
    (ssl.SSLCertVerificationError, "its TLS certificate is not trusted"),
    (ssl.SSLError, "the TLS handshake failed"),
    (ConnectionRefusedError, "connection refused"),
    (_CLOSED, "the connection was closed before a whole answer"),
    (TimeoutError, "timed out"),
    (http.client.HTTPException, "not an HTTP answer"),
)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what it wraps: its cause, its context, and exceptions held in its arguments (urllib3's
    ProtocolError and requests' exceptions carry the one they wrap as an argument), each once, outermost first."""
    found: list[BaseException] = []
    todo = [exc]
    while todo and len(found) < _DEPTH:
        current = todo.pop(0)
        if any(current is seen for seen in found):
            continue
        found.append(current)
        inner = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        todo.extend(e for e in inner if isinstance(e, BaseException))
    return found
