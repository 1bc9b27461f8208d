#!/usr/bin/env bash
# Record `router-plugin status --watch` while `router-plugin demo` runs, as text (tmux capture-pane).
#
#   docs/record_status_watch.sh [REDIS_URL] [OUT]       (default redis://127.0.0.1:6379/0, docs/status-watch.txt)
#
# Needs tmux and a Redis both commands can reach (the demo's workers and `status` share it, as real workers
# would). Pane 0 runs the demo (4 worker processes x 25 requests at once; extra demo options pass through
# DEMO_ARGS, e.g. DEMO_ARGS=--gone); pane 1 watches. A frame is kept whenever a used/limit count or a deployment
# state changes.
set -euo pipefail
REDIS_URL=${1:-redis://127.0.0.1:6379/0}
OUT=${2:-$(dirname "$0")/status-watch.txt}
CONFIG=$(mktemp /tmp/router-plugin-demo-XXXX.yaml)
SESSION=rp-record-$$
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
export LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1

tmux new-session -d -s "$SESSION" -x 200 -y 80
tmux split-window -v -t "$SESSION:0"
DEMO="router-plugin demo --quiet ${DEMO_ARGS:-} --redis-url $REDIS_URL --write-config $CONFIG"
tmux send-keys -t "$SESSION:0.0" "$DEMO" Enter
for _ in $(seq 120); do [[ -s "$CONFIG" ]] && break; sleep 0.5; done   # the demo writes it once it started
tmux send-keys -t "$SESSION:0.1" "router-plugin status --config $CONFIG --watch --interval 1" Enter

frames=$(mktemp)
last=""
start=$(date +%s)
while true; do
  now=$(( $(date +%s) - start ))
  frame=$(tmux capture-pane -p -J -t "$SESSION:0.1")
  # what changes a frame: fixed-window counts (the OpenRouter minute, every day) and deployment states; a Groq
  # bucket draining second by second does not
  key=$( (printf '%s\n' "$frame" | grep -m1 'requests/min'; printf '%s\n' "$frame" | grep -E 'requests/day|free-chat') \
        | sed -E 's/\(in [0-9hms]+\)//g; s/[0-9:]{8}//g' || true)
  if [[ "$key" != "$last" && "$frame" == *"pool / limit"* ]]; then
    printf '\n===== status pane, %ss after the demo started =====\n%s\n' "$now" "$frame" >> "$frames"
    last=$key
  fi
  if tmux capture-pane -p -S - -t "$SESSION:0.0" | grep "quota left (shared by every worker)" >/dev/null; then
    sleep 3; done_frame=$(tmux capture-pane -p -J -t "$SESSION:0.1")
    printf '\n===== status pane, after the burst =====\n%s\n' "$done_frame" >> "$frames"
    break
  fi
  (( now > 120 )) && break
  sleep 0.5
done
{
  echo "Recorded terminal session: \`router-plugin status --watch\` during \`router-plugin demo\` (tmux capture-pane)."
  echo "Made by docs/record_status_watch.sh on $(date -u '+%Y-%m-%d %H:%M UTC'); store $REDIS_URL; $(nproc) cores,"
  echo "load average at the start: $LOAD (other test suites were running on the same machine)."
  echo
  echo "pane 0 \$ $DEMO"
  echo "pane 1 \$ router-plugin status --config $CONFIG --watch --interval 1"
  cat "$frames"
  echo
  echo "===== demo pane, at the end ====="
  tmux capture-pane -p -J -S - -t "$SESSION:0.0" | grep -v '^root@\|^\$ ' | sed -e '/^$/N;/^\n$/D'
} > "$OUT"
tmux send-keys -t "$SESSION:0.1" C-c
tmux kill-session -t "$SESSION"
rm -f "$frames" "$CONFIG"
echo "wrote $OUT"
