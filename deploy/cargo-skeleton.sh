#!/bin/sh
# cargo-skeleton.sh SRC DEST: the workspace at SRC reduced to what decides its dependency build:
# every Cargo.toml and the Cargo.lock, with an empty stub for each target source file (src/lib.rs,
# src/main.rs, every `path = "....rs"` a manifest names) and the real build scripts.
#
# The Dockerfile builds the skeleton first. That layer depends only on the manifests and the
# lockfile, so docker reuses the compiled dependencies until one of them changes; an edit to
# the code only recompiles the workspace's own crates.
set -eu
src=$1
dest=$2
cd "$src"
mkdir -p "$dest"
cp Cargo.toml Cargo.lock "$dest/"
find . -name Cargo.toml -not -path './target/*' -not -path './.stack/*' -not -path './Cargo.toml' |
  while read -r manifest; do
    dir=$(dirname "$manifest")
    mkdir -p "$dest/$dir"
    cp "$manifest" "$dest/$manifest"
    {
      for conventional in src/lib.rs src/main.rs build.rs; do
        if [ -f "$dir/$conventional" ]; then echo "$conventional"; fi
      done
      sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*/\1/p' "$manifest"
    } | sort -u | while read -r target; do
      mkdir -p "$(dirname "$dest/$dir/$target")"
      case $target in
        build.rs) cp "$dir/$target" "$dest/$dir/$target" ;;
        src/lib.rs) : >"$dest/$dir/$target" ;;
        *) echo 'fn main() {}' >"$dest/$dir/$target" ;;
      esac
    done
  done
