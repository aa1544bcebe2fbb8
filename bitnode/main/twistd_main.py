"""``python -m bitnode.main.twistd_main ARGS`` is ``twistd ARGS``.

Used by ``bitnode start`` so that process_restart can re-execute the same
command line (``sys.argv[0]`` is then a real file, unlike ``python -c``).
"""

from twisted.scripts.twistd import run

if __name__ == "__main__":
    run()
