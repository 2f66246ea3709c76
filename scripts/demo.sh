#!/usr/bin/env bash
# The newcomer flow behind `make demo` (README): start `lathe serve` on its embedded default (SQLite and blobs in
# ./lathe-data), put a tiny Llama model in its models dir, push a sample dataset and capability, submit a Tinker
# SFT job and follow it live until the server's worker has trained it, download the adapter, then show what the
# adapter learned: base model vs adapter, side by side, on numbers that are in neither split of the dataset.
#
# The task (examples/datasets/even-odd): "Is N even or odd?" -> "even" / "odd". The validation split and the
# demo prompts hold numbers the training split lacks, so a right answer means the rule was learned, not the rows.
#
# Rerunnable: the model, the pushed artifacts and earlier jobs are kept; each run submits and trains a new job.
# Environment: BUILD (build dir of the lathe binary, default build) or LATHE_BIN (the binary itself),
# LATHE_DEMO_DATA (data dir, ./lathe-data), LATHE_DEMO_PORT (8080; when busy the server picks a free port),
# LATHE_DEMO_STEPS (optimizer steps, default 150; tests/py/test_demo.py runs fewer).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
lathe=${LATHE_BIN:-$root/${BUILD:-build}/lathe}
data=${LATHE_DEMO_DATA:-$root/lathe-data}
steps=${LATHE_DEMO_STEPS:-150}
model_id=tiny-llama
model_dir="$data/models/$model_id"
ds=examples/datasets/even-odd
cap=examples/capabilities/one-word
system_prompt=$(cat "$cap/agents/assistant.md") # no front matter: the file is the prompt
held_out=(7 12 58 371 600 913 2026 8765) # in neither split of even-odd
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
[ -x "$lathe" ] || {
    echo "no lathe binary at $lathe: run make (or make demo) first"
    exit 1
}
t_start=$(date +%s)

step "1. a tiny random-weight Llama model for the server's models dir (lathe model init-tiny)"
# The model is the demo's own: one written by an older init-tiny (other weights, other tokenizer) is replaced,
# since the recipe below was tuned on this build's. init-tiny is deterministic and takes a moment.
mkdir -p "$data/models"
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
made=$("$lathe" model init-tiny "$fresh/m" --layers 2 --hidden 64 --heads 4 --kv-heads 2 --init-std 0.1 --seed 1)
if [ -f "$model_dir/config.json" ] && cmp -s "$fresh/m/model.safetensors" "$model_dir/model.safetensors" &&
    cmp -s "$fresh/m/tokenizer.json" "$model_dir/tokenizer.json"; then
    echo "   $model_dir exists: reused"
else
    if [ -d "$model_dir" ]; then echo "   $model_dir was written by another init-tiny: replaced"; fi
    rm -rf "$model_dir"
    mv "$fresh/m" "$model_dir"
    echo "${made//$fresh\/m/$model_dir}"
fi

step "2. server: lathe serve (SQLite store, blobs and models in $data; one in-process training worker)"
mkdir -p "$data"
log="$data/demo-server.log"
port=${LATHE_DEMO_PORT:-8080}
if [ "$port" != 0 ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then port=0; fi # busy: any free port
"$lathe" serve --data-dir "$data" --listen "127.0.0.1:$port" >"$log" 2>&1 &
server=$!
stop_server() {
    rm -rf "$fresh"
    kill -TERM "$server" 2>/dev/null || return 0
    wait "$server" 2>/dev/null || true
}
trap stop_server EXIT
url=""
for _ in $(seq 1 300); do
    url=$(sed -n 's/^lathe: listening on \(http[^ ]*\).*/\1/p' "$log" | head -1)
    [ -n "$url" ] && break
    kill -0 "$server" 2>/dev/null || {
        cat "$log"
        exit 1
    }
    sleep 0.1
done
[ -n "$url" ] || {
    echo "the server did not start within 30 s; see $log"
    exit 1
}
grep '^lathe:' "$log" | sed 's/^/   /'
export LATHE_SERVER="$url" LATHE_API_KEY
LATHE_API_KEY=$(cat "$data/admin.key")
export XDG_CONFIG_HOME="$data/demo-config" # a `lathe login` of yours elsewhere is neither used nor changed
"$lathe" train catalog

step "3. push the dataset and the capability (tar.gz archives; every row is checked on upload)"
"$lathe" dataset show even-odd@0.1.0 >/dev/null 2>&1 || "$lathe" dataset push "$ds"
"$lathe" capability show one-word@0.1.0 >/dev/null 2>&1 || "$lathe" capability push "$cap"
"$lathe" dataset list
echo "   a training row:   $(head -1 "$ds/data/train.jsonl")"
echo "   capability prompt (the system message of every row): \"$system_prompt\""

step "4. submit a Tinker SFT job, then follow it live (lathe train sft ..., lathe train watch JOB)"
# The recipe (batch 32, lr 0.005 decaying over 150 steps, LoRA r16) learned the rule on every LoRA seed tried
# (0-6: 42 of 42 held-out questions right, greedy); lr 0.01 over 100 steps stalled at guessing on some seeds.
job=$("$lathe" train sft --json --model "$model_id" --capability one-word@0.1.0 --dataset even-odd@0.1.0 \
    --eval-dataset even-odd@0.1.0 --steps "$steps" --batch-size 32 --learning-rate 0.005 --lora-rank 16 \
    --lora-alpha 32 --checkpoint-interval 50 --name demo-even-odd --tag demo |
    sed -n 's/^  "id": "\([0-9a-f-]\{36\}\)",$/\1/p' | head -1)
[ -n "$job" ] || {
    echo "submitting the job failed"
    exit 1
}
echo "   submitted job $job; the server's worker claims it and trains"
"$lathe" train watch "$job" || {
    echo "the job did not complete: see the lines above, lathe train logs $job, and $log"
    exit 1
}

step "5. download the trained adapter (lathe train pull)"
adapter="$data/demo-adapter"
rm -rf "$adapter"
"$lathe" train pull "$job" "$adapter"

step "6. base model vs adapter, greedy, on numbers in neither split (a rule learned, not rows remembered)"
# The prompt is rendered as the job rendered its rows: the tiny model's role_colon chat format with the
# capability prompt as the system message.
sample() { # sample PROMPT [--adapter DIR]
    "$lathe" model sample "$model_dir" "${@:2}" --prompt "System: $system_prompt"$'\n\n'"User: $1"$'\n\nAssistant:' \
        --max-tokens 8 --temperature 0 --stop $'\n' | tr -d '\n' | tr -c '[:print:]' '?' |
        sed 's/^ *//; s/ *$//' | cut -c1-22
}
printf '   %-22s | %-8s | %-22s | %s\n' prompt expected "base $model_id" "with the adapter"
right=0
for n in "${held_out[@]}"; do
    want=odd
    [ $((n % 2)) = 0 ] && want=even
    b=$(sample "Is $n even or odd?")
    a=$(sample "Is $n even or odd?" --adapter "$adapter")
    [ "$a" = "$want" ] && right=$((right + 1))
    printf '   %-22s | %-8s | %-22s | %s\n' "Is $n even or odd?" "$want" "\"$b\"" "\"$a\""
done
echo "   the adapter answered $right of ${#held_out[@]} right"

step "done in $(($(date +%s) - t_start)) s"
echo "   trained adapter (PEFT: loads in HF peft and vLLM): $adapter"
echo "   the job: lathe train get $job   (server log: $log; API key: $data/admin.key)"
echo "   stopping the server (started again by: ${BUILD:-build}/lathe serve --data-dir $data)"
