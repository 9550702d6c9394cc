// rexnode dashboard: one page, live from /api/events (Server-Sent Events); actions POST to /api/jobs/JOB/ACTION.
"use strict";
(function () {
  // The token came in the address; the server has set the cookie, so take it out of the address bar.
  if (location.search.includes("token=")) history.replaceState(null, "", location.pathname + location.hash);

  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  let stream = null;
  let currentJob = null;
  const rates = {}; // job -> {done, t, rate}
  const thumbs = {}; // "job/frame" -> element

  function selectedJob() {
    const m = location.hash.match(/^#job=(.+)$/);
    return m ? decodeURIComponent(m[1]) : null;
  }

  function connect() {
    if (stream) stream.close();
    if (selectedJob() !== currentJob) {
      // Another job: its own thumbnails, latest frame and movie.
      $("thumbs").innerHTML = "";
      for (const key of Object.keys(thumbs)) delete thumbs[key];
      const latest = $("latest");
      latest.hidden = true;
      delete latest.dataset.src;
      $("latest-caption").textContent = "";
      const movie = $("movie");
      movie.hidden = true;
      if (movie.dataset.src) { movie.removeAttribute("src"); delete movie.dataset.src; }
      $("movie-section").hidden = true;
    }
    currentJob = selectedJob();
    $("job").hidden = !currentJob;
    const url = "/api/events" + (currentJob ? "?job=" + encodeURIComponent(currentJob) : "");
    stream = new EventSource(url);
    stream.onopen = () => { $("live").className = "live on"; };
    stream.onerror = () => { $("live").className = "live off"; };
    stream.onmessage = (e) => render(JSON.parse(e.data));
  }

  function render(snap) {
    renderPeers(snap.peers || []);
    renderJobs(snap.jobs || []);
    if (currentJob && snap.job) renderJob(snap.job);
    window.rexnodeUpdates = (window.rexnodeUpdates || 0) + 1;
  }

  function renderPeers(peers) {
    const me = peers.find((p) => p.self) || {};
    const leader = peers.find((p) => p.id === me.leader);
    $("farm-summary").textContent = peers.length + " peers · leader " + (leader ? leader.name : me.leader || "none") + " · term " + (me.term ?? "?");
    $("peers").tBodies[0].innerHTML = peers.map((p) =>
      `<tr data-peer="${esc(p.id)}"><td>${esc(p.name)}${p.self ? " *" : ""}</td><td>${esc(p.role)}</td><td>${esc(p.state)}</td>` +
      `<td>${esc((p.blender || []).join(", ") || "-")}</td><td>${esc((p.devices || []).join(", "))}</td><td>${p.slots}</td>` +
      `<td>${esc(p.task || "-")}</td><td class="peer-done">${p.frames_done}</td></tr>`).join("");
  }

  function eta(j) {
    const now = Date.now() / 1000;
    const r = rates[j.job] || { done: j.frames_done, t: now, rate: 0 };
    if (j.frames_done > r.done) { r.rate = (j.frames_done - r.done) / Math.max(1, now - r.t); r.done = j.frames_done; r.t = now; }
    rates[j.job] = r;
    if (j.state !== "running" || !r.rate) return "-";
    const s = Math.round((j.frames_total - j.frames_done) / r.rate);
    return s < 90 ? s + " s" : Math.round(s / 60) + " min";
  }

  function renderJobs(jobs) {
    $("jobs").tBodies[0].innerHTML = jobs.map((j) => {
      const pct = j.frames_total ? Math.round((100 * j.frames_done) / j.frames_total) : 0;
      return `<tr class="clickable" data-job="${esc(j.job)}"><td>${esc(j.job)}</td><td>${esc(j.name)}</td><td class="job-state">${esc(j.state)}</td>` +
        `<td><span class="bar"><div style="width:${pct}%"></div></span> <span class="job-done">${j.frames_done}</span>/${j.frames_total}</td>` +
        `<td>${eta(j)}</td><td>${j.priority}</td></tr>`;
    }).join("");
  }

  function renderJob(job) {
    if (job.error) { $("job-state").textContent = job.error; return; }
    $("job-id").textContent = job.job;
    $("job-name").textContent = job.name;
    $("job-state").textContent = job.state;
    $("job-done").textContent = job.frames_done;
    $("job-total").textContent = job.frames_total;
    $("job-failed").textContent = job.frames_failed;
    $("job-priority").textContent = job.priority;
    $("job-blender").textContent = job.blender || "any";
    const frames = job.frames || [];
    $("grid").innerHTML = frames.map((f) =>
      `<span class="state-${esc(f.state)}" title="frame ${f.frame}: ${esc(f.state)} ${esc(f.node_name || "")}">${f.frame}</span>`).join("");
    $("frames").tBodies[0].innerHTML = frames.map((f) =>
      `<tr><td>${f.frame}</td><td>${esc(f.state)}${f.progress != null ? " " + Math.round(f.progress * 100) + "%" : ""}</td>` +
      `<td>${esc(f.node_name || f.node || "-")}</td><td>${f.render_seconds != null ? f.render_seconds.toFixed(1) + " s" : "-"}</td>` +
      `<td>${f.attempts}</td><td><a href="" data-log="${f.frame}">log</a></td></tr>`).join("");
    const done = frames.filter((f) => f.state === "done");
    const base = "/api/jobs/" + encodeURIComponent(job.job) + "/frames/";
    for (const f of done) {
      const key = job.job + "/" + f.frame;
      if (thumbs[key]) continue;
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      img.className = "thumb";
      img.loading = "lazy";
      img.alt = "frame " + f.frame;
      img.src = base + f.frame + "/thumb";
      img.onerror = () => { if (!img.dataset.full) { img.dataset.full = "1"; img.src = base + f.frame + "/image"; } };
      fig.appendChild(img);
      fig.appendChild(document.createTextNode(String(f.frame)));
      $("thumbs").appendChild(fig);
      thumbs[key] = fig;
    }
    // The latest frame is the one committed last (the status's latest_frame, by the ledger's order), not the
    // highest number: frames of different chunks finish out of order.
    const latestFrame = job.latest_frame ?? (done.length ? done[done.length - 1].frame : null);
    if (latestFrame != null) {
      const src = base + latestFrame + "/image";
      const latest = $("latest");
      if (latest.dataset.src !== src) {
        latest.dataset.src = src;
        latest.dataset.frame = String(latestFrame);
        // A format the browser cannot show (EXR): a large tone-mapped preview, else the thumbnail.
        latest.onerror = () => {
          latest.onerror = () => { latest.onerror = null; latest.src = base + latestFrame + "/thumb"; };
          latest.src = base + latestFrame + "/preview";
        };
        latest.src = src;
        latest.hidden = false;
        $("latest-caption").textContent = "frame " + latestFrame;
      }
    }
    renderMovie(job);
  }

  // The movie (the scene's movie format, or submit --video's preview) once the submitter has made it; served by
  // the submitter's dashboard, so elsewhere the page says where it is.
  function renderMovie(status) {
    // A scene's movie output comes as movie*, `submit --video`'s preview as video*: the page shows either.
    const job = {
      job: status.job, movie: status.movie || status.video, movie_state: status.movie_state || status.video_state,
      movie_error: status.movie_error || status.video_error,
    };
    const movie = $("movie");
    const note = $("movie-note");
    $("movie-section").hidden = !job.movie && !job.movie_state;
    if (job.movie_state === "made") {
      const src = "/api/jobs/" + encodeURIComponent(job.job) + "/movie";
      if (movie.dataset.src !== src) { movie.dataset.src = src; movie.src = src; }
      movie.hidden = false;
      note.textContent = job.movie || "";
    } else {
      movie.hidden = true;
      if (movie.dataset.src) { movie.removeAttribute("src"); delete movie.dataset.src; movie.load(); }
      if (job.movie_state === "failed") note.textContent = "The movie could not be made: " + (job.movie_error || "see the node's log");
      else if (job.movie_state) note.textContent = "The movie is " + job.movie_state + "…";
      else if (job.movie) note.textContent = "The node that submitted this job makes its movie: " + job.movie;
      else note.textContent = "";
    }
  }

  async function act(action) {
    if (!currentJob) return;
    if (action === "remove" && !confirm("Remove job " + currentJob + " and its files everywhere?")) return;
    let url = "/api/jobs/" + encodeURIComponent(currentJob) + "/" + action;
    if (action === "priority") url += "?n=" + encodeURIComponent($("priority-input").value);
    const reply = await fetch(url, { method: "POST" });
    const body = await reply.json().catch(() => ({}));
    $("action-result").textContent = reply.ok ? action + ": " + (body.state || "ok") : body.error || "failed";
  }

  async function showLog(frame) {
    $("log-frame").textContent = "frame " + frame;
    const reply = await fetch("/api/jobs/" + encodeURIComponent(currentJob) + "/log?frame=" + frame);
    const body = await reply.json().catch(() => ({}));
    if (!reply.ok) { $("log").textContent = body.error || "no log"; return; }
    const texts = [];
    (function walk(v) {
      if (typeof v === "string" && v.includes("\n")) texts.push(v);
      else if (Array.isArray(v)) v.forEach(walk);
      else if (v && typeof v === "object") Object.values(v).forEach(walk);
    })(body);
    $("log").textContent = texts.length ? texts.join("\n----\n") : JSON.stringify(body, null, 2);
  }

  document.addEventListener("click", (e) => {
    const row = e.target.closest("tr[data-job]");
    if (row) { location.hash = "job=" + encodeURIComponent(row.dataset.job); return; }
    const button = e.target.closest("button[data-action]");
    if (button) { act(button.dataset.action); return; }
    const log = e.target.closest("a[data-log]");
    if (log) { e.preventDefault(); showLog(log.dataset.log); }
  });
  window.addEventListener("hashchange", connect);
  connect();
})();
