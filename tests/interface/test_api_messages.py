"""Tests for bitnode.interface.api_messages: shapes, bad parameters, pagination, REST paths.

One real Node with an identity (an identity server node next to it, 2048-bit
keys) and service_private_messages; history rows are put in through the
service's history so listings can be paged without a second node.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest

from bitnode.app import api_server
from bitnode.chat.history import INCOMING, OUTGOING, RECEIVED, SENT
from bitnode.chat.messages_service import PrivateMessagesService
from bitnode.p2p.network_service import NetworkService
from bitnode.transport.gateway_service import GatewayService
from bitnode.userid.id_service import IdentityService
from tests.interface.support import HttpApi, start_id_server, start_node

MESSAGES = "service_private_messages"
BOB, CAROL = "bob@127.0.0.1_9", "carol@127.0.0.1_9"
MESSAGE_KEYS = {"seq", "message_id", "conversation_id", "message_type", "direction", "sender", "recipient", "data",
                "time", "stored_time", "state", "error"}


class MessagesApiTests(unittest.TestCase):
    timeout = 30

    @inlineCallbacks
    def setUp(self):
        _server, settings = yield start_id_server(self)
        self.node = yield start_node(
            self, service_classes=[IdentityService, GatewayService, NetworkService, PrivateMessagesService],
            overrides=settings)
        yield self.ok("identity_create", username="alice")
        for _ in range(250):
            if self.node.service_driver.is_on(MESSAGES):
                break
            yield deferLater(reactor, 0.02, lambda: None)
        self.service = self.node.service_driver.get(MESSAGES)
        self.me = self.node.service_driver.get("service_identity").my_global_id()

    def call(self, method, **kwargs):
        return api_server(self.node).dispatcher.execute_by_name(method, kwargs)

    @inlineCallbacks
    def ok(self, method, **kwargs):
        answer = yield self.call(method, **kwargs)
        self.assertEqual(answer.code, 200, (method, answer.envelope))
        return answer.envelope["result"]

    @inlineCallbacks
    def error(self, code, method, **kwargs):
        answer = yield self.call(method, **kwargs)
        self.assertEqual(answer.code, code, (method, kwargs, answer.envelope))
        return " ".join(answer.envelope["errors"])

    def store(self, message_id, other=BOB, incoming=True, message_type="private_message", at=1.0):
        """A history row, as the service writes it (no network needed)."""
        row, _ = self.service.history.add(
            message_id=message_id, conversation_id=other, direction=INCOMING if incoming else OUTGOING,
            sender=other if incoming else self.me, recipient=self.me if incoming else other,
            message_type=message_type, data={"message": message_id}, time=at, stored_time=at,
            state=RECEIVED if incoming else SENT)
        self.service.notify_stored(row)
        return row

    # -- message_history ----------------------------------------------------------------

    @inlineCallbacks
    def test_history_shape_and_pages(self):
        for i in range(5):
            self.store(f"b{i}", incoming=bool(i % 2), at=float(i))
        self.store("c0", other=CAROL)
        page = yield self.ok("message_history", recipient_id=BOB, offset=0, limit=2)
        self.assertEqual(set(page), {"messages", "total", "offset", "limit"})
        self.assertEqual((page["total"], page["offset"], page["limit"]), (5, 0, 2))
        self.assertEqual([m["message_id"] for m in page["messages"]], ["b4", "b3"])
        self.assertEqual(set(page["messages"][0]), MESSAGE_KEYS)
        rest = yield self.ok("message_history", recipient_id=BOB, offset=2, limit=10)
        self.assertEqual([m["message_id"] for m in rest["messages"]], ["b2", "b1", "b0"])
        beyond = yield self.ok("message_history", recipient_id=BOB, offset=10)
        self.assertEqual((beyond["messages"], beyond["total"]), ([], 5))
        # an IDURL or a master key id means the same person
        by_idurl = yield self.ok("message_history", recipient_id="http://127.0.0.1:9/bob.xml")
        by_key = yield self.ok("message_history", recipient_id="master$" + BOB)
        self.assertEqual(by_idurl["total"], 5)
        self.assertEqual(by_key["total"], 5)
        # exact filters: what Bob sent me; what I sent (to anyone)
        from_bob = yield self.ok("message_history", sender_id=BOB, recipient_id=self.me)
        self.assertEqual([m["message_id"] for m in from_bob["messages"]], ["b3", "b1"])
        mine = yield self.ok("message_history", sender_id=self.me)
        self.assertEqual([m["message_id"] for m in mine["messages"]], ["b4", "b2", "b0"])
        everything = yield self.ok("message_history")
        self.assertEqual(everything["total"], 6)
        typed = yield self.ok("message_history", message_type="privatemessage")
        self.assertEqual(typed["total"], 6)
        groups = yield self.ok("message_history", message_type="group_message")
        self.assertEqual(groups["total"], 0)

    @inlineCallbacks
    def test_history_bad_parameters(self):
        yield self.error(400, "message_history", limit=0)
        yield self.error(400, "message_history", limit=1001)
        yield self.error(400, "message_history", offset=-1)
        yield self.error(400, "message_history", limit="many")
        yield self.error(400, "message_history", recipient_id="not a user")
        yield self.error(400, "message_history", message_type="sms")
        yield self.error(400, "message_history", colour="red")

    # -- message_conversations_list --------------------------------------------------------

    @inlineCallbacks
    def test_conversations_shape_filter_and_pages(self):
        self.store("b0", at=1.0)
        self.store("c0", other=CAROL, at=2.0)
        self.store("g0", other="group_1$" + BOB, message_type="group_message", at=3.0)
        listed = yield self.ok("message_conversations_list")
        self.assertEqual(set(listed), {"conversations", "total", "offset", "limit"})
        self.assertEqual(listed["total"], 3)
        self.assertEqual([c["conversation_id"] for c in listed["conversations"]], ["group_1$" + BOB, CAROL, BOB])
        self.assertEqual(set(listed["conversations"][0]), {"conversation_id", "message_type", "messages", "incoming",
                                                           "outgoing", "first_time", "last_time", "last_message"})
        private = yield self.ok("message_conversations_list", message_types=["private_message"])
        self.assertEqual([c["conversation_id"] for c in private["conversations"]], [CAROL, BOB])
        legacy_names = yield self.ok("message_conversations_list", message_types="privatemessage,groupmessage")
        self.assertEqual(legacy_names["total"], 3)
        page = yield self.ok("message_conversations_list", offset=1, limit=1)
        self.assertEqual(([c["conversation_id"] for c in page["conversations"]], page["total"]), ([CAROL], 3))
        yield self.error(400, "message_conversations_list", message_types=["sms"])
        yield self.error(400, "message_conversations_list", limit=0)

    # -- message_receive -------------------------------------------------------------------

    @inlineCallbacks
    def test_receive_polls_from_the_consumers_cursor(self):
        self.store("before")
        empty = yield self.ok("message_receive", consumer_callback_id="ui", polling_timeout=0)
        self.assertEqual(empty, [])  # a new consumer starts at the end of the history
        self.store("in1")
        self.store("out1", incoming=False)
        self.store("g1", other="group_1$" + BOB, message_type="group_message")
        got = yield self.ok("message_receive", consumer_callback_id="ui", polling_timeout=0)
        self.assertEqual([m["message_id"] for m in got], ["in1", "g1"])
        again = yield self.ok("message_receive", consumer_callback_id="ui", polling_timeout=0)
        self.assertEqual(again, [])
        # another consumer with its own filters
        yield self.ok("message_receive", consumer_callback_id="out", direction="outgoing", polling_timeout=0)
        self.store("out2", incoming=False)
        self.store("in2")
        got = yield self.ok("message_receive", consumer_callback_id="out", direction="outgoing",
                            message_types=["private_message"], polling_timeout=0)
        self.assertEqual([m["message_id"] for m in got], ["out2"])

    @inlineCallbacks
    def test_a_waiting_poll_ends_empty_after_its_timeout_or_a_newer_poll(self):
        first = self.call("message_receive", consumer_callback_id="ui", polling_timeout=0.2)
        answer = yield first
        self.assertEqual(answer.envelope["result"], [])
        waiting = self.call("message_receive", consumer_callback_id="ui", polling_timeout=10)
        newer = self.call("message_receive", consumer_callback_id="ui", polling_timeout=0)
        self.assertEqual((yield waiting).envelope["result"], [])
        self.assertEqual((yield newer).envelope["result"], [])

    @inlineCallbacks
    def test_receive_bad_parameters(self):
        yield self.error(400, "message_receive", consumer_callback_id="ui", direction="sideways")
        yield self.error(400, "message_receive", consumer_callback_id="ui", polling_timeout=-1)
        yield self.error(400, "message_receive", consumer_callback_id="ui", polling_timeout=4000)
        yield self.error(400, "message_receive", consumer_callback_id="x" * 129)
        yield self.error(400, "message_receive", consumer_callback_id="ui", message_types=["sms"])
        yield self.error(400, "message_receive")

    # -- message_send ----------------------------------------------------------------------

    @inlineCallbacks
    def test_send_bad_parameters(self):
        yield self.error(400, "message_send", data={"message": "x"})
        yield self.error(400, "message_send", recipient_id=BOB)
        yield self.error(400, "message_send", recipient_id=BOB, data=[1, 2])
        yield self.error(400, "message_send", recipient_id=BOB, data={"m": 1}, ping_timeout=-1)
        yield self.error(400, "message_send", recipient_id=BOB, data={"m": 1}, message_ack_timeout=0)
        yield self.error(400, "message_send", recipient_id="no body", data={"m": 1})
        yield self.error(400, "send_message", recipient=BOB, message_body=[1])
        yield self.ok("config_set", key="services/private-messages/max-message-size", value="1024")
        text = yield self.error(400, "message_send", recipient_id=BOB, data={"m": "x" * 2000})
        self.assertIn("limit is 1024", text)
        # a nickname needs service_nicknames, which this node does not have
        text = yield self.error(503, "message_send", recipient_id="bobby", data={"m": 1})
        self.assertIn("service_nicknames", text)
        history = yield self.ok("message_history")
        self.assertEqual(history["total"], 0)

    # -- service off, REST ---------------------------------------------------------------------

    @inlineCallbacks
    def test_every_method_says_503_while_the_service_is_off(self):
        yield self.ok("service_stop", service_name=MESSAGES)
        for method, kwargs in (("message_send", {"recipient_id": BOB, "data": {}}), ("message_history", {}),
                               ("message_conversations_list", {}),
                               ("message_receive", {"consumer_callback_id": "ui"}), ("receive_one_message", {})):
            text = yield self.error(503, method, **kwargs)
            self.assertIn(MESSAGES, text)

    @inlineCallbacks
    def test_rest_paths(self):
        self.store("b0")
        http = HttpApi(self, self.node)
        reply = yield http.get("message/history/v1", recipient_id=BOB, limit=1)
        self.assertEqual((reply.code, reply.result["total"]), (200, 1))
        reply = yield http.get("message/conversation/v1", message_types="private_message")
        self.assertEqual(reply.result["conversations"][0]["conversation_id"], BOB)
        reply = yield http.get("message/receive/web-ui/v1", polling_timeout=0)
        self.assertEqual((reply.code, reply.result), (200, []))
        reply = yield http.post("message/send/v1", recipient_id=BOB)
        self.assertEqual(reply.code, 400)
        self.assertIn("data", reply.error)
