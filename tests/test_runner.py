"""Tests for bitnode.runner and the twistd plugin's options (real twistd processes: tests/system)."""

from __future__ import annotations

import functools
import json
import os
import signal

import txaio
from twisted.application.service import Application
from twisted.internet.error import ReactorNotRunning
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from bitnode import runner
from bitnode.main.basedir import Basedir
from twisted.plugins import bitnode_plugin as plugin


class _SignalReactor:
    """Runs callFromThread work at once and records stops; stopping twice raises like a reactor."""

    def __init__(self):
        self.stops = 0

    def callFromThread(self, fn, *args):  # noqa: N802 - the reactor's name
        fn(*args)

    def stop(self):
        self.stops += 1
        if self.stops > 1:
            raise ReactorNotRunning()


class MakeServiceTests(SynchronousTestCase):
    def setUp(self):
        self.basedir = Basedir.at(os.path.abspath(self.mktemp()))
        self.reactor = MemoryReactorClock()

    def test_parse_setting(self):
        self.assertEqual(runner.parse_setting("a/b=c=d"), ("a/b", "c=d"))
        self.assertEqual(runner.parse_setting(" a/b ="), ("a/b", ""))
        self.assertRaises(ValueError, runner.parse_setting, "novalue")
        self.assertRaises(ValueError, runner.parse_setting, "=1")

    def test_settings_are_validated_typed_and_stored_before_the_node_starts(self):
        node = runner.make_service(self.basedir.root, [("interface/api/http-port", "0")], reactor=self.reactor)
        self.assertEqual(node.settings.get("interface/api/http-port"), 0)
        self.assertFalse(node.running)
        with open(self.basedir.settings_file, encoding="utf-8") as handle:
            self.assertEqual(json.load(handle)["values"]["interface/api/http-port"], 0)
        self.assertEqual(len(self.reactor.whenRunningHooks), 1)

    def test_an_unknown_or_bad_setting_ends_with_a_message(self):
        err = self.assertRaises(SystemExit, runner.make_service, self.basedir.root, [("no/such", "1")],
                                reactor=self.reactor)
        self.assertIn("no/such", str(err))
        err = self.assertRaises(SystemExit, runner.make_service, self.basedir.root,
                                [("interface/api/http-port", "eighty")], reactor=self.reactor)
        self.assertIn("interface/api/http-port", str(err))

    def test_a_network_file_is_installed_and_gives_the_server_defaults(self):
        source = os.path.abspath(self.mktemp())
        with open(source, "w", encoding="utf-8") as handle:
            json.dump({"version": 1, "identity-servers": ["127.0.0.1:9001"], "seeds": ["127.0.0.1:9002"]}, handle)
        node = runner.make_service(self.basedir.root, reactor=self.reactor, network=source)
        self.assertEqual(node.settings.get("personal/identity-servers"), ["127.0.0.1:9001"])
        self.assertEqual(node.settings.get("services/entangled-dht/known-nodes"), ["127.0.0.1:9002"])
        self.assertEqual(node.network.path, os.path.join(self.basedir.config, "network.json"))
        # the next start without --network keeps using it
        again = runner.make_service(self.basedir.root, reactor=MemoryReactorClock())
        self.assertEqual(again.network.seeds, ("127.0.0.1:9002",))

    def test_a_bad_network_file_ends_with_a_message(self):
        source = os.path.abspath(self.mktemp())
        with open(source, "w", encoding="utf-8") as handle:
            handle.write('{"version": 1, "seeds": ["no port"]}')
        err = self.assertRaises(SystemExit, runner.make_service, self.basedir.root, reactor=self.reactor,
                                network=source)
        self.assertIn("host:port", str(err))

    def test_stop_signals_stop_the_reactor_once(self):
        saved = {sig: signal.getsignal(sig) for sig in runner.STOP_SIGNALS}
        self.addCleanup(lambda: [signal.signal(sig, handler) for sig, handler in saved.items()])
        reactor = _SignalReactor()
        runner.install_stop_signals(reactor)
        for sig in runner.STOP_SIGNALS:
            handler = signal.getsignal(sig)
            self.assertNotIn(handler, (saved[sig], signal.SIG_DFL))
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # already stopping: no error
        self.assertEqual(reactor.stops, 2)


class PluginOptionsTests(SynchronousTestCase):
    """``twistd [options] bitnode --basedir D [--set K=V]`` as twistd parses it."""

    def setUp(self):
        self.basedir = Basedir.at(os.path.abspath(self.mktemp()))

    def parse(self, *argv: str) -> ServerOptions:
        config = ServerOptions()
        config.parseOptions(list(argv))
        return config

    def test_pid_and_log_files_default_into_the_basedir(self):
        config = self.parse("bitnode", "--basedir", self.basedir.root)
        self.assertEqual(config["pidfile"], self.basedir.pid_file)
        self.assertEqual(config["logfile"], self.basedir.log_file)
        self.assertTrue(os.path.isdir(self.basedir.logs))
        self.assertEqual(config.subOptions["basedir"], self.basedir.root)

    def test_in_the_foreground_the_log_stays_on_stdout(self):
        config = self.parse("-n", "bitnode", "--basedir", self.basedir.root)
        self.assertEqual(config["pidfile"], self.basedir.pid_file)
        self.assertIsNone(config["logfile"])

    def test_explicit_pid_and_log_files_are_kept(self):
        config = self.parse("--pidfile", "/tmp/x.pid", "--logfile", "/tmp/x.log", "bitnode",
                            "--basedir", self.basedir.root)
        self.assertEqual((config["pidfile"], config["logfile"]), ("/tmp/x.pid", "/tmp/x.log"))

    def test_basedir_defaults_to_bitnode_home(self):
        self.patch(os, "environ", dict(os.environ, BITNODE_HOME=self.basedir.root))
        config = self.parse("-n", "bitnode")
        self.assertEqual(config.subOptions["basedir"], self.basedir.root)

    def test_network_is_made_absolute(self):
        config = self.parse("-n", "bitnode", "--basedir", self.basedir.root, "--network", "net.json")
        self.assertEqual(config.subOptions["network"], os.path.abspath("net.json"))

    def test_set_is_repeatable_and_checked(self):
        config = self.parse("-n", "bitnode", "--basedir", self.basedir.root, "--set", "a=1", "--set", "b=x=y")
        self.assertEqual(config.subOptions["set"], [("a", "1"), ("b", "x=y")])
        self.assertRaises(usage.UsageError, self.parse, "-n", "bitnode", "--set", "novalue")


class ProcessLogTests(SynchronousTestCase):
    """twistd's log goes through the node's LogControl: logs/debug-level decides, the secret never shows."""

    def setUp(self):
        txaio.use_twisted()
        self.addCleanup(txaio.set_global_log_level, txaio.get_global_log_level())
        self.basedir = Basedir.at(os.path.abspath(self.mktemp()))
        self.logfile = os.path.abspath(self.mktemp())
        config = ServerOptions()
        config.parseOptions(["--logfile", self.logfile, "bitnode", "--basedir", self.basedir.root,
                             "--set", "interface/api/http-port=0"])
        self.patch(runner, "make_service", functools.partial(runner.make_service, reactor=MemoryReactorClock()))
        self.root = plugin.serviceMaker.makeService(config.subOptions)
        self.application = Application("bitnode")
        self.root.setServiceParent(self.application)  # what twistd does before it starts logging

    def written(self) -> str:
        observer = self.application.getComponent(ILogObserver)
        logger = Logger(namespace="test", observer=observer)
        node = next(iter(self.root))
        with open(node.basedir.api_secret_file, encoding="ascii") as handle:  # make_service created it
            self.secret = handle.read().strip()
        logger.debug("chatter")
        logger.info("GET /?api_secret={secret} HTTP/1.1", secret="guess-123456789")
        logger.info("the secret itself: {value}", value=self.secret)
        logger.error("oops")
        with open(self.logfile, encoding="utf-8") as handle:
            return handle.read()

    def test_the_twistd_log_is_filtered_and_redacted(self):
        text = self.written()
        self.assertNotIn("chatter", text)  # logs/debug-level 4: no debug lines
        self.assertNotIn("guess-123456789", text)
        self.assertNotIn(self.secret, text)
        self.assertIn("the secret itself: <redacted>", text)
        self.assertIn("oops", text)

    def test_debug_level_setting_is_honoured(self):
        node = next(iter(self.root))
        node.settings.set("logs/debug-level", 10)
        self.assertIn("chatter", self.written())
        node.settings.set("logs/debug-level", 0)
        with open(self.logfile, encoding="utf-8") as handle:
            before = len(handle.read())
        text = self.written()[before:]
        self.assertNotIn("GET /", text)
        self.assertIn("oops", text)
