"""Group names, frames and refusals (bitnode.access.group_protocol)."""

from __future__ import annotations

from twisted.trial import unittest

from bitnode.access import group_protocol as gp
from bitnode.errors import BadRequest, Conflict, Forbidden, NotFound, Unavailable

GROUP = "group_0123456789abcdef0123456789abcdef$alice@id.net_8084"


class GroupNameTests(unittest.TestCase):
    def test_a_new_alias_makes_a_group_key_id_whose_broker_is_its_owner(self):
        alias = gp.new_group_alias()
        self.assertRegex(alias, r"^group_[0-9a-f]{32}$")
        self.assertNotEqual(alias, gp.new_group_alias())
        key_id = f"{alias}$bob@id.net_8084"
        self.assertTrue(gp.is_group_key_id(key_id))

    def test_other_keys_are_not_groups(self):
        for text in ("master$alice@id.net_8084", "share_0123456789$alice@id.net_8084", "group_$alice@id.net",
                     "group_XYZ12345$alice@id.net", "group_0123456789abcdef", None, 7):
            self.assertFalse(gp.is_group_key_id(text), text)
            self.assertRaises(BadRequest, gp.parse_group_key_id, text)


class FrameTests(unittest.TestCase):
    def test_a_frame_has_a_fixed_layout(self):
        payload = gp.encode_frame("publish", GROUP, (b"\x01sealed",))
        head = b'{"group_key_id":"%s","op":"publish","sizes":[7],"v":1}' % GROUP.encode()
        self.assertEqual(payload, b"\x00GRP1\n" + len(head).to_bytes(4, "big") + head + b"\x01sealed")
        frame = gp.decode_frame(payload)
        self.assertEqual((frame.op, frame.group_key_id, frame.fields, frame.blobs),
                         ("publish", GROUP, {}, (b"\x01sealed",)))

    def test_fields_and_several_blobs_survive_a_round_trip(self):
        frame = gp.decode_frame(gp.encode_frame("ok", GROUP, [b"a", b"", b"ccc"], sequences=[1, 2, 3], head=3,
                                                more=False))
        self.assertEqual(frame.blobs, (b"a", b"", b"ccc"))
        self.assertEqual(frame.fields, {"sequences": [1, 2, 3], "head": 3, "more": False})
        self.assertEqual(frame.integer("head"), 3)
        self.assertRaises(gp.FrameError, frame.integer, "more")
        self.assertRaises(gp.FrameError, frame.integer, "missing")
        self.assertEqual(frame.integer("missing", 5), 5)

    def test_group_frames_never_look_like_sealed_private_messages(self):
        self.assertTrue(gp.is_group_frame(gp.encode_frame("subscribe", GROUP, after=0)))
        self.assertFalse(gp.is_group_frame(b"\x01" + b"x" * 20))
        self.assertFalse(gp.is_group_frame(b""))

    def test_malformed_frames_are_refused(self):
        good = gp.encode_frame("publish", GROUP, (b"abc",))
        head_size = int.from_bytes(good[6:10], "big")
        bad = [
            b"\x01not a frame",
            gp.MAGIC + b"\x00\x00",
            gp.MAGIC + (10 ** 6).to_bytes(4, "big") + b"{}",
            gp.MAGIC + (2).to_bytes(4, "big") + b"[]",
            gp.MAGIC + (3).to_bytes(4, "big") + b"\xff\xfe{",
            good + b"trailing",
            good[:-1],
            gp.MAGIC + good[6:10] + good[10:10 + head_size].replace(b'"v":1', b'"v":2') + b"abc",
            gp.encode_frame("ok", GROUP).replace(b'"op":"ok"', b'"op":"zz"'),
        ]
        for payload in bad:
            self.assertRaises(gp.FrameError, gp.decode_frame, payload)
        not_a_group = gp.encode_frame("fetch", "master$alice@id.net_8084")
        self.assertRaises(BadRequest, gp.decode_frame, not_a_group)
        self.assertRaises(BadRequest, gp.encode_frame, "dance", GROUP)


class RefusalTests(unittest.TestCase):
    def test_a_refusal_comes_back_as_the_same_kind_of_error(self):
        for error in (Forbidden("not a member"), NotFound("no queue"), BadRequest("too big"), Unavailable("later"),
                      Conflict("clash")):
            again = gp.refused_error(gp.refusal(error).decode(), "alice@id.net_8084")
            self.assertIsInstance(again, type(error))
            self.assertIn(str(error), str(again))
            self.assertIn("alice@id.net_8084", str(again))

    def test_a_reason_without_a_code_is_not_a_group_refusal(self):
        self.assertIsNone(gp.refused_error("unknown message format version 0", "bob@id.net"))
        self.assertIsNone(gp.refused_error("", "bob@id.net"))
