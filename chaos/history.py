"""The fault suite's history checker: reads what the farm recorded and what clients saw, and says what broke.

Inputs (plain data, so tests can hand it broken histories):
  ledgers   {node_id: [entry, ...]}  each node's `rexnode ledger --json` at the end of the run
  submits   [{"job": id|None, "acknowledged": bool, "output": dir, "frames": N}]  one per `rexnode submit`
            the run started; acknowledged = the submitter printed "Job ID (N frames)", i.e. it was committed
  leaders   [{"node": id, "term": n}]  every "I lead term n" the run saw (node logs and polls)
  terms     {node_id: [term, ...]}  each node's terms in the order it had them, across its restarts
  states    {node_id: {job: {"state": s, "frames": {frame: {"state", "hash"}}}}}  optional: each node's
            `status` of every job at the end, compared with what the log says

Checks (each violation is one readable sentence):
  prefix        every node's applied log is a prefix of one history: identical entries (every field,
                outcome of applying it included) at every index, indexes contiguous from 1
  monotone      terms never go backwards: in each log by index, and in each node's own sequence of terms
  one-leader    at most one leader per term
  exactly-once  no frame has two CompleteFrame entries the ledger applied; no applied completion of a frame
                its job does not have; what each node's tables say matches the log
  not-lost      every acknowledged submit is in the agreed history with the frames asked for; every
                committed job (acknowledged or not) ends done with every frame committed and present in its
                output folder with the committed image's BLAKE2b-256 hash; no job was canceled unless the
                run canceled it
"""
import hashlib
import os
import re


def agreed_history(ledgers):
    """The longest log; `check_prefix` verifies every other log is a prefix of it."""
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
            if position >= len(history) or entry != history[position]:
                differ = sorted(k for k in set(entry) | set(history[position]) if entry.get(k) !=
                                history[position].get(k)) if position < len(history) else ["index"]
                problems.append(f"node {node}'s log differs from the agreed history at index {position + 1} "
                                f"({', '.join(differ)}).")
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
        last = 0
        for term in series:
            if term < last:
                problems.append(f"node {node}'s term went back from {last} to {term}.")
                break
            last = term
    return problems


def check_one_leader(leaders):
    by_term = {}
    for seen in leaders:
        by_term.setdefault(seen["term"], set()).add(seen["node"])
    return [f"term {term} had {len(nodes)} leaders: {', '.join(sorted(nodes))}."
            for term, nodes in sorted(by_term.items()) if len(nodes) > 1]


ROLE_LINE = re.compile(r"raft role changed")
FIELD = re.compile(r"raft/(role|term|leader)=(\S+)")
NODE_READY = re.compile(r"\bid=([0-9a-f]+)\b.*node ready")


def read_node_log(lines):
    """From one node's log (all its runs): its id, its terms in order, and the terms it led.

    Lines look like `... notice rexnode: node=h1 raft/leader=65cc… raft/role=leader raft/term=2 [Farm] raft
    role changed` and `... info rexnode: id=84411faec8366b34 node=h1 … [Farm] node ready`."""
    node, terms, led = None, [], []
    for line in lines:
        ready = NODE_READY.search(line)
        if ready:
            node = ready.group(1)
        if ROLE_LINE.search(line):
            fields = dict(FIELD.findall(line))
            if "term" in fields:
                term = int(fields["term"])
                terms.append(term)
                if fields.get("role") == "leader":
                    led.append(term)
    return node, terms, led


def frame_file(output, name, frame):
    """The frame's file in the output folder (`NAME_0001.png`: %04d, as the daemon writes it), or None."""
    prefix = f"{name}_{frame:04d}."
    try:
        matches = [f for f in os.listdir(output) if f.startswith(prefix)]
    except OSError:
        return None
    return os.path.join(output, matches[0]) if matches else None


def blob_hash(path, like=""):
    """The file's content address in the form of `like`: a tree address (`t1` + hex, see Sources/Mesh/Blob.swift's
    BlobTree) when `like` is one, else the legacy BLAKE2b-256 of the whole file."""
    if like.startswith("t1"):
        return "t1" + tree_root(path).hex()
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_root(path):
    """BlobTree's root: 1 MiB chunks, leaf = H(0 | u64 index | chunk | u64 length), parent = H(1 | left | right),
    levels paired left to right (an odd last node rises unchanged), root = H(2 | u64 size | top); big-endian."""
    def h(data):
        return hashlib.blake2b(data, digest_size=32).digest()
    leaves, size = [], 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk and leaves:
                break
            leaves.append(h(b"\x00" + len(leaves).to_bytes(8, "big") + chunk + len(chunk).to_bytes(8, "big")))
            size += len(chunk)
            if len(chunk) < (1 << 20):
                break
    level = leaves
    while len(level) > 1:
        level = [h(b"\x01" + level[i] + level[i + 1]) if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
    return h(b"\x02" + size.to_bytes(8, "big") + level[0])


def replay(history):
    """Jobs of the agreed history: {job: {"submit": entry, "done": {frame: [entries]}, "canceled": bool}},
    and the applied completions that name a job or frame the history does not have."""
    jobs, orphans = {}, []
    for entry in history:
        kind, outcome = entry.get("type"), entry.get("outcome")
        if outcome != "applied":
            continue
        if kind == "SubmitJob":
            jobs[entry["job"]] = {"submit": entry, "done": {}, "canceled": False}
        elif kind == "CompleteFrame":
            job = jobs.get(entry.get("job"))
            if job is None or entry.get("frame") not in job["submit"]["frames"]:
                orphans.append(entry)
            else:
                job["done"].setdefault(entry["frame"], []).append(entry)
        elif kind == "CancelJob" and entry.get("job") in jobs:
            jobs[entry["job"]]["canceled"] = True
    return jobs, orphans


def check_frames(history, submits, states=None, canceled=()):
    """Returns (problems, stats): exactly-once commits and nothing committed or acknowledged lost."""
    problems = []
    jobs, orphans = replay(history)
    committed = doubles = lost = 0
    for entry in orphans:
        problems.append(f"index {entry['index']} applied a completion of {entry.get('job')}/{entry.get('frame')}, "
                        f"a frame no job has.")
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
            lost += submit.get("frames") or 1
            continue
        asked = submit.get("frames")
        if asked is not None and record["submit"]["frames"] != list(range(1, asked + 1)):
            problems.append(f"job {job} was submitted with frames 1-{asked} but the ledger has "
                            f"{len(record['submit']['frames'])} frames.")
    for job, record in jobs.items():
        if record["canceled"]:
            if job not in canceled:
                problems.append(f"job {job} was canceled, but the run canceled nothing.")
            continue
        frames = record["submit"]["frames"]
        missing = [f for f in frames if f not in record["done"]]
        if missing:
            lost += len(missing)
            problems.append(f"job {job}: {len(missing)} of {len(frames)} frames never committed "
                            f"(first {missing[:5]}).")
        name, output = record["submit"]["name"], record["submit"]["output"]
        for frame in frames:
            if frame in missing:
                continue
            path = frame_file(output, name, frame)
            if path is None:
                lost += 1
                problems.append(f"job {job}: frame {frame} is committed but not in {output}.")
            elif blob_hash(path, record["done"][frame][0]["hash"]) != record["done"][frame][0]["hash"]:
                lost += 1
                problems.append(f"job {job}: frame {frame} in {output} is not the committed image.")
    for node, view in sorted((states or {}).items()):
        problems += compare_state(node, view, jobs)
    return problems, {"frames_committed": committed, "frames_double": doubles, "frames_lost": lost,
                      "jobs_committed": len(jobs)}


def compare_state(node, view, jobs):
    """A node's tables (`status` of each job) against the log: same jobs, states and committed images."""
    problems = []
    for job, record in jobs.items():
        status = view.get(job)
        if status is None:
            problems.append(f"node {node} has no job {job}.")
            continue
        want = "canceled" if record["canceled"] else "done"
        if not record["canceled"] and len(record["done"]) < len(record["submit"]["frames"]):
            continue  # already reported as lost frames
        if status["state"] != want:
            problems.append(f"node {node} says job {job} is {status['state']}, the log says {want}.")
        for frame, entries in record["done"].items():
            seen = status["frames"].get(frame)
            if seen is None or seen.get("state") != "done" or seen.get("hash") != entries[0]["hash"]:
                problems.append(f"node {node} has frame {job}/{frame} as {seen}, the log committed "
                                f"{entries[0]['hash'][:12]}….")
                break
    return problems


def check(ledgers, submits, leaders, terms, states=None, canceled=()):
    """All checks; returns (problems, stats)."""
    history = agreed_history(ledgers)
    problems = check_prefix(ledgers) + check_monotone_terms(ledgers, terms) + check_one_leader(leaders)
    frame_problems, stats = check_frames(history, submits, states, canceled)
    stats["jobs_acknowledged"] = sum(1 for s in submits if s.get("acknowledged"))
    stats["log_length"] = len(history)
    return problems + frame_problems, stats
