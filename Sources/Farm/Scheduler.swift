import Ledger
import Render

/// The scheduler's decisions as a pure function: ledger state and free slots in, assignments out.
///
/// Jobs are served by priority, then age; within equal priority, jobs with fewer running chunks go first so two
/// jobs share the farm. Each chunk is at most `job.chunk` queued frames, in frame order. A frame that failed on a
/// node goes to another node first: it returns to a node it failed on only when no other node with a free slot
/// now can take it (each failed it too, or is blocked for its job). A preference, not an exclusion: a node that
/// keeps handing work back never holds a frame away from the node that failed it once. A job with tags goes only
/// to nodes carrying all of them (only those count as others for its failed frames); a node resting outside its
/// schedule comes with no free slot.
public enum Scheduler {
    public struct Slot: Sendable, Equatable {
        public var node: String
        public var free: Int
        /// The node's tags: it takes only jobs whose tags it carries, every one.
        public var tags: Set<String>
        /// The Blender versions the node renders with: a job that names one goes only to slots that have it.
        public var blender: [String]

        public init(node: String, free: Int, tags: Set<String> = [], blender: [String] = []) {
            self.node = node
            self.free = free
            self.tags = tags
            self.blender = blender
        }
    }

    public struct Decision: Sendable, Equatable {
        public var job: String
        public var frames: [Int]
        public var node: String
        /// Tiles of a tiled job (its `frames` are then frames to assemble).
        public var tiles: [FrameTile]

        public init(job: String, frames: [Int], node: String, tiles: [FrameTile] = []) {
            self.job = job
            self.frames = frames
            self.node = node
            self.tiles = tiles
        }
    }

    public static func assign(queue: [QueuedJob], slots: [Slot]) -> [Decision] {
        var jobs = queue
        // The nodes that may take each job: those carrying its tags and its Blender version (all, for a job with
        // neither).
        let eligible = jobs.map { job in Set(slots.filter { $0.accepts(job) }.map(\.node)) }
        // A block only holds while some node of the farm may still take the job; else the frames would wait for
        // ever (a farm of one), so they go on failing until their attempts run out.
        for index in jobs.indices where eligible[index].isSubset(of: jobs[index].blockedNodes) {
            jobs[index].blockedNodes = []
        }
        var free = slots.filter { $0.free > 0 }
        var decisions: [Decision] = []
        while let slotIndex = free.firstIndex(where: { $0.free > 0 }) {
            let node = free[slotIndex].node
            let slot = free[slotIndex]
            // Highest priority first; among equals, the job with the fewest chunks in flight, then the oldest.
            // A job that blocked this node (it failed there too often), or needs a tag it lacks, is not offered to it.
            let others = Set(free.filter { $0.free > 0 && $0.node != node }.map(\.node))
            let pick = jobs.indices.filter {
                slot.accepts(jobs[$0]) && jobs[$0].offers(node, others: others.intersection(eligible[$0]))
                    && !jobs[$0].blockedNodes.contains(node)
            }
            .min { a, b in
                if jobs[a].priority != jobs[b].priority { return jobs[a].priority > jobs[b].priority }
                if jobs[a].openAssignments != jobs[b].openAssignments {
                    return jobs[a].openAssignments < jobs[b].openAssignments
                }
                return a < b
            }
            guard let pick else {
                // Nothing this node may take: it sits this round out.
                free.remove(at: slotIndex)
                continue
            }
            let mayTake = others.intersection(eligible[pick])
            // A chunk is whole frames (to render, or to assemble from their tiles) first, then tiles, like units.
            let size = max(1, jobs[pick].chunk)
            let chunk = Array(
                jobs[pick].queuedFrames.lazy.filter { jobs[pick].mayGo($0, to: node, others: mayTake) }.prefix(size))
            let tiles = Array(
                jobs[pick].queuedTiles.lazy.filter { jobs[pick].mayGo($0.frame, to: node, others: mayTake) }
                    .prefix(size - chunk.count))
            let taken = Set(chunk)
            let takenTiles = Set(tiles)
            jobs[pick].queuedFrames.removeAll { taken.contains($0) }
            jobs[pick].queuedTiles.removeAll { takenTiles.contains($0) }
            jobs[pick].openAssignments += 1
            decisions.append(Decision(job: jobs[pick].job, frames: chunk, node: node, tiles: tiles))
            free[slotIndex].free -= 1
            // Rotate so the next chunk goes to another node when several have free slots.
            free.append(free.remove(at: slotIndex))
        }
        return decisions
    }

    /// The chunk size to use when the user gave none: small enough to spread a job over every slot.
    public static func defaultChunk(frames: Int, slots: Int) -> Int {
        max(1, min(10, frames / max(1, slots * 4)))
    }
}

extension Scheduler.Slot {
    /// Whether this slot's node may render the job: it carries every tag the job needs and, when the job names a
    /// Blender version, has that version.
    func accepts(_ job: QueuedJob) -> Bool {
        job.tags.isSubset(of: tags) && job.blender.map(blender.contains) != false
    }
}

extension QueuedJob {
    /// Whether `frame` may go to `node`: it never failed there, or none of `others` (the nodes with a free slot
    /// now) can take it: each failed it too, or is blocked for this job.
    func mayGo(_ frame: Int, to node: String, others: Set<String>) -> Bool {
        guard let failed = failedOn[frame], failed.contains(node) else { return true }
        return others.isSubset(of: failed.union(blockedNodes))
    }

    /// Whether the job has a queued frame (or tile) for `node`.
    func offers(_ node: String, others: Set<String>) -> Bool {
        if failedOn.isEmpty { return !queuedFrames.isEmpty || !queuedTiles.isEmpty }
        return queuedFrames.contains { mayGo($0, to: node, others: others) }
            || queuedTiles.contains { mayGo($0.frame, to: node, others: others) }
    }
}

// MARK: - Choosing a job's Blender

/// Which Blender version a job renders with, as a pure function of the file's version and the versions the farm's
/// live members run: the file's own major.minor if some node has it, else the nearest newer one, never an older one
/// (an older Blender cannot read the file, or drops what it does not know). Among patch releases of that major.minor
/// one on the submitting node is preferred (it opens the file at submit), then the newest. Every frame of the job
/// then renders with exactly that version, so no frame differs from another by a Blender change.
public enum RuntimeChoice {
    public static func choose(file: BlendVersion, available: [String], preferred: [String] = []) -> String? {
        let candidates = available.filter { BlendVersion($0).map { $0 >= file } == true }
        guard let nearest = candidates.compactMap(BlendVersion.init).min() else { return nil }
        let same = sorted(candidates.filter { BlendVersion($0) == nearest })
        return same.last(where: preferred.contains) ?? same.last
    }

    /// Versions in numeric order ("3.4.1" before "3.10.0"), each once.
    public static func sorted(_ versions: [String]) -> [String] {
        func numbers(_ version: String) -> [Int] {
            version.split(separator: ".").map { Int($0.prefix { $0.isNumber }) ?? 0 }
        }
        return Set(versions).sorted { numbers($0).lexicographicallyPrecedes(numbers($1)) }
    }
}
