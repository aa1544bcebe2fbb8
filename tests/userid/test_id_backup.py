"""Tests for bitnode.userid.id_backup (the identity backup file format)."""

from __future__ import annotations

import os

from Crypto.PublicKey import RSA
from twisted.trial import unittest

from bitnode.crypt import fastsign
from bitnode.errors import BadRequest, Conflict, NotFound
from bitnode.userid import id_backup
from tests.userid.fakes import file_mode, rsa_key

IDURL = "http://id.example.net:8084/alice.xml"
IDURL2 = "http://id2.example.net:8084/alice.xml"


class FormatTests(unittest.TestCase):
    def setUp(self) -> None:
        self.master = rsa_key(0)
        self.packet = fastsign.generate_ed25519()

    def test_round_trip(self) -> None:
        data = id_backup.render_backup([IDURL, IDURL2], self.master, self.packet)
        self.assertTrue(data.startswith(id_backup.HEADER.encode()))
        parsed = id_backup.parse_backup(data)
        self.assertEqual(parsed.idurls, (IDURL, IDURL2))
        self.assertEqual(parsed.master_key, self.master)
        self.assertEqual(parsed.packet_key, self.packet)
        self.assertEqual(id_backup.parse_backup(data.decode("utf-8")).master_key, self.master)

    def test_without_packet_key(self) -> None:
        parsed = id_backup.parse_backup(id_backup.render_backup([IDURL], self.master, None))
        self.assertIsNone(parsed.packet_key)

    def test_spec_form_and_bare_pem_and_pkcs1(self) -> None:
        pem = self.master.to_pem().decode("ascii")
        self.assertEqual(id_backup.parse_backup(IDURL + "\n" + pem).idurls, (IDURL,))
        self.assertEqual(id_backup.parse_backup(pem).idurls, ())
        pkcs1 = self.master.raw.export_key(format="PEM").decode("ascii")
        self.assertIn("BEGIN RSA PRIVATE KEY", pkcs1)
        self.assertEqual(id_backup.parse_backup("  " + pkcs1 + "\n\n# comment\n" + IDURL).master_key, self.master)

    def test_order_does_not_matter_and_idurls_are_canonical(self) -> None:
        text = (self.packet.to_pem().decode() + "\nHTTP://ID.example.net:8084/alice.xml\n"
                + self.master.to_pem().decode() + "\n" + IDURL + "\n")
        parsed = id_backup.parse_backup(text)
        self.assertEqual(parsed.idurls, (IDURL,))
        self.assertEqual(parsed.packet_key, self.packet)

    def test_refusals_never_quote_the_input(self) -> None:
        pem = self.master.to_pem().decode("ascii")
        public = RSA.import_key(pem).public_key().export_key().decode("ascii")
        truncated = "\n".join(pem.splitlines()[:-1])
        packet = self.packet.to_pem().decode()
        cases = {
            "no RSA private key": IDURL,
            "more than one RSA": "\n".join((pem, rsa_key(1).to_pem().decode())),
            "more than one Ed25519": "\n".join((pem, packet, packet)),
            "block 1 is neither": public,
            "line 1 of": "secret-garbage\n" + pem,
            "ends inside a PEM block": truncated,
            "block 2 is neither": pem + "\n-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
            "too large": "#" * (id_backup.MAX_BACKUP_BYTES + 1),
        }
        for what, text in cases.items():
            with self.assertRaises(BadRequest, msg=what) as caught:
                id_backup.parse_backup(text)
            message = str(caught.exception)
            self.assertIn(what, message)
            self.assertNotIn("PRIVATE", message, what)
            self.assertNotIn("secret", message, what)
            self.assertNotIn("c2VjcmV0", message, what)
        self.assertRaises(BadRequest, id_backup.parse_backup, b"\xff\xfe")
        self.assertRaises(BadRequest, id_backup.parse_backup, None)

    def test_repr_shows_no_key_material(self) -> None:
        parsed = id_backup.parse_backup(id_backup.render_backup([IDURL], self.master, self.packet))
        text = repr(parsed)
        self.assertIn(IDURL, text)
        self.assertNotIn("PRIVATE", text)
        self.assertNotIn(str(self.master.raw.d), text)

    def test_render_needs_an_idurl(self) -> None:
        self.assertRaises(BadRequest, id_backup.render_backup, [], self.master, None)


class FileTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def test_write_new_file_is_private_and_never_overwrites(self) -> None:
        path = os.path.join(self.dir, "alice.key")
        self.assertEqual(id_backup.write_new_file(path, b"first"), path)
        self.assertEqual(file_mode(path), 0o600)
        self.assertRaises(Conflict, id_backup.write_new_file, path, b"second")
        with open(path, "rb") as handle:
            self.assertEqual(handle.read(), b"first")
        self.assertEqual(os.listdir(self.dir), ["alice.key"], "no temporary file left behind")

    def test_write_new_file_refusals(self) -> None:
        self.assertRaises(BadRequest, id_backup.write_new_file, "relative.key", b"x")
        self.assertRaises(BadRequest, id_backup.write_new_file, os.path.join(self.dir, "no", "x.key"), b"x")
        self.assertRaises(BadRequest, id_backup.write_new_file, "", b"x")
        self.assertRaises(Conflict, id_backup.write_new_file, self.dir, b"x")

    def test_read_source(self) -> None:
        pem = rsa_key(0).to_pem().decode()
        self.assertEqual(id_backup.read_source(pem), pem)
        path = os.path.join(self.dir, "backup.key")
        id_backup.write_new_file(path, pem.encode())
        self.assertEqual(id_backup.read_source("  " + path + "\n"), pem)
        self.assertRaises(NotFound, id_backup.read_source, os.path.join(self.dir, "missing.key"))
        self.assertRaises(BadRequest, id_backup.read_source, self.dir)
        self.assertRaises(BadRequest, id_backup.read_source, "relative/path.key")
        self.assertRaises(BadRequest, id_backup.read_source, "two\nlines")
        self.assertRaises(BadRequest, id_backup.read_source, "   ")
        with open(os.path.join(self.dir, "binary"), "wb") as handle:
            handle.write(b"\xff\xfe\x00")
        self.assertRaises(BadRequest, id_backup.read_source, os.path.join(self.dir, "binary"))
