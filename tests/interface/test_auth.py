"""Tests for bitnode.interface.auth: the API secret, Host/Origin checks and the rate limiter."""

from __future__ import annotations

import os
import stat

from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.errors import Forbidden, TooManyRequests, Unauthorized
from bitnode.interface.auth import ApiGuard, RateLimiter, load_or_create_secret
from tests.support import temp_path


class SecretTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = temp_path(self, "apisecret")

    def test_creates_private_file(self) -> None:
        secret = load_or_create_secret(self.path)
        self.assertGreaterEqual(len(secret), 32)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        with open(self.path, encoding="ascii") as handle:
            self.assertEqual(handle.read(), secret)

    def test_reuses_existing(self) -> None:
        first = load_or_create_secret(self.path)
        self.assertEqual(load_or_create_secret(self.path), first)

    def test_secrets_differ_between_nodes(self) -> None:
        other = os.path.join(os.path.dirname(self.path), "other")
        self.assertNotEqual(load_or_create_secret(self.path), load_or_create_secret(other))

    def test_reads_existing_and_tightens_mode(self) -> None:
        with open(self.path, "w", encoding="ascii") as handle:
            handle.write("  my-token\n")
        os.chmod(self.path, 0o644)
        self.assertEqual(load_or_create_secret(self.path), "my-token")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_empty_file_replaced(self) -> None:
        open(self.path, "w").close()
        secret = load_or_create_secret(self.path)
        self.assertTrue(secret)
        self.assertEqual(load_or_create_secret(self.path), secret)


class GuardTests(unittest.TestCase):
    def setUp(self) -> None:
        self.guard = ApiGuard("s3cret")

    def test_right_secret_passes(self) -> None:
        self.guard.check("127.0.0.1:8180", None, "s3cret")
        self.guard.check(None, "", b"s3cret")

    def test_missing_secret(self) -> None:
        for given in (None, "", b""):
            err = self.assertRaises(Unauthorized, self.guard.check, "localhost", None, given)
            self.assertIn("missing api_secret", str(err))
            self.assertEqual(err.http_code, 401)

    def test_wrong_secret(self) -> None:
        for given in ("s3cre", "s3cret ", "S3CRET", b"x", "s3cret\u00e9"):
            err = self.assertRaises(Unauthorized, self.guard.check, "localhost", None, given)
            self.assertEqual(str(err), "wrong api_secret")

    def test_local_hosts_allowed(self) -> None:
        for host in ("localhost", "LOCALHOST", "localhost:8180", "127.0.0.1", "127.0.0.1:8180",
                     "[::1]", "[::1]:8180", "::1", None, ""):
            self.guard.check_host(host)

    def test_foreign_hosts_refused(self) -> None:
        for host in ("evil.com", "evil.com:8180", "127.0.0.1.evil.com", "localhost.evil.com:80",
                     "10.0.0.5:8180", "[::2]:8180", "0.0.0.0:8180", "evil.com:80@127.0.0.1"):
            err = self.assertRaises(Forbidden, self.guard.check, host, None, "s3cret")
            self.assertIn("Host", str(err))
            self.assertEqual(err.http_code, 403)

    def test_extra_hosts(self) -> None:
        guard = ApiGuard("s3cret", extra_hosts=("MyBox.lan", "0.0.0.0", "::", ""))
        guard.check_host("mybox.lan:8180")
        self.assertRaises(Forbidden, guard.check_host, "0.0.0.0")
        self.assertRaises(Forbidden, guard.check_host, "[::]:80")

    def test_local_origins_allowed(self) -> None:
        for origin in (None, "", "http://localhost:3000", "https://127.0.0.1", "ws://[::1]:8280",
                       "http://LOCALHOST"):
            self.guard.check_origin(origin)

    def test_foreign_origin_refused(self) -> None:
        for origin in ("http://evil.com", "https://localhost.evil.com", "null", "file://", "chrome-extension://x",
                       "http://127.0.0.1.evil.com:8180", "ftp://localhost"):
            err = self.assertRaises(Forbidden, self.guard.check, "localhost", origin, "s3cret")
            self.assertIn("foreign Origin", str(err))

    def test_header_bytes_as_received(self) -> None:
        self.guard.check(b"127.0.0.1:8180", b"http://localhost:3000", b"s3cret")
        self.guard.check(b"127.0.0.1:8180", None, b"s3cret")  # the second time the Host is known
        for _ in range(2):  # a refused Host is never remembered as good
            self.assertRaises(Forbidden, self.guard.check, b"evil.com", None, b"s3cret")
        self.assertRaises(Forbidden, self.guard.check, b"localhost", b"http://evil.com", b"s3cret")
        self.assertRaises(Unauthorized, self.guard.check, b"localhost", None, b"s3cre")

    def test_remembered_hosts_are_bounded(self) -> None:
        self.patch(ApiGuard, "MAX_KNOWN_HOSTS", 2)
        for port in range(5):
            self.guard.check_host(f"localhost:{port}")
        self.assertEqual(len(self.guard._known_hosts), 2)
        self.guard.check_host("localhost:4")

    def test_origin_checked_before_secret(self) -> None:
        # A foreign page learns nothing about the secret: it is refused before the secret is looked at.
        self.assertRaises(Forbidden, self.guard.check, "localhost", "http://evil.com", None)
        self.assertRaises(Forbidden, self.guard.check, "evil.com", None, "wrong")


class RateLimiterTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = RateLimiter(self.clock, 2.0, 3)

    def test_burst_then_429(self) -> None:
        for _ in range(3):
            self.limiter.hit("a")
        err = self.assertRaises(TooManyRequests, self.limiter.hit, "a")
        self.assertEqual(err.http_code, 429)
        self.assertAlmostEqual(err.retry_after, 0.5)

    def test_refill_over_time(self) -> None:
        for _ in range(3):
            self.limiter.hit("a")
        self.clock.advance(0.4)
        err = self.assertRaises(TooManyRequests, self.limiter.hit, "a")
        self.assertAlmostEqual(err.retry_after, 0.1)
        self.clock.advance(0.1)
        self.limiter.hit("a")
        self.assertRaises(TooManyRequests, self.limiter.hit, "a")
        # A long pause refills up to the burst, not beyond.
        self.clock.advance(100)
        for _ in range(3):
            self.limiter.hit("a")
        self.assertRaises(TooManyRequests, self.limiter.hit, "a")

    def test_refused_hits_cost_nothing(self) -> None:
        for _ in range(3):
            self.limiter.hit("a")
        for _ in range(10):
            self.assertRaises(TooManyRequests, self.limiter.hit, "a")
        self.clock.advance(0.5)
        self.limiter.hit("a")

    def test_zero_rate_is_unlimited(self) -> None:
        self.limiter.configure(0, 3)
        for _ in range(1000):
            self.limiter.hit("a")

    def test_new_limits_apply_to_the_next_hit(self) -> None:
        for _ in range(3):
            self.limiter.hit("a")
        self.assertRaises(TooManyRequests, self.limiter.hit, "a")
        self.limiter.configure(0, 3)
        self.limiter.hit("a")
        # New limits: every client starts again with a full (here smaller) burst.
        self.limiter.configure(2.0, 1)
        self.limiter.hit("a")
        self.assertRaises(TooManyRequests, self.limiter.hit, "a")
        self.clock.advance(100)
        self.limiter.hit("a")
        self.assertRaises(TooManyRequests, self.limiter.hit, "a")
        self.assertEqual((self.limiter.rate, self.limiter.burst), (2.0, 1.0))

    def test_clients_are_separate(self) -> None:
        for _ in range(3):
            self.limiter.hit("a")
        self.assertRaises(TooManyRequests, self.limiter.hit, "a")
        for _ in range(3):
            self.limiter.hit("b")
        self.assertRaises(TooManyRequests, self.limiter.hit, "b")

    def test_client_table_bounded(self) -> None:
        self.patch(RateLimiter, "MAX_CLIENTS", 10)
        for i in range(25):
            self.limiter.hit(f"client-{i}")
        self.assertLessEqual(len(self.limiter._buckets), 10)
