"""Hypothesis strategies for the DHT's wire parsers: JSON values, valid messages and records, and mutations."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from bitnode.dht import messages
from bitnode.dht.ids import ID_SPACE, MAX_LAYER_ID, Contact
from bitnode.dht.messages import Message, Sender

#: deterministic and bounded: the suite runs the same examples on every machine, in a few seconds
PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**300), max_value=2**300),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=80),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)

node_ids = st.integers(min_value=0, max_value=ID_SPACE - 1)
layer_ids = st.integers(min_value=0, max_value=MAX_LAYER_ID)
hex_text = st.text(alphabet="0123456789abcdef", min_size=16, max_size=16)
users = st.text(max_size=200)
hosts = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
contacts = st.builds(Contact, node_ids, hosts, st.integers(min_value=1, max_value=65535), users,
                     st.lists(layer_ids, max_size=15).map(lambda ls: tuple(sorted({0, *ls}))))
senders = st.builds(Sender, node_ids, users, st.lists(layer_ids, max_size=15).map(lambda ls: tuple(sorted({0, *ls}))))
tokens = st.one_of(st.just(""), st.text(alphabet="0123456789abcdef", min_size=32, max_size=32))
keys = st.text(min_size=1, max_size=messages.MAX_KEY_LEN)
record_like = st.dictionaries(st.text(max_size=10), json_scalars, max_size=5)

bodies = st.one_of(
    st.tuples(st.sampled_from([messages.PING, messages.PONG]), st.just({})),
    st.tuples(st.just(messages.FIND_NODE), st.fixed_dictionaries({"target": node_ids})),
    st.tuples(st.just(messages.NODES),
              st.fixed_dictionaries({"contacts": st.lists(contacts, max_size=8).map(tuple)})),
    st.tuples(st.just(messages.FIND_VALUE), st.fixed_dictionaries({"key": keys})),
    st.tuples(st.sampled_from([messages.VALUE, messages.STORE]), st.fixed_dictionaries({"record": record_like})),
    st.tuples(st.just(messages.STORED), st.fixed_dictionaries(
        {"ok": st.booleans(), "code": st.text(max_size=messages.MAX_REASON_LEN),
         "reason": st.text(max_size=messages.MAX_REASON_LEN)})),
)


@st.composite
def valid_messages(draw: Any) -> Message:
    """Any message :func:`messages.encode` can send (and :func:`messages.decode` must give back)."""
    kind, body = draw(bodies)
    return Message(kind, draw(hex_text), draw(senders), draw(layer_ids), body, draw(tokens),
                   truncated=draw(st.booleans()) and kind in messages.RESPONSE_KINDS)


@st.composite
def mutated_json(draw: Any, document: Any) -> Any:
    """``document`` (a JSON object) with one value somewhere replaced, removed, or a key added."""
    doc = json.loads(json.dumps(document))
    parent = doc
    while isinstance(parent, (dict, list)) and parent and draw(st.booleans()):
        child_key = draw(st.sampled_from(sorted(parent) if isinstance(parent, dict) else range(len(parent))))
        if not isinstance(parent[child_key], (dict, list)) or not parent[child_key]:
            break
        parent = parent[child_key]
    if isinstance(parent, dict) and parent:
        target = draw(st.sampled_from(sorted(parent)))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[target] = draw(json_values)
        elif action == "delete":
            del parent[target]
        else:
            parent[draw(st.text(max_size=8))] = draw(json_values)
    elif isinstance(parent, list) and parent:
        parent[draw(st.integers(0, len(parent) - 1))] = draw(json_values)
    return doc


@st.composite
def mutated_bytes(draw: Any, data: bytes) -> bytes:
    """``data`` with a few bytes flipped, cut out, inserted, or the end cut off."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        if action == "flip":
            out[at] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del out[at:at + draw(st.integers(1, 8))]
        elif action == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del out[at:]
    return bytes(out)
