# Sourced by the sweep scripts: sets $ember to an ember binary. $EMBER if set, else `ember` on
# PATH, else a release build of this checkout (built on first use, ~15 minutes on 2 cores).
if [ -n "${EMBER:-}" ]; then
  ember="$EMBER"
elif command -v ember >/dev/null 2>&1; then
  ember="$(command -v ember)"
else
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ember-target}"
  cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p ember-cli ${EMBER_FEATURES:+--features "$EMBER_FEATURES"}
  ember="$CARGO_TARGET_DIR/release/ember"
fi
