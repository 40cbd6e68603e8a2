#!/usr/bin/env bash
# The daemon's status page in a real browser (Debian's chromium, headless): a daemon with
# --metrics on 127.0.0.1, a push that lasts several seconds (an in-memory source, paused and
# resumed so it moves in bursts), and two loads of the page a second apart. Checks that the
# DOM lists the session, that a path with markup in it shows as text (no element made from
# it), and that the throughput plot moved between the loads. Keeps a screenshot:
# ci-artifacts/metrics-page.png (and both DOM dumps next to it).
set -euo pipefail
cd "$(dirname "$0")/.."
out=ci-artifacts
mkdir -p "$out"
command -v chromium >/dev/null || { echo "ci/metrics-page.sh: chromium is missing (ci/deps.sh installs it)" >&2; exit 1; }
# The binary `ci/test.sh` built (the same build command: nothing to do after that stage), or
# BLIT_BIN.
if [ -n "${BLIT_BIN:-}" ]; then
  blit=$BLIT_BIN
else
  cargo test -q --workspace --locked --no-run
  target=$(cargo metadata -q --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  blit="$target/debug/blit"
fi
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/root"

"$blit" daemon --root "$work/root" --listen 127.0.0.1:0 --metrics 127.0.0.1:0 --no-rdma 2>"$work/daemon.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$work/daemon.log" && break; sleep 0.1; done
control=$(sed -n 's/^blit daemon listening on //p' "$work/daemon.log")
metrics=$(sed -n 's|^blit daemon metrics on http://\(.*\)/$|\1|p' "$work/daemon.log")
[ -n "$control" ] && [ -n "$metrics" ] || { cat "$work/daemon.log" >&2; exit 1; }
echo "daemon: control $control, metrics http://$metrics/"

# A path with markup in it: the page must show it as text.
path='page-<b id="injected">bold</b>'
"$blit" xfer --mem 64G - "blit://$control/$path" --stall-timeout 60 >/dev/null 2>"$work/client.log" &
client=$!
pids+=($client)
# Pause and resume the client so the transfer lasts and its rate changes from second to second.
(
  while kill -0 "$client" 2>/dev/null; do
    kill -STOP "$client" 2>/dev/null || break; sleep 0.7
    kill -CONT "$client" 2>/dev/null || break; sleep 0.15
  done
) &
pids+=($!)

# Wait for the session to have moved bytes, and for two throughput samples.
python3 - "$metrics" <<'EOF'
import json, sys, time, urllib.request
deadline = time.time() + 20
while time.time() < deadline:
    st = json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/api/status", timeout=5))
    if st["sessions"] and st["sessions"][0]["bytes"] > 0 and len(st["history"]) >= 3:
        sys.exit(0)
    time.sleep(0.2)
sys.exit("no session with bytes in /api/status within 20 s: " + json.dumps(st))
EOF

browse() { chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
  --user-data-dir="$work/chromium" "$@" "http://$metrics/" 2>>"$work/chromium.log"; }
browse --virtual-time-budget=2000 --dump-dom >"$out/metrics-page-1.html"
sleep 1.5
browse --virtual-time-budget=2000 --dump-dom >"$out/metrics-page-2.html"
browse --virtual-time-budget=2000 --window-size=900,600 --screenshot="$out/metrics-page.png" >/dev/null
[ -s "$out/metrics-page.png" ] || { echo "no screenshot" >&2; cat "$work/chromium.log" >&2; exit 1; }

python3 - "$out/metrics-page-1.html" "$out/metrics-page-2.html" "$path" <<'EOF'
import html, re, sys
first, second = (open(p).read() for p in sys.argv[1:3])
path = sys.argv[3]
def points(dom):
    m = re.search(r'<polyline id="plot-push"[^>]*points="([^"]*)"', dom)
    assert m, "no push polyline in the DOM"
    return m.group(1)
for n, dom in (("first", first), ("second", second)):
    body = re.search(r'<tbody id="sessions">(.*?)</tbody>', dom, re.S)
    assert body, f"{n} load: no session table"
    rows = body.group(1)
    assert "<td>push</td>" in rows, f"{n} load: the push session is not listed: {rows}"
    assert html.escape(path, quote=False) in rows, f"{n} load: the path is not shown as text: {rows}"
    assert '<b id="injected"' not in dom, f"{n} load: the path became markup"
    assert points(dom).strip(), f"{n} load: the plot is empty"
assert points(first) != points(second), "the plot did not move between the loads"
print("page shows the session, the path as text, and a moving plot")
EOF
# The daemon's own view of the same session, scraped while it runs.
python3 - "$metrics" <<'EOF'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
line = next(l for l in text.splitlines() if l.startswith('blit_sessions_active{direction="push",transport="tcp"}'))
assert line.endswith(" 1"), line
print("metrics: " + line)
EOF
echo "screenshot: $out/metrics-page.png (DOM dumps: $out/metrics-page-1.html, $out/metrics-page-2.html)"
