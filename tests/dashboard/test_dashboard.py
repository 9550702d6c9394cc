#!/usr/bin/python3
"""The dashboard in a real browser (Debian's headless chromium through python3-selenium), on a 2-node loopback farm.

Two `rexnode join --renderer simulated:MS --http 127.0.0.1:0` (multicast on 127.0.0.1 only, a discovery group of
this test's own). Blender makes a small scene; the simulated renderer writes a real PNG per frame. Then:
  - the API without the token is 401; with it (Bearer header) it answers the CLI's `--json` shapes;
  - the page shows both peers and the running job, a rendered frame's thumbnail loads (naturalWidth > 0), and the
    frames-done counter changes while a marker set on `window` survives (no reload);
  - Cancel clicked in the page cancels the job (`rexnode status --json` says canceled), and then the API's jobs and
    status equal the CLI's exactly;
  - a `--video` job's page plays its movie from the dashboard (a <video> whose source answers 200 video/mp4), and
    its large frame is the status's `latest_frame` (the done frame with the highest `done_index`).
A screenshot goes to docs/dashboard.png. Waits are for events with generous bounds; nothing assumes who leads.
Run: /usr/bin/python3 -m unittest -v tests/dashboard/test_dashboard.py   (Debian's selenium imports only there)
"""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REXNODE = os.path.abspath(os.path.join(ROOT, os.environ.get("REXNODE_BIN", ".build/debug/rexnode")))
BLENDER = os.environ.get("BLENDER", "blender")
DISCOVERY = "239.255.95.95:7795"
FRAMES = 40
FRAME_MS = 1500
TIMEOUT = 180


def run(args, timeout=60):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def wait_for(what, check, timeout=TIMEOUT, every=0.5):
    started = time.monotonic()
    last = None
    while time.monotonic() - started < timeout:
        try:
            last = check()
        except Exception as error:  # noqa: BLE001 - a busy node may not answer yet
            last = error
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class DashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix="rex-dash-")
        cls.procs, cls.logs = [], []
        cls.dirs = [os.path.join(cls.work, f"n{i}") for i in (1, 2)]
        cls.blend = os.path.join(cls.work, "dash.blend")
        made = run([BLENDER, "-b", "--factory-startup", "--python",
                    os.path.join(ROOT, "Tests", "Fixtures", "make_test_scene.py"), "--", cls.blend,
                    "--frames", str(FRAMES), "--width", "96", "--height", "64"], timeout=300)
        assert made.returncode == 0, made.stdout + made.stderr
        out = run([REXNODE, "init", "--data", cls.dirs[0]])
        assert out.returncode == 0, out.stderr
        token = out.stdout.strip().splitlines()[-1]
        for i, data in enumerate(cls.dirs, start=1):
            log = open(data + ".log", "w")
            cls.logs.append(log)
            cls.procs.append(subprocess.Popen(
                [REXNODE, "join", "--data", data, "--token", token, "--name", f"n{i}", "--listen", "127.0.0.1:0",
                 "--interface", "127.0.0.1", "--discovery", DISCOVERY, "--slots", "1",
                 "--renderer", f"simulated:{FRAME_MS}", "--http", "127.0.0.1:0"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))

        def formed():
            for data in cls.dirs:
                out = run([REXNODE, "peers", "--json", "--data", data], 10)
                if out.returncode != 0:
                    return False
                peers = json.loads(out.stdout)
                if len([p for p in peers if p["state"] == "alive" and p["member"]]) != 2:
                    return False
                if not any(p["self"] and p["role"] in ("leader", "follower") for p in peers):
                    return False
            return True
        try:
            wait_for("a farm of 2", formed, timeout=240)
            out = wait_for("the dashboard URL",
                           lambda: (r := run([REXNODE, "dashboard", "--data", cls.dirs[0]])).returncode == 0 and r)
            cls.url = out.stdout.strip().splitlines()[-1]
            cls.base = cls.url.split("/?")[0]
            cls.token = cls.url.split("token=")[1]
        except Exception:
            cls.tearDownClass(failed=True)
            raise

    @classmethod
    def tearDownClass(cls, failed=False):
        for proc in cls.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in cls.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in cls.logs:
            log.close()
        if failed or os.environ.get("KEEP"):
            for data in cls.dirs:
                if os.path.exists(data + ".log"):
                    with open(data + ".log") as log:
                        print(f"--- {data}.log (tail)\n" + "".join(log.readlines()[-30:]))
            print("kept", cls.work)
        else:
            shutil.rmtree(cls.work, ignore_errors=True)

    # MARK: helpers

    def cli_json(self, *args):
        out = run([REXNODE, *args, "--json", "--data", self.dirs[0]], 30)
        self.assertEqual(out.returncode, 0, out.stderr)
        return json.loads(out.stdout)

    def api(self, path, token=True, method="GET"):
        request = urllib.request.Request(self.base + path, method=method)
        if token:
            request.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    # MARK: the test

    def test_dashboard(self):
        # No token, a wrong one: 401, with a one-sentence JSON error.
        for path in ("/", "/api/peers", "/api/jobs", "/api/events", "/metrics"):
            status, body = self.api(path, token=False)
            self.assertEqual(status, 401, path)
            self.assertIn("error", json.loads(body))
        status, _ = self.api("/api/peers?token=wrong", token=False)
        self.assertEqual(status, 401)
        status, _ = self.api("/api/jobs?token=" + self.token, token=False)
        self.assertEqual(status, 200)

        # With it: the CLI's shapes (peers carry live fields, so compare who and which keys).
        status, body = self.api("/api/peers")
        self.assertEqual(status, 200)
        api_peers, cli_peers = json.loads(body), self.cli_json("peers")
        self.assertEqual(sorted(p["id"] for p in api_peers), sorted(p["id"] for p in cli_peers))
        self.assertEqual([sorted(p) for p in api_peers], [sorted(p) for p in cli_peers])

        submitted = run([REXNODE, "submit", self.blend, "--no-wait", "--json", "--name", "dash", "--frames", f"1-{FRAMES}",
                         "--output", os.path.join(self.work, "out"), "--data", self.dirs[0]], 300)
        self.assertEqual(submitted.returncode, 0, submitted.stderr)
        job = json.loads(submitted.stdout)["job"]

        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        options = webdriver.ChromeOptions()
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000", "--no-first-run", "--no-proxy-server"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                                  options=options)
        try:
            driver.get(self.url)
            wait_for("both peers on the page",
                     lambda: len(driver.find_elements(By.CSS_SELECTOR, "#peers tbody tr")) == 2)
            names = sorted(e.text.split()[0] for e in driver.find_elements(By.CSS_SELECTOR, "#peers tbody td:first-child"))
            self.assertEqual(names, ["n1", "n2"])
            driver.execute_script("window.rexMarker = 'still the same page';")
            row = wait_for("the job on the page",
                           lambda: driver.find_elements(By.CSS_SELECTOR, f'#jobs tr[data-job="{job}"]'))[0]
            wait_for("the job running", lambda: driver.find_element(
                By.CSS_SELECTOR, f'#jobs tr[data-job="{job}"] .job-state').text == "running")
            row.click()
            wait_for("the job's page", lambda: driver.find_element(By.ID, "job-id").text == job)
            first = wait_for("a frame done", lambda: int(driver.find_element(By.ID, "job-done").text or 0) >= 1
                             and driver.find_element(By.ID, "job-done").text)
            wait_for("a loaded thumbnail", lambda: driver.execute_script(
                "return [...document.querySelectorAll('#thumbs img')].some(i => i.complete && i.naturalWidth > 0)"))
            wait_for("the latest frame shown large", lambda: driver.execute_script(
                "const i = document.getElementById('latest'); return i.complete && i.naturalWidth > 0"))
            wait_for("the counter to move without a reload",
                     lambda: driver.find_element(By.ID, "job-done").text != first)
            self.assertEqual(driver.execute_script("return window.rexMarker"), "still the same page")
            os.makedirs(os.path.join(ROOT, "docs"), exist_ok=True)
            driver.save_screenshot(os.path.join(ROOT, "docs", "dashboard.png"))

            driver.find_element(By.ID, "btn-cancel").click()
            wait_for("the job canceled", lambda: self.cli_json("status", job)["state"] == "canceled")
            wait_for("the page to say canceled", lambda: driver.find_element(By.ID, "job-state").text == "canceled")
            self.assertEqual(driver.execute_script("return window.rexMarker"), "still the same page")

            # A --video job: once its movie is made, its page plays it from the dashboard, and the large frame is the
            # one the ledger committed last (status's latest_frame), not simply the highest number.
            made = run([REXNODE, "submit", self.blend, "--no-wait", "--json", "--name", "movie", "--frames", "1-4",
                        "--video", "--output", os.path.join(self.work, "out-movie"), "--data", self.dirs[0]], 300)
            self.assertEqual(made.returncode, 0, made.stderr)
            movie_job = json.loads(made.stdout)["job"]
            status = wait_for("the movie made", lambda: (s := self.cli_json("status", movie_job))
                              .get("video_state") == "made" and s)
            self.assertTrue(os.path.isfile(status["video"]), status)
            latest = max((f for f in status["frames"] if f["state"] == "done"), key=lambda f: f["done_index"])
            self.assertEqual(status["latest_frame"], latest["frame"], status)
            driver.get(self.base + "/#job=" + movie_job)
            wait_for("the movie's page", lambda: driver.find_element(By.ID, "job-id").text == movie_job)
            wait_for("the video element shown", lambda: driver.execute_script(
                "const v = document.getElementById('movie'); return !v.hidden && v.src.endsWith('/movie')"))
            served = driver.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "fetch(document.getElementById('movie').src).then(r => done(r.status + ' ' + r.headers.get('content-type')))")
            self.assertEqual(served, "200 video/mp4")
            if driver.execute_script("return document.createElement('video').canPlayType('video/mp4; codecs=\"avc1.42E01E\"')"):
                wait_for("the movie's metadata loaded", lambda: driver.execute_script(
                    "return document.getElementById('movie').readyState >= 1"), timeout=60)
            wait_for("the latest frame by completion", lambda: driver.execute_script(
                "return document.getElementById('latest').dataset.frame") == str(status["latest_frame"]))
        finally:
            driver.quit()

        # A finished job is still: the API's JSON equals the CLI's.
        def same(path, *cli):
            status, body = self.api(path)
            return status == 200 and json.loads(body) == self.cli_json(*cli)
        wait_for("/api/jobs equal to jobs --json", lambda: same("/api/jobs", "jobs"), timeout=30)
        wait_for("/api/jobs/JOB equal to status --json", lambda: same(f"/api/jobs/{job}", "status", job), timeout=30)

        # Errors are one sentence in JSON with a 4xx.
        status, body = self.api("/api/jobs/nosuchjob")
        self.assertEqual(status, 404)
        self.assertIn("error", json.loads(body))
        status, body = self.api(f"/api/jobs/{job}/cancel", method="POST")
        self.assertEqual(status, 400)
        status, body = self.api(f"/api/jobs/{job}/priority", method="POST")
        self.assertEqual(status, 400)
        status, body = self.api("/metrics")
        self.assertEqual(status, 200)
        self.assertIn(b"rexnode_peers_alive 2", body)


if __name__ == "__main__":
    unittest.main()
