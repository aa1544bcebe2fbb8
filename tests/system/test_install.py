"""System test: a plain (non-editable) ``pip install`` into a fresh venv ships the twistd plugin and the CLI.

``twisted/plugins/`` has no ``__init__.py`` (it is Twisted's namespace), so it
is easy to build a wheel without ``bitnode_plugin.py``; an editable install
hides that. This test builds and installs the package for real, offline: the
new venv sees this environment's site-packages (twisted, setuptools, pip...)
through a ``.pth`` file and installs only bitnode itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

from twisted.trial.unittest import SkipTest, SynchronousTestCase

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "__pycache__", "_trial_temp*", "*.egg-info", "build",
                                     "dist", ".localnet", ".ruff_cache", "dropin.cache", "*.pyc")
TIMEOUT = 120


class PlainInstallTests(SynchronousTestCase):
    """``pip install .`` (not editable) gives a working ``twistd bitnode`` and ``bitnode``."""

    def run_in(self, command: list[str], env: dict, cwd: str) -> subprocess.CompletedProcess:
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=TIMEOUT,
                                stdin=subprocess.DEVNULL)
        self.assertEqual(result.returncode, 0, f"{command}:\n{result.stdout}\n{result.stderr}")
        return result

    def make_venv(self, where: str) -> str:
        """A venv without pip; this environment's packages reachable through a .pth file."""
        try:
            import venv  # noqa: F401
        except ImportError:  # pragma: no cover - some distributions split venv out
            raise SkipTest("the venv module is not available in this Python") from None
        result = subprocess.run([sys.executable, "-m", "venv", "--without-pip", where], capture_output=True,
                                text=True, timeout=TIMEOUT)
        if result.returncode != 0:  # pragma: no cover
            raise SkipTest(f"cannot create a venv: {result.stderr.strip()}")
        python = os.path.join(where, "bin", "python")
        site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        # A plain path line: the editable-install .pth files over there are not processed, so the
        # repository itself does not leak onto sys.path.
        with open(os.path.join(site, "deps-from-parent-env.pth"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(sorted(ours)) + "\n")
        return python

    def test_plain_install_ships_the_twistd_plugin_and_the_cli(self):
        try:
            import pip  # noqa: F401
        except ImportError:  # pragma: no cover
            raise SkipTest("pip is not installed in this environment") from None
        work = os.path.abspath(self.mktemp())
        source = os.path.join(work, "src")
        shutil.copytree(REPO, source, ignore=NOT_SOURCES)  # the build writes build/ and *.egg-info
        python = self.make_venv(os.path.join(work, "venv"))
        bin_dir = os.path.dirname(python)
        outside = os.path.join(work, "elsewhere")  # no repository on sys.path through the cwd
        os.makedirs(outside)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
        env.update(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1", BITNODE_HOME=os.path.join(work, "home"))

        self.run_in([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                     "--ignore-installed", "--quiet", source], env, outside)

        where = self.run_in([python, "-c", "import bitnode, os; print(os.path.dirname(bitnode.__file__))"],
                            env, outside).stdout.strip()
        self.assertTrue(where.startswith(os.path.join(work, "venv")), where)
        plugin = self.run_in([python, "-c", "import twisted.plugins.bitnode_plugin as p; print(p.__file__)"],
                             env, outside).stdout.strip()
        self.assertTrue(plugin.startswith(os.path.join(work, "venv")), plugin)

        twistd = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
        listing = self.run_in([python, "-c", twistd, "--help"], env, outside).stdout
        self.assertRegex(listing, r"\n\s+bitnode\s+A bitnode peer-to-peer")
        options = self.run_in([python, "-c", twistd, "bitnode", "--help"], env, outside).stdout
        self.assertIn("--basedir", options)

        cli = self.run_in([os.path.join(bin_dir, "bitnode"), "--help"], env, outside).stdout
        for command in ("start", "stop", "status", "run", "api", "methods"):
            self.assertRegex(cli, rf"\n\s+{command}\s+\S")
