#!/usr/bin/env bash
# The newcomer flow behind `make demo` (README): start `lathe serve` on its embedded default (SQLite and blobs in
# ./lathe-data), put SmolLM2-135M-Instruct (the GGUF that scripts/setup.sh fetched) in its models dir, push a
# sample dataset and capability, submit a Tinker SFT job and follow it live until the server's worker has trained
# it, download the adapter, then show what the adapter learned: base model vs adapter, side by side, on questions
# that are in neither split of the dataset, with a count of the answers in the taught format.
#
# The behaviour (examples/datasets/json-answers, examples/capabilities/json-answer): answer a short question with
# one JSON object, {"answer": "..."}, and nothing else. The capability's system prompt asks for exactly that,
# and the base model still answers in prose: the instruction alone does not do it at 135M parameters; a few
# dozen LoRA steps on 64 rows do.
#
# Rerunnable: the model link, the pushed artifacts and earlier jobs are kept; each run submits and trains a new
# job. Environment: BUILD (build dir of the lathe binary, default build) or LATHE_BIN (the binary itself),
# LATHE_DEMO_DATA (data dir, ./lathe-data), LATHE_DEMO_PORT (8080; when busy the server picks a free port),
# LATHE_DEMO_GGUF (the model file, default $(scripts/smollm2-path)), LATHE_DEMO_STEPS (optimizer steps, default
# 30), LATHE_DEMO_PROMPTS (how many of the 8 held-out questions to ask; tests/py/test_demo.py asks fewer).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
lathe=${LATHE_BIN:-$root/${BUILD:-build}/lathe}
data=${LATHE_DEMO_DATA:-$root/lathe-data}
steps=${LATHE_DEMO_STEPS:-30}
gguf=${LATHE_DEMO_GGUF:-$(scripts/smollm2-path)}
model_id=smollm2-135m-instruct
model_file="$data/models/$model_id.gguf"
ds=examples/datasets/json-answers
cap=examples/capabilities/json-answer
system_prompt=$(cat "$cap/agents/assistant.md") # no front matter: the file is the prompt
held_out=( # in neither split of json-answers
    "What is the capital of Australia?"
    "How many days are in a leap year?"
    "What color is the sky on a clear day?"
    "Who discovered penicillin?"
    "What is the largest country by area?"
    "What do caterpillars turn into?"
    "How many strings does a violin have?"
    "What is the freezing point of water in Fahrenheit?"
)
held_out=("${held_out[@]:0:${LATHE_DEMO_PROMPTS:-${#held_out[@]}}}")
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
[ -x "$lathe" ] || {
    echo "no lathe binary at $lathe: run make (or make demo) first"
    exit 1
}
[ -f "$gguf" ] || {
    echo "no model file at $gguf: run scripts/setup.sh (it fetches SmolLM2-135M-Instruct once, 98 MB)"
    exit 1
}
t_start=$(date +%s)

step "1. SmolLM2-135M-Instruct (GGUF, Q4_1) in the server's models dir, as the catalog entry $model_id"
# A link to the file setup.sh fetched (outside the clone): NAME.gguf in the models dir is the model NAME.
mkdir -p "$data/models"
if [ "$(readlink -f "$model_file" 2>/dev/null)" = "$(readlink -f "$gguf")" ]; then
    echo "   $model_file exists: reused"
else
    rm -rf "$model_file"
    ln -s "$(readlink -f "$gguf")" "$model_file"
    echo "   linked $model_file -> $(readlink -f "$gguf")"
fi
"$lathe" model info "$model_file" | grep -E '^(architecture|params|quantization|tokenizer) ' | sed 's/^/   /'

step "2. server: lathe serve (SQLite store, blobs and models in $data; one in-process training worker)"
mkdir -p "$data"
log="$data/demo-server.log"
port=${LATHE_DEMO_PORT:-8080}
if [ "$port" != 0 ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then port=0; fi # busy: any free port
"$lathe" serve --data-dir "$data" --listen "127.0.0.1:$port" >"$log" 2>&1 &
server=$!
stop_server() {
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
"$lathe" dataset show json-answers@0.1.0 >/dev/null 2>&1 || "$lathe" dataset push "$ds"
"$lathe" capability show json-answer@0.1.0 >/dev/null 2>&1 || "$lathe" capability push "$cap"
"$lathe" dataset list
echo "   a training row:   $(head -1 "$ds/data/train.jsonl")"
echo "   capability prompt (the system message of every row): \"$system_prompt\""

step "4. submit a Tinker SFT job, then follow it live (lathe train sft ..., lathe train watch JOB)"
# The recipe: batch 8, lr 1e-3 decaying to 0, LoRA r8 (alpha 16) on every projection of the 30 layers; the loss
# on the answer tokens falls from ~2.5 to ~0.1 within 30 steps and the format holds on unseen questions.
job=$("$lathe" train sft --json --model "$model_id" --capability json-answer@0.1.0 --dataset json-answers@0.1.0 \
    --eval-dataset json-answers@0.1.0 --steps "$steps" --batch-size 8 --learning-rate 0.001 --lora-rank 8 \
    --lora-alpha 16 --checkpoint-interval "$steps" --name demo-json-answers --tag demo |
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

step "6. base model vs adapter, greedy, on questions in neither split (a format learned, not rows remembered)"
# The prompt is rendered as the job rendered its rows: SmolLM2's ChatML, with the capability prompt as the
# system message; generation stops at <|im_end|>, the model's end-of-text token.
sample() { # sample QUESTION [--adapter DIR]
    "$lathe" model sample "$model_file" "${@:2}" --max-tokens 24 --temperature 0 --prompt \
        "<|im_start|>system"$'\n'"$system_prompt<|im_end|>"$'\n'"<|im_start|>user"$'\n'"$1<|im_end|>"$'\n'"<|im_start|>assistant"$'\n' \
        2>"$data/demo-sample.err" | tr '\n\t' '  ' | tr -d '\000-\037\177' | sed 's/^ *//; s/ *$//'
}
taught_re='^\{"answer": ("[^"]*"|-?[0-9.]+)\}$'
taught() { [[ $1 =~ $taught_re ]]; }
cell() { # the answer, cut to 32 characters, marked when it is in the taught format
    local m=" "
    taught "$1" && m="*"
    local t=$1
    [ ${#t} -gt 32 ] && t="${t:0:29}..."
    printf '%s %-32s' "$m" "$t"
}
printf '   %-50s |  %-32s |  %s\n' question "base $model_id" "with the adapter"
nb=0
na=0
for q in "${held_out[@]}"; do
    b=$(sample "$q") && a=$(sample "$q" --adapter "$adapter") || {
        cat "$data/demo-sample.err" # the line about widening the weights at load, or what went wrong
        exit 1
    }
    taught "$b" && nb=$((nb + 1))
    taught "$a" && na=$((na + 1))
    printf '   %-50s |%s |%s\n' "$q" "$(cell "$b")" "$(cell "$a")" | sed 's/ *$//'
done
echo "   * = one JSON object {\"answer\": ...} and nothing else"
echo "   in the taught format: base $nb of ${#held_out[@]}, adapter $na of ${#held_out[@]}"

step "done in $(($(date +%s) - t_start)) s"
echo "   trained adapter (PEFT: loads in HF peft and vLLM): $adapter"
echo "   the job: lathe train get $job   (server log: $log; API key: $data/admin.key)"
echo "   stopping the server (started again by: ${BUILD:-build}/lathe serve --data-dir $data)"
