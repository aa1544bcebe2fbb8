"""twistd plugin: ``twistd -n bitnode --basedir DIR`` runs a node (``-n`` keeps it in the foreground).

Without ``--pidfile``/``--logfile`` the pid file goes to ``DIR/logs/twistd.pid``
and, when daemonised, the log to ``DIR/logs/twistd.log``, so ``bitnode status``
and ``bitnode stop`` find the node however it was started.

This file is loaded by every ``twistd`` run just to list plugins: it imports
nothing from bitnode until it is used.
"""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

TWISTD_DEFAULT_PIDFILE = "twistd.pid"


class Options(usage.Options):
    """Command-line options of the bitnode twistd plugin."""

    optParameters = [
        ["basedir", "b", None, "The node's base directory (default: $BITNODE_HOME or ~/.bitnode)."],
        ["network", None, None, "A network file (seed nodes, identity and STUN servers) to install as the "
                                "node's own (config/network.json) before it starts."],
    ]

    def __init__(self):
        super().__init__()
        self["set"] = []

    def opt_set(self, value):
        """KEY=VALUE: store setting KEY before starting (validated like config_set; repeatable)."""
        from bitnode.runner import parse_setting

        try:
            self["set"].append(parse_setting(value))
        except ValueError as err:
            raise usage.UsageError(f"--set: {err}") from None

    def postOptions(self):
        """Point twistd's default pid and log files into the basedir."""
        from bitnode.main.basedir import Basedir

        where = Basedir.at(self["basedir"])
        self["basedir"] = where.root
        if self["network"]:
            import os

            self["network"] = os.path.abspath(os.path.expanduser(self["network"]))
        server = self.parent
        if server is None:
            return
        changed = False
        if server.get("pidfile") == TWISTD_DEFAULT_PIDFILE:
            server["pidfile"] = where.pid_file
            changed = True
        if not server.get("nodaemon") and not server.get("logfile"):
            server["logfile"] = where.log_file
            changed = True
        if changed:
            where.create()


@implementer(IServiceMaker, IPlugin)
class BitnodeServiceMaker:
    """Builds the Node service for twistd."""

    tapname = "bitnode"
    description = "A bitnode peer-to-peer storage and messaging node."
    options = Options

    def makeService(self, options):
        """Import lazily: twistd loads every plugin just to list them."""
        from bitnode.main.logs import LogControl
        from bitnode.main.memory import tune_allocator
        from bitnode.runner import make_service, with_process_log

        tune_allocator()  # process-wide, so here where the process starts, not in a Node
        # The log filter is process-wide too: logs/debug-level, and the API secret kept out of every line.
        log_control = LogControl()
        node = make_service(options["basedir"], options["set"], log_control=log_control,
                            network=options["network"])
        if options.parent is None:  # built outside twistd (a test): no process log to set up
            return node
        return with_process_log(node, options.parent, log_control)


serviceMaker = BitnodeServiceMaker()
