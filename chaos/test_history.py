"""Tests of the history checker: each hands it a history with one known fault and expects that fault named."""
import hashlib
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import history  # noqa: E402


def entry(index, term, kind, outcome="applied", cid=None, **fields):
    return dict(index=index, term=term, type=kind, outcome=outcome, id=cid or f"n:{index}", **fields)


def blake(data):
    return hashlib.blake2b(data, digest_size=32).hexdigest()


class HistoryTests(unittest.TestCase):
    def setUp(self):
        self.out = tempfile.mkdtemp(prefix="rex-history-test-")
        self.images = {1: b"frame one", 2: b"frame two"}
        for frame, data in self.images.items():
            with open(os.path.join(self.out, f"shot_{frame:04d}.png"), "wb") as f:
                f.write(data)
        self.log = [
            entry(1, 1, "Noop", cid="raft:1"),
            entry(2, 1, "SubmitJob", job="j1", name="shot", frames=[1, 2], output=self.out),
            entry(3, 1, "AssignChunk", job="j1"),
            entry(4, 1, "CompleteFrame", job="j1", frame=1, hash=blake(self.images[1])),
            entry(5, 2, "Noop", cid="raft:5"),
            entry(6, 2, "CompleteFrame", job="j1", frame=2, hash=blake(self.images[2])),
        ]
        self.submits = [{"job": "j1", "acknowledged": True, "output": self.out, "frames": 2}]

    def tearDown(self):
        shutil.rmtree(self.out, ignore_errors=True)

    def check(self, ledgers=None, submits=None, leaders=(), terms=None, states=None, canceled=()):
        ledgers = ledgers if ledgers is not None else {"a": self.log, "b": self.log[:4], "c": self.log}
        return history.check(ledgers, self.submits if submits is None else submits, list(leaders), terms or {},
                             states, canceled)

    def test_a_clean_history_passes(self):
        problems, stats = self.check(leaders=[{"node": "a", "term": 1}, {"node": "c", "term": 2}],
                                     terms={"a": [1, 1, 2]})
        self.assertEqual(problems, [])
        self.assertEqual(stats["frames_committed"], 2)
        self.assertEqual(stats["frames_lost"], 0)
        self.assertEqual(stats["frames_double"], 0)

    def test_a_diverging_log_is_found(self):
        other = list(self.log)
        other[3] = entry(4, 1, "CompleteFrame", job="j1", frame=1, hash="00" * 32, cid="x:9")
        problems, _ = self.check(ledgers={"a": self.log, "b": other})
        self.assertTrue(any("differs from the agreed history at index 4 (hash, id)" in p for p in problems),
                        problems)

    def test_a_different_outcome_at_one_index_is_found(self):
        other = [dict(e) for e in self.log]
        other[5]["outcome"] = "ignored"
        problems, _ = self.check(ledgers={"a": self.log, "b": other})
        self.assertTrue(any("index 6" in p for p in problems), problems)

    def test_a_gap_in_a_log_is_found(self):
        problems, _ = self.check(ledgers={"a": self.log, "b": self.log[:2] + self.log[3:]})
        self.assertTrue(any("has index 4 at position 3" in p for p in problems), problems)

    def test_a_frame_committed_twice_is_found(self):
        log = self.log + [entry(7, 2, "CompleteFrame", job="j1", frame=2, hash=blake(self.images[2]), cid="n:77")]
        problems, stats = self.check(ledgers={"a": log})
        self.assertEqual(stats["frames_double"], 1)
        self.assertTrue(any("committed 2 times" in p for p in problems), problems)

    def test_a_second_completion_the_ledger_ignored_is_not_a_double_commit(self):
        log = self.log + [entry(7, 2, "CompleteFrame", outcome="ignored", job="j1", frame=2, hash="11" * 32)]
        problems, stats = self.check(ledgers={"a": log})
        self.assertEqual(problems, [])
        self.assertEqual(stats["frames_double"], 0)

    def test_a_lost_acknowledged_submit_is_found(self):
        submits = self.submits + [{"job": "j2", "acknowledged": True, "output": self.out, "frames": 3}]
        problems, stats = self.check(submits=submits)
        self.assertTrue(any("acknowledged job j2 is not in the agreed history" in p for p in problems), problems)
        self.assertEqual(stats["frames_lost"], 3)

    def test_an_unacknowledged_submit_may_be_missing(self):
        submits = self.submits + [{"job": None, "acknowledged": False, "output": self.out}]
        problems, _ = self.check(submits=submits)
        self.assertEqual(problems, [])

    def test_a_frame_never_committed_is_lost(self):
        problems, stats = self.check(ledgers={"a": self.log[:5]})
        self.assertEqual(stats["frames_lost"], 1)
        self.assertTrue(any("1 of 2 frames never committed" in p for p in problems), problems)

    def test_a_frame_missing_from_the_output_is_lost(self):
        os.remove(os.path.join(self.out, "shot_0002.png"))
        problems, stats = self.check()
        self.assertEqual(stats["frames_lost"], 1)
        self.assertTrue(any("frame 2 is committed but not in" in p for p in problems), problems)

    def test_a_wrong_image_in_the_output_is_found(self):
        with open(os.path.join(self.out, "shot_0001.png"), "wb") as f:
            f.write(b"something else")
        problems, _ = self.check()
        self.assertTrue(any("frame 1 in" in p and "not the committed image" in p for p in problems), problems)

    def test_tree_addresses_are_checked_like_the_daemons(self):
        # Pinned by Tests/MeshTests/BlobTreeTests.swift: (i * 31 + 7) mod 256, 3 MiB + 5 bytes (four leaves).
        data = bytes((i * 31 + 7) & 255 for i in range(3 * (1 << 20) + 5))
        path = os.path.join(self.out, "shot_0001.png")
        with open(path, "wb") as f:
            f.write(data)
        tree = "t1defd5ef757c31a603c62b76529578130641b1c3c53bbc175f2893015f1f42b7b"
        self.assertEqual(history.blob_hash(path, tree), tree)
        log = [dict(e, hash=tree) if e.get("frame") == 1 else e for e in self.log]
        problems, _ = self.check(ledgers={"a": log})
        self.assertEqual(problems, [])
        with open(path, "ab") as f:
            f.write(b"!")
        problems, _ = self.check(ledgers={"a": log})
        self.assertTrue(any("frame 1 in" in p and "not the committed image" in p for p in problems), problems)

    def test_a_job_the_run_canceled_need_not_finish(self):
        log = self.log[:4] + [entry(5, 2, "CancelJob", job="j1")]
        problems, stats = self.check(ledgers={"a": log}, canceled={"j1"})
        self.assertEqual(problems, [])
        self.assertEqual(stats["frames_lost"], 0)

    def test_a_cancel_nobody_asked_for_is_found(self):
        log = self.log[:4] + [entry(5, 2, "CancelJob", job="j1")]
        problems, _ = self.check(ledgers={"a": log})
        self.assertIn("job j1 was canceled, but the run canceled nothing.", problems)

    def test_entries_that_differ_only_in_their_fields_are_found(self):
        other = [dict(e) for e in self.log]
        other[1]["output"] = "/somewhere/else"
        problems, _ = self.check(ledgers={"a": self.log, "b": other})
        self.assertTrue(any("at index 2 (output)" in p for p in problems), problems)

    def test_a_completion_of_a_frame_no_job_has_is_found(self):
        log = self.log + [entry(7, 2, "CompleteFrame", job="j1", frame=9, hash="22" * 32)]
        problems, _ = self.check(ledgers={"a": log})
        self.assertTrue(any("j1/9, a frame no job has" in p for p in problems), problems)

    def test_a_committed_job_nobody_acknowledged_must_still_finish(self):
        log = self.log + [entry(7, 2, "SubmitJob", job="j2", name="other", frames=[1], output=self.out)]
        problems, stats = self.check(ledgers={"a": log})
        self.assertTrue(any("job j2: 1 of 1 frames never committed" in p for p in problems), problems)
        self.assertEqual(stats["frames_lost"], 1)

    def test_a_job_with_other_frames_than_asked_is_found(self):
        problems, _ = self.check(submits=[{"job": "j1", "acknowledged": True, "output": self.out, "frames": 3}])
        self.assertTrue(any("submitted with frames 1-3 but the ledger has 2" in p for p in problems), problems)

    def test_a_node_whose_tables_disagree_with_the_log_is_found(self):
        good = {"j1": {"state": "done", "frames": {1: {"state": "done", "hash": blake(self.images[1])},
                                                   2: {"state": "done", "hash": blake(self.images[2])}}}}
        bad = {"j1": {"state": "running", "frames": {1: {"state": "done", "hash": blake(self.images[1])},
                                                     2: {"state": "assigned", "hash": None}}}}
        problems, _ = self.check(states={"a": good, "b": bad})
        self.assertIn("node b says job j1 is running, the log says done.", problems)
        self.assertTrue(any(p.startswith("node b has frame j1/2 as") for p in problems), problems)
        self.assertFalse(any(p.startswith("node a") for p in problems), problems)

    # Compaction: logs that start past index 1, with the state tables as the record of what was compacted.

    def tables(self, frame2_hash=None, name="shot"):
        return {"j1": {"state": "done", "name": name, "frames": {
            1: {"state": "done", "hash": blake(self.images[1])},
            2: {"state": "done", "hash": frame2_hash or blake(self.images[2])}}}}

    def test_compacted_logs_with_whole_tables_pass(self):
        # Every node compacted: the submit (index 2) and frame 1's completion (index 4) are gone from every log.
        ledgers = {"a": self.log[4:], "b": self.log[4:5], "c": self.log[3:]}
        problems, stats = self.check(ledgers={"a": ledgers["a"], "b": ledgers["b"]},
                                     states={"a": self.tables(), "b": self.tables()})
        self.assertEqual(problems, [])
        self.assertEqual(stats["frames_committed"], 2)
        self.assertEqual(stats["log_retained_from"], 5)
        problems, stats = self.check(ledgers=ledgers, states={"a": self.tables(), "c": self.tables()})
        self.assertEqual(problems, [])
        self.assertEqual(stats["frames_double"], 0, "a retained completion the tables hold is the same one")

    def test_a_compacted_job_whose_frame_is_not_on_disk_is_lost(self):
        os.remove(os.path.join(self.out, "shot_0001.png"))
        problems, stats = self.check(ledgers={"a": self.log[4:]}, states={"a": self.tables()})
        self.assertIn(f"job j1: frame 1 is committed but not in {self.out}.", problems)
        self.assertEqual(stats["frames_lost"], 1)

    def test_a_compacted_job_that_no_node_has_is_lost(self):
        problems, _ = self.check(ledgers={"a": self.log[4:]}, states={"a": {}})
        self.assertIn("acknowledged job j1 is not in the agreed history.", problems)

    def test_a_second_retained_completion_of_a_compacted_frame_is_a_double(self):
        again = entry(7, 2, "CompleteFrame", job="j1", frame=2, hash=blake(self.images[2]), cid="x:7")
        problems, stats = self.check(ledgers={"a": self.log[4:] + [again]}, states={"a": self.tables()})
        self.assertEqual(stats["frames_double"], 1)
        self.assertTrue(any("frame j1/2 was committed 2 times" in p for p in problems), problems)

    def test_compacted_logs_that_disagree_where_they_overlap_are_found(self):
        other = [dict(e) for e in self.log[3:]]
        other[2]["hash"] = "00" * 32
        problems, _ = self.check(ledgers={"a": self.log[4:], "b": other}, states={"a": self.tables()})
        self.assertTrue(any("differs from the agreed history at index 6 (hash)" in p for p in problems), problems)

    def test_indexes_no_node_retains_are_found(self):
        problems, _ = self.check(ledgers={"a": self.log[:2], "b": self.log[4:]}, states={"b": self.tables()})
        self.assertIn("no node retains indexes 3-4.", problems)

    def test_a_node_log_gives_its_id_terms_and_leaderships(self):
        lines = [
            "2026-11-22T18:43:35+0000 info rexnode: id=84411faec8366b34 node=h1 slots=2 socket=/x [Farm] node ready",
            "2026-11-22T18:51:45+0000 notice rexnode: node=h1 raft/leader=- raft/role=follower raft/term=1 "
            "[Farm] raft role changed",
            "2026-11-22T18:51:45+0000 notice rexnode: node=h1 raft/leader=84411faec8366b34 raft/role=leader "
            "raft/term=2 [Farm] raft role changed",
            "=== start at t=45.10 s, renderer simulated:40",
            "2026-11-22T18:52:00+0000 notice rexnode: node=h1 raft/leader=- raft/role=pre-candidate raft/term=2 "
            "[Farm] raft role changed",
            "2026-11-22T18:52:01+0000 notice rexnode: node=h1 raft/leader=aa raft/role=follower raft/term=3 "
            "[Farm] raft role changed",
        ]
        node, terms, led = history.read_node_log(lines)
        self.assertEqual(node, "84411faec8366b34")
        self.assertEqual(terms, [1, 2, 2, 3])
        self.assertEqual(led, [2])

    def test_two_leaders_in_one_term_are_found(self):
        problems, _ = self.check(leaders=[{"node": "a", "term": 3}, {"node": "b", "term": 3}])
        self.assertIn("term 3 had 2 leaders: a, b.", problems)

    def test_a_term_going_back_is_found(self):
        problems, _ = self.check(terms={"b": [4, 5, 3]})
        self.assertTrue(any("node b's term went back from 5 to 3" in p for p in problems), problems)

    def test_a_log_whose_terms_go_back_is_found(self):
        log = self.log[:4] + [entry(5, 0, "Noop", cid="raft:5")]
        problems, _ = self.check(ledgers={"a": log})
        self.assertTrue(any("goes back from term 1 to 0 at index 5" in p for p in problems), problems)


if __name__ == "__main__":
    unittest.main()
