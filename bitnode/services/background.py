"""Background work of a service: Deferreds nobody waits for, whose failures must still be heard.

A service starts work no caller waits for (restoring the catalog, publishing a
share, a scheduled backup). :class:`BackgroundWork` keeps each such Deferred
until it fires, logs a failure instead of leaving it unhandled (an expected,
typed error as one info line; anything else with its traceback), and lets
the service's ``stop()`` wait until all of it has finished.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from bitnode.errors import BitnodeError


class BackgroundWork:
    """The running background Deferreds of one service; see the module docstring.

    :param log: the service's ``twisted.logger.Logger``.
    :param expected: failures logged as one info line (no traceback).
    """

    def __init__(self, log: Any, expected: tuple[type[BaseException], ...] = (BitnodeError,)):
        self.log = log
        self.expected = expected
        self._running: set[defer.Deferred] = set()

    def track(self, d: defer.Deferred, what: str, quiet: bool = False) -> defer.Deferred:
        """Keep ``d`` until it fires; log its failure (``quiet``: as info whatever it is). Returns ``d``."""
        self._running.add(d)

        def finished(result: Any) -> Any:
            self._running.discard(d)
            return result

        def failed(failure: Any) -> None:
            if quiet or failure.check(*self.expected):
                self.log.info("{what} failed: {error}", what=what, error=failure.getErrorMessage())
            else:
                self.log.failure("{what} failed", failure, what=what)

        d.addBoth(finished)
        d.addErrback(failed)
        return d

    def wait(self) -> defer.Deferred:
        """Fires once everything tracked now has finished."""
        return defer.DeferredList(list(self._running), consumeErrors=True)

    def __len__(self) -> int:
        return len(self._running)
