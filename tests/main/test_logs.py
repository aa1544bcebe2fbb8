"""Log level from logs/debug-level, and secrets redacted from log events (bitnode.main.logs)."""

from __future__ import annotations

import txaio
from twisted.logger import LogLevel, LogPublisher, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from bitnode.main.logs import REDACTED, LogControl, RedactingLogger, level_for, redact, redact_event
from bitnode.main.schema import SCHEMA
from bitnode.main.settings import Settings

SECRET = "Zm9vYmFyYmF6cXV4c2VjcmV0dG9rZW4"


class RedactTests(unittest.TestCase):
    def test_named_secret_in_urls_headers_and_reprs(self):
        for text in (f"GET /?since=3&api_secret={SECRET}&x=1 HTTP/1.1",
                     f"api_secret: {SECRET}\r\nHost: 127.0.0.1",
                     f"{{'host': '127.0.0.1', 'api_secret': '{SECRET}'}}",
                     f"/?API-SECRET%3D{SECRET}",
                     f'{{"api_secret": "{SECRET}"}}'):
            hidden = redact(text)
            self.assertNotIn(SECRET, hidden, text)
            self.assertIn(REDACTED, hidden)
        self.assertIn("x=1", redact(f"/?api_secret={SECRET}&x=1"))

    def test_bytes_dicts_lists_and_literal_secrets(self):
        self.assertNotIn(SECRET.encode(), redact(f"GET /?api_secret={SECRET} HTTP/1.1".encode()))
        self.assertEqual(redact({"api_secret": SECRET, "host": "h"}), {"api_secret": REDACTED, "host": "h"})
        self.assertEqual(redact([f"token {SECRET}"], secrets=[SECRET]), [f"token {REDACTED}"])
        self.assertEqual(redact((b"x", f"api_secret={SECRET}")), (b"x", f"api_secret={REDACTED}"))

    def test_nothing_to_hide_returns_the_same_object(self):
        for value in ("plain text", b"bytes", {"a": [1, "b"]}, [1, 2], 5, None):
            self.assertIs(redact(value, secrets=[SECRET]), value)

    def test_event_fields_format_and_failure_message(self):
        failure = Failure(ValueError(f"bad url /?api_secret={SECRET}"))
        event = {"log_format": "got {data}", "data": f"api_secret={SECRET}", "log_failure": failure,
                 "log_level": LogLevel.info, "log_namespace": "x"}
        hidden = redact_event(event)
        self.assertNotIn(SECRET, formatEvent(hidden))
        self.assertNotIn(SECRET, hidden["log_failure"].getErrorMessage())
        self.assertIn("ValueError", hidden["log_failure"].getErrorMessage())
        self.assertIn(SECRET, event["data"], "the original event is left alone (other observers own it)")

    def test_deep_values_are_not_walked_for_ever(self):
        deep: list = []
        for _ in range(10_000):
            deep = [deep]
        self.assertIs(redact(deep), deep)


class LevelTests(unittest.TestCase):
    def test_debug_level_maps_to_log_levels(self):
        self.assertEqual([level_for(n) for n in (0, 1, 3, 4, 7, 8, 20)],
                         [LogLevel.error, LogLevel.warn, LogLevel.warn, LogLevel.info, LogLevel.info,
                          LogLevel.debug, LogLevel.debug])


class LogControlTests(unittest.TestCase):
    def setUp(self):
        txaio.use_twisted()
        self.addCleanup(txaio.set_global_log_level, txaio.get_global_log_level())
        self.seen = []
        self.control = LogControl()
        self.observer = self.control.wrap(self.seen.append)

    def emit(self, level, text, **fields):
        self.observer(dict(fields, log_level=level, log_format=text, log_namespace="test"))

    def test_default_level_writes_info_and_up_only(self):
        self.emit(LogLevel.debug, "chatter")
        self.emit(LogLevel.info, "hello")
        self.emit(LogLevel.critical, "boom")
        self.assertEqual([formatEvent(e) for e in self.seen], ["hello", "boom"])

    def test_level_follows_the_setting(self):
        settings = Settings(self.mktemp(), SCHEMA)
        self.control.follow(settings)
        settings.set("logs/debug-level", 0)
        self.emit(LogLevel.warn, "warning")
        self.emit(LogLevel.error, "error")
        self.assertEqual([formatEvent(e) for e in self.seen], ["error"])
        settings.set("logs/debug-level", 12)
        self.emit(LogLevel.debug, "chatter")
        self.assertEqual(formatEvent(self.seen[-1]), "chatter")
        self.assertEqual(txaio.get_global_log_level(), "debug")  # autobahn's own debug lines now exist
        settings.set("logs/debug-level", 4)
        self.assertEqual(txaio.get_global_log_level(), "info")

    def test_registered_secret_is_redacted_wherever_it_appears(self):
        self.control.add_secret(SECRET)
        self.emit(LogLevel.info, "a {thing}", thing=f"token={SECRET}!")
        self.emit(LogLevel.info, f"format with {SECRET} inside")
        self.assertEqual([formatEvent(e) for e in self.seen],
                         [f"a token={REDACTED}!", f"format with {REDACTED} inside"])

    def test_short_secrets_are_not_registered(self):
        self.control.add_secret("1")
        self.emit(LogLevel.info, "pid 1 started")
        self.assertEqual(formatEvent(self.seen[0]), "pid 1 started")


class RedactingLoggerTests(unittest.TestCase):
    def setUp(self):
        self.seen = []
        publisher = LogPublisher(self.seen.append)
        self.debug = False
        self.log = RedactingLogger("test", observer=publisher, debug_enabled=lambda: self.debug,
                                   secrets=lambda: (SECRET,))

    def test_debug_events_only_when_enabled(self):
        self.log.debug("chatter")
        self.assertEqual(self.seen, [])
        self.debug = True
        self.log.debug("chatter")
        self.assertEqual(len(self.seen), 1)

    def test_emitted_events_are_redacted(self):
        self.log.info("received {data} and {headers}", data="GET /?api_secret=wrong-guess HTTP/1.1",
                      headers={"api_secret": "other"})
        self.log.warn(f"literal {SECRET}")
        text = " ".join(formatEvent(e) for e in self.seen)
        for hidden in ("wrong-guess", "other", SECRET):
            self.assertNotIn(hidden, text)

    def test_as_a_class_attribute_it_logs_with_the_instance_as_source(self):
        class Thing:
            log = self.log

        thing = Thing()
        thing.log.info("hi")
        self.assertIs(self.seen[0]["log_source"], thing)
