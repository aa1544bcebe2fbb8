"""A broker's logs file: appends, a backup's side of a sync, trimming (bitnode.access.group_log)."""

from __future__ import annotations

from twisted.trial import unittest

from bitnode.access.group_log import CONTROL, MESSAGE, Entry, GroupLog
from bitnode.errors import Conflict, NotFound

G = "group_00000000000000000000000000000001$alice@id.net"


def entry(seq, term, kind=MESSAGE, blob=None):
    return Entry(seq, term, kind, "bob@x", f"m{seq}-{term}", 1.0, blob if blob is not None else b"e%d" % seq)


class GroupLogTests(unittest.TestCase):
    def setUp(self):
        self.path = self.mktemp()
        self.log = GroupLog(self.path)
        self.addCleanup(lambda: self.log.close())
        self.log.host(G, "alice@x", "{}", 1.0)

    def seqs(self, upto=100):
        return [(e.seq, e.term) for e in self.log.entries_after(G, 0, upto, 1000, 1 << 30)]

    def test_appends_number_entries_and_a_repeated_message_id_keeps_its_first_number(self):
        self.assertEqual(self.log.append(G, 0, MESSAGE, "bob@x", "m1", 1.0, b"one", 1.0), (1, True))
        self.assertEqual(self.log.append(G, 0, MESSAGE, "carol@x", "m1", 1.0, b"two", 1.0), (2, True))
        self.assertEqual(self.log.append(G, 0, MESSAGE, "bob@x", "m1", 1.0, b"again", 1.0), (1, False))
        self.assertRaises(NotFound, self.log.append, "group_09$nobody@x", 0, MESSAGE, "bob@x", "m", 1.0, b"", 1.0)

    def test_a_primary_of_an_old_term_cannot_append_after_a_promise(self):
        self.log.promise(G, 2)
        self.log.promise(G, 1)  # terms only grow
        self.assertEqual(self.log.state(G).term, 2)
        self.assertRaises(Conflict, self.log.append, G, 1, MESSAGE, "bob@x", "m1", 1.0, b"x", 1.0)

    def test_a_backup_takes_entries_that_follow_what_it_holds_and_says_behind_otherwise(self):
        verdict, state = self.log.accept(G, 0, 0, None, 0, [entry(1, 0), entry(2, 0)], 1, 1.0)
        self.assertEqual((verdict, state.head, state.commit), ("ok", 2, 1))
        verdict, state = self.log.accept(G, 0, 5, 0, 0, [entry(6, 0)], 6, 1.0)  # a hole before 6
        self.assertEqual((verdict, state.head), ("behind", 2))
        verdict, _ = self.log.accept(G, 0, 2, 1, 0, [entry(3, 1)], 3, 1.0)  # 2 is held with another term
        self.assertEqual(verdict, "behind")

    def test_an_uncommitted_suffix_of_an_old_term_is_replaced_and_committed_entries_never_are(self):
        self.log.accept(G, 0, 0, None, 0, [entry(1, 0), entry(2, 0), entry(3, 0)], 1, 1.0)
        verdict, state = self.log.accept(G, 1, 1, 0, 0, [entry(2, 1)], 2, 1.0)
        self.assertEqual((verdict, state.head, state.commit), ("ok", 2, 2))
        self.assertEqual(self.seqs(), [(1, 0), (2, 1)])
        verdict, _ = self.log.accept(G, 0, 2, 1, 0, [entry(3, 0)], 3, 1.0)  # the deposed primary
        self.assertEqual((verdict, self.seqs()), ("stale", [(1, 0), (2, 1)]))
        self.log.accept(G, 1, 0, None, 0, [entry(1, 5, blob=b"other")], 2, 1.0)
        self.assertEqual(self.log.entries_after(G, 0, 1, 10, 1 << 20)[0].blob, b"e1")

    def test_trimming_drops_the_oldest_committed_messages_and_keeps_control_entries(self):
        for n in range(1, 7):
            kind = CONTROL if n == 2 else MESSAGE
            self.log.append(G, 0, kind, "bob@x", f"m{n}", 1.0, bytes(100), 1.0)
        self.log.set_commit(G, 5)
        self.assertEqual(self.log.trim(G, 3, 1 << 20), 2)  # 1 and 3 (6 is not committed, 2 is a control)
        self.assertEqual([s for s, _ in self.seqs()], [2, 4, 5, 6])
        self.assertEqual(self.log.state(G).base, 3)
        self.assertEqual(self.log.trim(G, 1, 250), 2)  # 4 and 5; 6 is not committed yet
        self.assertEqual(self.log.controls(G), [(2, bytes(100))])
        self.assertEqual(self.log.summaries()[0]["messages"], 1)

    def test_a_fetch_is_bounded_by_count_and_bytes_but_never_empty_when_something_is_there(self):
        for n in range(5):
            self.log.append(G, 0, MESSAGE, "bob@x", f"m{n}", 1.0, bytes(100), 1.0)
        self.assertEqual([e.seq for e in self.log.entries_after(G, 0, 3, 10, 1 << 20)], [1, 2, 3])
        self.assertEqual([e.seq for e in self.log.entries_after(G, 0, 10, 10, 250)], [1, 2])
        self.assertEqual([e.seq for e in self.log.entries_after(G, 0, 10, 10, 10)], [1])
        self.assertEqual(self.log.entries_after(G, 5, 10, 10, 10), [])

    def test_logs_and_subscribers_survive_reopening_and_dropping_takes_everything(self):
        self.log.append(G, 0, MESSAGE, "bob@x", "m1", 1.0, b"x", 1.0)
        self.log.subscribe(G, "bob@x", True, 1.0)
        self.log.close()
        self.log = GroupLog(self.path)
        self.assertEqual((self.log.state(G).head, self.log.subscribers()), (1, {G: ["bob@x"]}))
        self.assertEqual(self.log.count_hosted("alice@x"), 1)
        self.assertTrue(self.log.drop(G))
        self.assertFalse(self.log.drop(G))
        self.assertEqual((self.log.states(), self.log.subscribers()), ([], {}))
        self.assertRaises(NotFound, self.log.state, G)
