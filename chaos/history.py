"""The fault suite's history checker: reads what the farm recorded and what clients saw, and says what broke.

Inputs (plain data, so tests can hand it broken histories):
  ledgers   {node_id: [entry, ...]}  each node's `rexnode ledger --json` at the end of the run: the entries it
            retains, which start past index 1 once it compacted its log into a snapshot
  submits   [{"job": id|None, "acknowledged": bool, "output": dir, "frames": N}]  one per `rexnode submit`
            the run started; acknowledged = the submitter printed "Job ID (N frames)", i.e. it was committed
  leaders   [{"node": id, "term": n}]  every "I lead term n" the run saw (node logs and polls)
  terms     {node_id: [term, ...]}  each node's terms in the order it had them, across its restarts
  states    {node_id: {job: {"state": s, "name": n, "frames": {frame: {"state", "hash"}}}}}  optional: each
            node's `status` of every job at the end, compared with what the log says; for a job whose submit
            was compacted away (it is in no retained log), the tables are the record

Checks (each violation is one readable sentence):
  prefix        every node's retained log is a run of one history: identical entries (every field, outcome
                of applying it included) at every index, indexes contiguous (from 1 until compacted), the
                history itself contiguous
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
    """Every index any node retains, in order, each with the entry of the node that retains the longest log there
    (logs end at different points; compaction makes them start at different points). `check_prefix` verifies the
    nodes agree wherever they overlap."""
    merged = {}
    for log in sorted(ledgers.values(), key=len):
        for entry in log:
            merged[entry.get("index")] = entry
    return [merged[i] for i in sorted(i for i in merged if isinstance(i, int))]


def check_prefix(ledgers):
    problems = []
    history = agreed_history(ledgers)
    at = {entry["index"]: entry for entry in history}
    for node, log in sorted(ledgers.items()):
        first = log[0].get("index") if log else 1
        for position, entry in enumerate(log):
            if entry.get("index") != first + position:
                problems.append(f"node {node}'s log has index {entry.get('index')} at position {position + 1}.")
                break
            agreed = at.get(entry.get("index"))
            if entry != agreed:
                differ = sorted(k for k in set(entry) | set(agreed or {}) if entry.get(k) != (agreed or {}).get(k))
                problems.append(f"node {node}'s log differs from the agreed history at index {entry['index']} "
                                f"({', '.join(differ)}).")
                break
    for before, after in zip(history, history[1:]):
        if after["index"] != before["index"] + 1:
            problems.append(f"no node retains indexes {before['index'] + 1}-{after['index'] - 1}.")
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


def compacted_jobs(history, submits, states):
    """Jobs submitted before the retained history starts, as the nodes' tables record them: {job: record}, with the
    record's frames and committed images taken from the first node that has the job (the others are compared with
    it by `compare_state`)."""
    if not history or history[0]["index"] == 1 or not states:
        return {}
    in_history = {e.get("job") for e in history if e.get("type") == "SubmitJob" and e.get("outcome") == "applied"}
    outputs = {s["job"]: s.get("output") for s in submits if s.get("job")}
    jobs = {}
    for node, view in sorted(states.items()):
        for job, status in sorted(view.items()):
            if job in in_history or job in jobs:
                continue
            frames = sorted(status["frames"])
            done = {f: [{"hash": status["frames"][f].get("hash"), "index": None}] for f in frames
                    if status["frames"][f].get("state") == "done"}
            jobs[job] = {"submit": {"frames": frames, "name": status.get("name"), "output": outputs.get(job)},
                         "done": done, "canceled": status["state"] == "canceled", "compacted": True}
    return jobs


def replay(history, before=None):
    """Jobs of the agreed history: {job: {"submit": entry, "done": {frame: [entries]}, "canceled": bool}},
    and the applied completions that name a job or frame the history does not have. `before`: the jobs submitted
    before the retained history starts (see `compacted_jobs`); completions retained for them count too (a
    completion the tables already hold is the same one, not a second)."""
    jobs, orphans = {job: dict(record, done=dict(record["done"])) for job, record in (before or {}).items()}, []
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
            elif job.get("compacted") and entry["frame"] in job["done"] and job["done"][entry["frame"]][0]["index"] \
                    is None:
                job["done"][entry["frame"]] = [entry]  # the tables' record of this very completion
            else:
                job["done"].setdefault(entry["frame"], []).append(entry)
        elif kind == "CancelJob" and entry.get("job") in jobs:
            jobs[entry["job"]]["canceled"] = True
    return jobs, orphans


def check_frames(history, submits, states=None, canceled=()):
    """Returns (problems, stats): exactly-once commits and nothing committed or acknowledged lost."""
    problems = []
    jobs, orphans = replay(history, compacted_jobs(history, submits, states))
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
        if asked is not None and list(record["submit"]["frames"]) != list(range(1, asked + 1)):
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
        if output is None:
            continue  # a job from before the run's submits (none here): nothing to compare on disk
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
    stats["log_length"] = history[-1]["index"] if history else 0
    stats["log_retained_from"] = history[0]["index"] if history else 1
    return problems + frame_problems, stats
