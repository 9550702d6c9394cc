"""The fault suite's history checker: reads what the farm recorded and what clients saw, and says what broke.

Inputs (plain data, so tests can hand it broken histories):
  ledgers   {node_id: [entry, ...]}  each node's `rexnode ledger --json` at the end of the run
  submits   [{"job": id|None, "acknowledged": bool, "output": dir, "exit": int|None, "node": id}]
            one per `rexnode submit` the run started; acknowledged = the submitter printed the job's id
  leaders   [{"t": seconds, "node": id, "term": n}]  every "I am leader of term n" the run saw (node logs, polls)
  terms     {node_id: [[t, term], ...]}  each node's current term as polled, in time order, across restarts

Checks (each violation is one readable sentence):
  prefix        every node's applied log is a prefix of one history (same index, term, command id, type and
                outcome at every index), indexes contiguous
  monotone      terms never go backwards: in each log by index, and in each node's polled term over time
  one-leader    at most one leader per term
  exactly-once  every frame of every job has at most one CompleteFrame with outcome "applied"; every frame of a
                job that reached `done` has exactly one
  not-lost      every acknowledged submit is in the agreed history, its job ends done (or canceled), and each
                of its frames is in the submitter's output folder with the committed image's BLAKE2b-256 hash
"""
import glob
import hashlib
import os


def _key(entry):
    return (entry.get("index"), entry.get("term"), entry.get("id"), entry.get("type"), entry.get("outcome"))


def agreed_history(ledgers):
    """The longest log; `check` verifies every other log is a prefix of it."""
    longest = []
    for log in ledgers.values():
        if len(log) > len(longest):
            longest = log
    return longest


def check_prefix(ledgers):
    problems = []
    history = agreed_history(ledgers)
    for node, log in sorted(ledgers.items()):
        for position, entry in enumerate(log):
            if entry.get("index") != position + 1:
                problems.append(f"node {node}'s log has index {entry.get('index')} at position {position + 1}.")
                break
            if position >= len(history) or _key(entry) != _key(history[position]):
                other = _key(history[position]) if position < len(history) else None
                problems.append(
                    f"node {node}'s log differs from the agreed history at index {position + 1}: "
                    f"{_key(entry)} vs {other}.")
                break
    return problems


def check_monotone_terms(ledgers, terms):
    problems = []
    for node, log in sorted(ledgers.items()):
        last = 0
        for entry in log:
            if entry.get("term", 0) < last:
                problems.append(f"node {node}'s log goes back from term {last} to {entry['term']} at index "
                                f"{entry['index']}.")
                break
            last = entry.get("term", 0)
    for node, series in sorted(terms.items()):
        last = (None, 0)
        for t, term in series:
            if term < last[1]:
                problems.append(f"node {node}'s term went back from {last[1]} to {term} at t={t:.2f} s.")
                break
            last = (t, term)
    return problems


def check_one_leader(leaders):
    by_term = {}
    for seen in leaders:
        by_term.setdefault(seen["term"], set()).add(seen["node"])
    return [f"term {term} had {len(nodes)} leaders: {', '.join(sorted(nodes))}."
            for term, nodes in sorted(by_term.items()) if len(nodes) > 1]


def frame_files(output, name, frame):
    return glob.glob(os.path.join(glob.escape(output), f"{glob.escape(name)}_{frame:04d}.*")) or glob.glob(
        os.path.join(glob.escape(output), f"{glob.escape(name)}_*{frame}.*"))


def blob_hash(path):
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def replay(history):
    """Jobs and committed frames of the agreed history: {job: {"submit": entry, "done": {frame: [entries]},
    "canceled": bool}}."""
    jobs = {}
    for entry in history:
        kind, outcome = entry.get("type"), entry.get("outcome")
        if kind == "SubmitJob" and outcome == "applied":
            jobs[entry["job"]] = {"submit": entry, "done": {}, "canceled": False}
        elif kind == "CompleteFrame" and outcome == "applied" and entry.get("job") in jobs:
            jobs[entry["job"]]["done"].setdefault(entry["frame"], []).append(entry)
        elif kind == "CancelJob" and outcome == "applied" and entry.get("job") in jobs:
            jobs[entry["job"]]["canceled"] = True
    return jobs


def check_frames(history, submits, verify_files=True):
    """Returns (problems, stats): exactly-once commits and no lost acknowledged submit or frame."""
    problems = []
    jobs = replay(history)
    committed = doubles = lost = 0
    for job, record in jobs.items():
        for frame, entries in record["done"].items():
            committed += 1
            if len(entries) > 1:
                doubles += 1
                problems.append(f"frame {job}/{frame} was committed {len(entries)} times (indexes "
                                f"{', '.join(str(e['index']) for e in entries)}).")
    for submit in submits:
        if not submit.get("acknowledged"):
            continue
        job = submit["job"]
        record = jobs.get(job)
        if record is None:
            problems.append(f"acknowledged job {job} is not in the agreed history.")
            lost += 1
            continue
        if record["canceled"]:
            continue
        frames = record["submit"]["frames"]
        missing = [f for f in frames if f not in record["done"]]
        if missing:
            lost += len(missing)
            problems.append(f"job {job}: {len(missing)} of {len(frames)} frames never committed "
                            f"(first {missing[:5]}).")
        if not verify_files:
            continue
        name, output = record["submit"]["name"], submit.get("output") or record["submit"]["output"]
        for frame in frames:
            if frame in missing:
                continue
            files = frame_files(output, name, frame)
            want = record["done"][frame][0]["hash"]
            if not files:
                lost += 1
                problems.append(f"job {job}: frame {frame} is committed but not in {output}.")
            elif all(blob_hash(f) != want for f in files):
                lost += 1
                problems.append(f"job {job}: frame {frame} in {output} is not the committed image.")
    return problems, {"frames_committed": committed, "frames_double": doubles, "frames_lost": lost}


def check(ledgers, submits, leaders, terms, verify_files=True):
    """All checks; returns (problems, stats)."""
    problems = check_prefix(ledgers) + check_monotone_terms(ledgers, terms) + check_one_leader(leaders)
    frame_problems, stats = check_frames(agreed_history(ledgers), submits, verify_files)
    stats["jobs_acknowledged"] = sum(1 for s in submits if s.get("acknowledged"))
    stats["log_length"] = len(agreed_history(ledgers))
    return problems + frame_problems, stats
