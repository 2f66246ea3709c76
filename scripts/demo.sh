#!/usr/bin/env bash
# The newcomer flow behind `make demo` (README): start the server on its embedded default (SQLite in
# ./lathe-data), push a sample dataset and capability, create a tiny model, submit a real SFT job, then train
# the same data with the engine and show base vs adapter samples side by side.
#
# The job worker (in-process and `lathe worker`) is not built yet, so the submitted job stays queued; the
# training shown is the same engine run locally by `lathe train sft --data`. Rerunnable: existing artifacts and
# the model are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
lathe="$root/${BUILD:-build}/lathe"
data="$root/lathe-data"
model_id=tiny-llama
model_dir="$data/models/$model_id"
ds=examples/datasets/wrap-words
cap=examples/capabilities/terse-assistant
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. server: lathe serve (SQLite store and blobs in ./lathe-data)"
mkdir -p "$data"
log="$data/demo-server.log"
port=${LATHE_DEMO_PORT:-8080}
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then port=0; fi # 8080 busy: let the server pick one
"$lathe" serve --data-dir "$data" --listen "127.0.0.1:$port" >"$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
url=""
for _ in $(seq 1 100); do
    url=$(sed -n 's/^lathe: listening on \(http[^ ]*\).*/\1/p' "$log" | head -1)
    [ -n "$url" ] && break
    kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.1
done
[ -n "$url" ] || { echo "server did not start; see $log"; exit 1; }
grep '^lathe:' "$log" | sed 's/^/   /'
export LATHE_SERVER="$url" LATHE_API_KEY
LATHE_API_KEY=$(cat "$data/admin.key")

step "2. a tiny random-weight Llama model in the models dir (lathe model init-tiny)"
if [ ! -f "$model_dir/config.json" ]; then
    "$lathe" model init-tiny "$model_dir" --layers 2 --hidden 64 --heads 4 --kv-heads 2 --init-std 0.1 --seed 1
fi
"$lathe" train catalog

step "3. push the sample dataset and capability (tar.gz archives, every row checked on upload)"
"$lathe" dataset show wrap-words@0.1.0 >/dev/null 2>&1 || "$lathe" dataset push "$ds"
"$lathe" capability show terse-assistant@0.1.0 >/dev/null 2>&1 || "$lathe" capability push "$cap"
"$lathe" dataset list

step "4. submit a Tinker SFT job through the API"
job=$("$lathe" train sft --json --model "$model_id" --capability terse-assistant@0.1.0 \
    --dataset wrap-words@0.1.0 --eval-dataset wrap-words@0.1.0 --steps 60 --batch-size 8 \
    --learning-rate 0.01 --lora-rank 16 --lora-alpha 32 --checkpoint-interval 30 --name demo-wrap-words |
    sed -n 's/^  "id": "\([0-9a-f-]\{36\}\)",$/\1/p' | head -1)
[ -n "$job" ] || { echo "submit failed"; exit 1; }
"$lathe" train get "$job"
echo "   (no worker runs jobs yet: it stays queued; cancelling it so reruns start clean)"
"$lathe" train cancel "$job" --yes >/dev/null

step "5. the same training on this machine with the engine (lathe train sft --data ... --out ...)"
out="$data/local-runs/wrap-words"
rm -rf "$out"
"$lathe" train sft --model "$model_dir" --data "$ds/data/train.jsonl" --eval "$ds/data/validation.jsonl" \
    --steps 300 --batch-size 8 --lr 0.01 --lora-rank 16 --lora-alpha 32 --checkpoint-interval 100 --seed 1 \
    --out "$out" | awk '/^step / { n++; if (n % 25 != 0) next } { print; fflush() }'


step "6. base model vs trained adapter, greedy, on words of the training split (a tiny model memorises)"
printf '   %-16s | %-24s | %s\n' prompt base adapter
for w in apple candle forest; do
    b=$("$lathe" model sample "$model_dir" --prompt "wrap: $w" --chat --max-tokens 8 --temperature 0 2>/dev/null |
        tr '\n' ' ' | sed 's/^ *//; s/ *$//' | cut -c1-24)
    a=$("$lathe" model sample "$model_dir" --adapter "$out/adapter" --prompt "wrap: $w" --chat --max-tokens 8 \
        --temperature 0 2>/dev/null | tr '\n' ' ' | sed 's/^ *//; s/ *$//' | cut -c1-24)
    printf '   %-16s | %-24s | %s\n' "wrap: $w" "$b" "$a"
done

step "done"
echo "   trained adapter (PEFT, loads in HF peft / vLLM): $out/adapter"
echo "   server log: $log; the API key is in $data/admin.key"
