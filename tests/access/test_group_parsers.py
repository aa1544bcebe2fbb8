"""Property tests (hypothesis): what a group node parses from others, random and mutated.

Group frames (from any node), control entries and sync entries (from brokers and members), configs (in
invitations and ``host`` requests), the backup part (from the suppliers) and sealed message headers raise
only their parser's own error (BadRequest and its FrameError; MessageRejected), never anything else.
"""

from __future__ import annotations

import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from bitnode.access import group_backup, group_config, group_roster
from bitnode.access.group_protocol import FrameError, decode_frame, encode_frame
from bitnode.access.group_replica import entries_from
from bitnode.chat.message_crypto import MessageRejected, peek, sealed_generation
from bitnode.crypt import keys
from bitnode.errors import BadRequest

G = "group_0123456789abcdef0123456789abcdef$alice@id.net_8084"
FRAME = encode_frame("publish", G, (b"one", b"two"), after=3, suspects=["b1@id.net"])
CONTROL = group_roster.encode("add", G, "alice@id.net", 1.0, keys.generate_rsa(2048), member="bob@id.net",
                              wraps={"bob@id.net": "x"})
CONFIG = group_config.new_config(G, "alice@id.net_8084", "0" * 64, ["b0@id.net", "b1@id.net", "alice@id.net_8084"],
                                1.0,
                                "")
PART = {"version": 2, "groups": [{"group_key_id": G, "config": CONFIG.to_dict(), "active": True, "last_sequence": 3,
                                  "secrets": {"1": "00" * 32},
                                  "recent": [[3, base64.b64encode(b"entry").decode("ascii")]]}]}
SYNC = {"entries": [{"seq": 1, "term": 0, "kind": 0, "sender": "bob@id.net", "message_id": "m1", "time": 1.0}]}

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=12)
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def mutate(data: bytes, position: int, value: int, cut: int) -> bytes:
    """``data`` with one byte changed and maybe cut short."""
    if not data:
        return data
    changed = bytearray(data)
    changed[position % len(changed)] = value
    return bytes(changed[:len(changed) - cut % (len(changed) + 1)])


def replace_somewhere(value, path: list[int], new):
    """``value`` (nested dicts and lists) with the item that ``path`` picks replaced by ``new``."""
    if not path or not isinstance(value, (dict, list)) or not value:
        return new
    if isinstance(value, dict):
        key = sorted(value)[path[0] % len(value)]
        return dict(value, **{key: replace_somewhere(value[key], path[1:], new)})
    index = path[0] % len(value)
    return [*value[:index], replace_somewhere(value[index], path[1:], new), *value[index + 1:]]


class GroupParserProperties(unittest.TestCase):
    @PROPERTY
    @given(st.binary(max_size=400))
    def test_random_bytes_are_a_frame_or_a_frame_error(self, data):
        for payload in (data, FRAME[:9] + data):
            try:
                decode_frame(payload)
            except BadRequest:  # FrameError, or the group key id's own
                pass

    @PROPERTY
    @given(st.integers(min_value=0), st.integers(min_value=0, max_value=255), st.integers(min_value=0))
    def test_a_mutated_frame_is_a_frame_or_a_frame_error(self, position, value, cut):
        try:
            decode_frame(mutate(FRAME, position, value, cut))
        except BadRequest:  # FrameError, or the group key id's own
            pass

    @PROPERTY
    @given(st.binary(max_size=400), st.integers(min_value=0), st.integers(min_value=0, max_value=255),
           st.integers(min_value=0))
    def test_control_entries_random_or_mutated_parse_or_raise_bad_request(self, data, position, value, cut):
        for blob in (data, CONTROL[:6] + data, mutate(CONTROL, position, value, cut)):
            try:
                entry = group_roster.decode(blob)
            except BadRequest:
                continue
            # whatever decodes, the roster's check judges without crashing
            try:
                group_roster.check(group_roster.Roster.first("alice@id.net"), entry, G)
            except BadRequest:
                pass
            except group_roster.RosterRefused:
                pass
            except Exception as err:  # noqa: BLE001 - Conflict is the other answer the check gives
                self.assertEqual(type(err).__name__, "Conflict", err)

    @PROPERTY
    @given(JSON, st.lists(st.integers(min_value=0), max_size=4))
    def test_configs_random_or_mutated_parse_or_raise_bad_request(self, junk, path):
        for value in (junk, replace_somewhere(CONFIG.to_dict(), path, junk)):
            try:
                group_config.parse(value)
            except BadRequest:
                pass

    @PROPERTY
    @given(JSON, st.lists(st.integers(min_value=0), max_size=6))
    def test_backup_parts_random_or_mutated_parse_or_raise_bad_request(self, junk, path):
        for value in (junk, replace_somewhere(PART, path, junk)):
            try:
                group_backup.parse(value)
            except BadRequest:
                pass

    @PROPERTY
    @given(JSON, st.lists(st.integers(min_value=0), max_size=5), st.lists(st.binary(max_size=8), max_size=3))
    def test_sync_entries_random_or_mutated_parse_or_raise_a_frame_error(self, junk, path, blobs):
        for fields in (junk, replace_somewhere(SYNC, path, junk)):
            for carried in (tuple(blobs), (b"x",)):
                try:
                    entries_from(fields if isinstance(fields, dict) else {"entries": fields}, carried)
                except FrameError:
                    pass

    @PROPERTY
    @given(st.binary(max_size=300))
    def test_a_sealed_message_header_of_random_bytes_is_rejected_cleanly(self, data):
        for parse in (peek, sealed_generation):
            try:
                parse(data)
            except MessageRejected:
                pass
