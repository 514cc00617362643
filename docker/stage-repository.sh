#!/bin/sh
# stage-repository SRC DEST ENV: mirror the Triton model repository SRC into DEST with symlinks
# and add a python_env link (to ENV) in every model folder, so CPU-profile models find their
# execution environment ($$TRITON_MODEL_DIRECTORY/python_env) without writing into SRC.
set -eu
src=$1 dest=$2 env=$3
[ -d "$env" ] || { echo "stage-repository: no Python environment at $env" >&2; exit 1; }
mkdir -p "$dest"
for model in "$src"/*/; do
  [ -d "$model" ] || continue
  name=$(basename "$model")
  case $name in .*) continue ;; esac
  mkdir -p "$dest/$name"
  for child in "$model"* ; do
    [ -e "$child" ] || continue
    [ "$(basename "$child")" = python_env ] && continue
    ln -sfn "$child" "$dest/$name/$(basename "$child")"
  done
  ln -sfn "$env" "$dest/$name/python_env"
done
echo "stage-repository: staged $(ls "$dest" | wc -l) model(s) from $src"
