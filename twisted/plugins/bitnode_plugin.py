"""twistd plugin: ``twistd -n bitnode --basedir DIR`` runs a node (``-n`` keeps it in the foreground)."""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    """Command-line options of the bitnode twistd plugin."""

    optParameters = [
        ["basedir", "b", None, "The node's base directory (default: $BITNODE_HOME or ~/.bitnode)."],
    ]


@implementer(IServiceMaker, IPlugin)
class BitnodeServiceMaker:
    """Builds the Node service for twistd."""

    tapname = "bitnode"
    description = "A bitnode peer-to-peer storage and messaging node."
    options = Options

    def makeService(self, options):
        """Import lazily: twistd loads every plugin just to list them."""
        from bitnode.main.runner import make_service

        return make_service(options["basedir"])


serviceMaker = BitnodeServiceMaker()
