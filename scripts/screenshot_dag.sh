#!/usr/bin/env bash
# Screenshots of the mnist_training_pipeline DAG in the Airflow 3 UI.
#
# Starts a throwaway local Airflow (api-server, scheduler, dag-processor with
# the LocalExecutor, SQLite, everything bound to 127.0.0.1), triggers one short
# run, and photographs the UI with headless Chromium, driven over the DevTools
# protocol on a pipe (no debugging port is opened). Writes:
#
#   docs/images/airflow-dag.png   the DAG's graph view
#   docs/images/airflow-run.png   the finished run (graph view, task states)
#
# Everything it starts is stopped on exit; its temporary files are removed.
#
# Usage: scripts/screenshot_dag.sh [DATA_SOURCE]
#   DATA_SOURCE  (or $MNIST_DATA_SOURCE) 'download' (default), or a folder/URI
#                holding the four MNIST .gz files, passed as the run's conf.
# Environment:   PORT (8080), EPOCHS (2: one epoch ends just under the default
#                min_accuracy 0.97 gate, so deploy would fail), OUT_DIR (docs/images),
#                CHROMIUM (chromium, chromium-browser or google-chrome),
#                VENV (.venv, if it exists; else airflow/python from PATH),
#                RUN_TIMEOUT seconds to wait for the run (900),
#                KEEP_TMP=1 keeps the temporary AIRFLOW_HOME (logs) and artifacts.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DAG_ID=mnist_training_pipeline
DATA_SOURCE="${1:-${MNIST_DATA_SOURCE:-download}}"
# A relative mirror path is made absolute: tasks run from another folder.
if [[ "$DATA_SOURCE" != download && "$DATA_SOURCE" != *://* && -e "$DATA_SOURCE" ]]; then
    DATA_SOURCE="$(cd "$DATA_SOURCE" && pwd)"
fi
PORT="${PORT:-8080}"
EPOCHS="${EPOCHS:-2}"
OUT_DIR="${OUT_DIR:-$ROOT/docs/images}"
RUN_TIMEOUT="${RUN_TIMEOUT:-900}"
VENV="${VENV:-$ROOT/.venv}"
if [[ -x "$VENV/bin/airflow" ]]; then
    AIRFLOW="$VENV/bin/airflow"; PYTHON="$VENV/bin/python"
else
    AIRFLOW="$(command -v airflow)"; PYTHON="$(command -v python3)"
fi
CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}"
[[ -n "$CHROMIUM" ]] || { echo "Chromium not found (Debian: apt-get install chromium); set CHROMIUM" >&2; exit 1; }
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "port $PORT is already in use; set PORT" >&2; exit 1
fi

TMP="$(mktemp -d)"
PGIDS=()
cleanup() {
    local pg
    for pg in "${PGIDS[@]}"; do kill -TERM -- "-$pg" 2>/dev/null || true; done
    for _ in $(seq 60); do  # up to 30 s to shut down cleanly
        # Still running: a member of our groups that is not a zombie (exited
        # LocalExecutor workers may wait a while for init to reap them).
        ps -eo pgid=,stat= | awk -v groups=" ${PGIDS[*]} " \
            'index(groups, " " $1 " ") && $2 !~ /^Z/ {found = 1} END {exit !found}' || break
        sleep 0.5
    done
    for pg in "${PGIDS[@]}"; do kill -KILL -- "-$pg" 2>/dev/null || true; done
    if [[ -n "${KEEP_TMP:-}" ]]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export AIRFLOW_HOME="$TMP/airflow"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM=4
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True
export AIRFLOW__API_AUTH__JWT_SECRET="$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')"
export AIRFLOW__API__SECRET_KEY="$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')"
export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=0
export MNIST_STORAGE_ROOT="$TMP/storage"
mkdir -p "$AIRFLOW_HOME" "$MNIST_STORAGE_ROOT" "$OUT_DIR"

echo "AIRFLOW_HOME=$AIRFLOW_HOME (logs: $AIRFLOW_HOME/*.log)"
"$AIRFLOW" db migrate > "$AIRFLOW_HOME/migrate.log" 2>&1

start() {  # start NAME CMD...: in its own session/process group, logged
    local name="$1"; shift
    setsid "$@" > "$AIRFLOW_HOME/$name.log" 2>&1 < /dev/null &
    PGIDS+=("$!")
}
start api-server "$AIRFLOW" api-server --host 127.0.0.1 --port "$PORT"
start scheduler "$AIRFLOW" scheduler --skip-serve-logs
start dag-processor "$AIRFLOW" dag-processor

# The driver runs in its own process group too, so Chromium (its child) is
# stopped with it whatever happens.
set +e
setsid "$PYTHON" - "$PORT" "$DAG_ID" "$DATA_SOURCE" "$EPOCHS" "$OUT_DIR" "$CHROMIUM" "$TMP/chromium" "$RUN_TIMEOUT" <<'EOF' &
import base64, fcntl, io, json, os, subprocess, sys, time, urllib.parse, urllib.request

port, dag_id, data_source, epochs, out_dir, chromium, profile, run_timeout = sys.argv[1:]
base = f"http://127.0.0.1:{port}"
W, H = 1400, 760


def http(method, path, body=None, token=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


def wait_for(what, check, timeout, every=2.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(every)


class Chromium:
    """Headless Chromium driven over --remote-debugging-pipe (fds 3 and 4)."""

    def __init__(self):
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        # Chromium reads commands on fd 3 and answers on fd 4. Park the child's
        # ends at fds >= 10 first, so the two dup2s cannot clobber each other.
        cmd_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD_CLOEXEC, 10)
        ans_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
             f"--user-data-dir={profile}", f"--window-size={W},{H}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False,  # Python's own fds are close-on-exec anyway; 3 and 4 must stay
            preexec_fn=lambda: (os.dup2(cmd_r, 3), os.dup2(ans_w, 4)))
        os.close(cmd_r)
        os.close(ans_w)
        self.buf, self.next_id, self.session = b"", 0, None

    def send(self, method, params=None, session=True):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.to_chrome, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self.buf:
                chunk = os.read(self.from_chrome, 1 << 20)
                if not chunk:
                    sys.exit("chromium went away")
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self):
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": W, "height": H, "deviceScaleFactor": 1, "mobile": False})

    def eval(self, expr):
        res = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True})
        return res.get("result", {}).get("value")

    def goto(self, url, ready_js, settle=2.0, timeout=60):
        self.send("Page.navigate", {"url": url})
        wait_for(f"{url} to render", lambda: self.eval(ready_js), timeout, every=0.5)
        time.sleep(settle)  # let layout animations (fit-view) finish

    def shot(self, path):
        data = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        try:  # shrink with Pillow if it is there: a palette PNG is a fraction of the size
            from PIL import Image
            img = Image.open(io.BytesIO(data)).convert("RGB")
            img = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            buf = io.BytesIO()
            img.save(buf, "PNG", optimize=True)
            data = buf.getvalue()
        except ImportError:
            pass
        with open(path, "wb") as f:
            f.write(data)
        print(f"wrote {path} ({len(data) // 1024} KiB)", flush=True)

    def close(self):
        try:
            self.send("Browser.close", session=False)
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()


print("waiting for the api-server and for the DAG to be parsed ...", flush=True)
wait_for("the api-server", lambda: http("GET", "/api/v2/monitor/health"), 180)
# With simple_auth_manager_all_admins, GET /auth/token hands out an admin token.
token = wait_for("a token", lambda: http("GET", "/auth/token")["access_token"], 60)
wait_for(f"DAG {dag_id}", lambda: http("GET", f"/api/v2/dags/{dag_id}", token=token), 180)
http("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False}, token=token)

graph_ready = ("document.querySelectorAll('.react-flow__node').length >= 3 && "
               "['preprocess','train','deploy'].every(t => document.body.innerText.includes(t))")
browser = Chromium()
try:
    browser.open()
    # The DAG page shows a grid or a graph; which one is a localStorage setting.
    browser.goto(f"{base}/", "document.readyState === 'complete'", settle=0.5)
    browser.eval("localStorage.setItem('default_dag_view', JSON.stringify('graph'))")
    browser.goto(f"{base}/dags/{dag_id}", graph_ready)
    browser.shot(os.path.join(out_dir, "airflow-dag.png"))

    conf = {"epochs": int(epochs), "data_source": data_source}
    run = http("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf}, token=token)
    run_id = run["dag_run_id"]
    print(f"triggered {run_id} with conf {conf}; waiting for it to finish ...", flush=True)
    state = wait_for("the run", lambda: (lambda s: s if s in ("success", "failed") else None)(
        http("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", token=token)["state"]), int(run_timeout), every=5)
    print(f"run {run_id}: {state}", flush=True)
    if state != "success":  # keep the picture of a good run rather than overwrite it
        sys.exit(f"run {state}; airflow-run.png not updated (KEEP_TMP=1 keeps the task logs)")

    quoted = urllib.parse.quote(run_id, safe="")
    done = graph_ready + " && document.body.innerText.toLowerCase().includes('" + state + "')"
    browser.goto(f"{base}/dags/{dag_id}/runs/{quoted}", done, settle=3.0)
    browser.shot(os.path.join(out_dir, "airflow-run.png"))
finally:
    browser.close()
EOF
DRIVER=$!
PGIDS+=("$DRIVER")
wait "$DRIVER"
rc=$?
set -e
if [[ $rc != 0 ]]; then
    echo "failed (rc=$rc); last lines of the Airflow logs:" >&2
    tail -n 20 "$AIRFLOW_HOME"/{api-server,scheduler,dag-processor}.log >&2 || true
fi
exit "$rc"
