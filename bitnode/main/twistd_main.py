"""``python -m bitnode.main.twistd_main ARGS`` is ``twistd ARGS``.

Used by ``bitnode start``/``run`` and localnet so that the node runs under the
very interpreter (and environment) of the command that started it, whether or
not a ``twistd`` script is on PATH. (``python -m twisted.scripts.twistd`` does
nothing: that module has no ``__main__`` block.)
"""

from twisted.scripts.twistd import run

if __name__ == "__main__":
    run()
