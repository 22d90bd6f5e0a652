#!/usr/bin/env bash
# Prepare what scripts/gpu_session.sh carries to a lent GPU (run here, from the repository root, with
# network access to PyPI; re-run right before a session so the commit stamp is current):
#
#   .whl/      Python 3.12 wheels the device image lacks: hydra-core 1.3.8, omegaconf 2.3.1,
#              antlr4-python3-runtime 4.9.3 (built here as a wheel: PyPI has only its sdist), pycocotools
#              2.0.11; wandb 0.31.0 too with --with-wandb (19 MiB: only when the 64 MiB limit allows)
#   .session/  cifar10-jpeg.tar.gz (19 MiB, copied from ../shared/data or CONVLAB_CIFAR_ARCHIVE; the
#              decoded cache, ~176 MiB, would not fit) and commit.json (HEAD and the code commit, for a
#              device copy of the tree without .git)
#
# Both folders are git-ignored. Then, through the device tool:
#   run(command="bash scripts/gpu_session.sh", carry=[".whl", ".session"], timeout_s=420)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
WITH_WANDB=0
[ "${1:-}" = "--with-wandb" ] && WITH_WANDB=1

for d in .whl .session; do
    git check-ignore -q "$d/x" || { echo "error: $d/ is not git-ignored (see .gitignore)" >&2; exit 1; }
done
mkdir -p .whl .session

PINS=(hydra-core==1.3.8 omegaconf==2.3.1 pycocotools==2.0.11)
[ "$WITH_WANDB" = 1 ] && PINS+=(wandb==0.31.0)
have() {  # have NAME VERSION: a wheel of that version is already in .whl
    local n=${1//-/_}
    ls .whl/ 2>/dev/null | grep -qi "^${n}-${2}-"
}
for pin in "${PINS[@]}"; do
    name=${pin%%==*} ver=${pin##*==}
    if have "$name" "$ver"; then echo "have $pin"; continue; fi
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl "$pin"
done
if ! have antlr4_python3_runtime 4.9.3; then
    "$PY" -m pip wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w .whl
fi
# one version of each package (two would stop the install on the device)
dups=$(ls .whl/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)
[ -z "$dups" ] || { echo "error: several versions in .whl of: $dups" >&2; exit 1; }

ARCHIVE=${CONVLAB_CIFAR_ARCHIVE:-$ROOT/../shared/data/cifar10-jpeg.tar.gz}
[ -f "$ARCHIVE" ] || ARCHIVE=/work/shared/data/cifar10-jpeg.tar.gz
if [ -f "$ARCHIVE" ]; then
    cmp -s "$ARCHIVE" .session/cifar10-jpeg.tar.gz 2>/dev/null || install -m 0644 "$ARCHIVE" .session/cifar10-jpeg.tar.gz
else
    echo "no CIFAR-10 archive found ($ARCHIVE): the session's training comparison will use synthetic data"
fi

"$PY" - <<'EOF'
import datetime, json
from benchmarks.bench import source_version
v = source_version()
if v["commit_source"] != "git":
    raise SystemExit(f"cannot stamp the commit: {v}")
v["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
json.dump(v, open(".session/commit.json", "w"), indent=1)
print("stamp", v)
if v["code_commit"].endswith("-dirty"):
    print("note: uncommitted changes to the measured code: results of this session cannot be resumed later")
EOF

echo "--- carried (the whole working tree must stay under 64 MiB):"
du -sh .whl .session
ls -la .whl .session
