#!/usr/bin/env bash
# The corafs demo, end to end: train a small model for real, commit its checkpoints, look at
# the history, diff and storage, export one byte-exact, then mount the repository, load a
# checkpoint through the mount with torch.load, list @history/main and unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${DEMO_DIR:-$(pwd)/demo-out}
rm -rf "$OUT"; mkdir -p "$OUT"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "training a small model (real AdamW steps) and saving 4 checkpoints"
python3 examples/train_small.py "$OUT/run" --steps 400 --every 100

say "corafs init + one commit per checkpoint"
corafs init "$OUT/repo"
for d in "$OUT"/run/ckpt-*; do
  corafs commit "$OUT/repo" "$d/" -m "checkpoint $(basename "$d")"
done
corafs tag "$OUT/repo" best main -m "last checkpoint"

say "corafs log"
corafs log "$OUT/repo" --oneline
say "corafs show main:model.pth (tensors and how each is stored)"
corafs show "$OUT/repo" main:model.safetensors
say "corafs diff main~1 main"
corafs diff "$OUT/repo" main~1 main
say "corafs stats"
corafs stats "$OUT/repo"
du -sh "$OUT/run" "$OUT/repo"

say "export main~2:model.pth and compare sha256 with the original"
corafs export "$OUT/repo" main~2:model.pth "$OUT/exported.pth"
sha256sum "$OUT/run/ckpt-00200/model.pth" "$OUT/exported.pth"
[ "$(sha256sum < "$OUT/run/ckpt-00200/model.pth")" = "$(sha256sum < "$OUT/exported.pth")" ] \
  && echo "byte-exact: OK"
corafs fsck "$OUT/repo"

if corafs mount --help >/dev/null 2>&1 && [ -e /dev/fuse ]; then
  say "mount, torch.load through the mount, ls @history/main, unmount"
  mkdir -p "$OUT/mnt"
  corafs mount "$OUT/repo" "$OUT/mnt"
  trap 'corafs umount "$OUT/mnt" 2>/dev/null || true' EXIT
  ls "$OUT/mnt"
  python3 - "$OUT" <<'PY'
import sys, torch
out = sys.argv[1]
a = torch.load(f"{out}/mnt/main/model.pth", weights_only=True)
b = torch.load(f"{out}/run/ckpt-00400/model.pth", weights_only=True)
assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
print(f"torch.load through the mount: {len(a['model'])} tensors, step {a['step']}, equal to the original")
PY
  ls -l "$OUT/mnt/@history/main/"
  say "write through the mount: mkdir makes a branch, cp makes a commit"
  mkdir "$OUT/mnt/finetune"
  before=$(corafs log "$OUT/repo" finetune --oneline | head -1)
  cp "$OUT/run/ckpt-00100/model.safetensors" "$OUT/mnt/finetune/model.safetensors"
  # the copy must become a commit on finetune while mounted (corafs status: nothing staged,
  # and a new head), not only at unmount
  committed=""
  deadline=$((SECONDS + 60))
  while [ $SECONDS -lt $deadline ]; do
    if corafs status "$OUT/repo" | grep -q "nothing staged" &&
       [ "$(corafs log "$OUT/repo" finetune --oneline | head -1)" != "$before" ]; then
      committed=1
      break
    fi
    sleep 0.2
  done
  if [ -z "$committed" ]; then
    echo "ERROR: the copy into the mount was not committed within 60 s while mounted" >&2
    corafs status "$OUT/repo" >&2 || true
    echo "--- mount log (last 30 lines) ---" >&2
    tail -n 30 "$OUT/repo/logs/mount.log" >&2 || true
    exit 1
  fi
  echo "committed while mounted:"
  corafs log "$OUT/repo" finetune --oneline | head -3
  corafs umount "$OUT/mnt"      # exits non-zero if background work failed while mounted
  trap - EXIT
fi
say "demo finished"
