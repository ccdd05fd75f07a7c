#!/usr/bin/env bash
# Install iceburgd as a per-user launchd agent (macOS): a thin wrapper over `iceburgd service install`, which
# checks the config, writes the plist with plistlib and loads it. `--print` shows the plist and the commands.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
[ -x "${repo}/.venv/bin/iceburgd" ] || { echo "run 'make install' first" >&2; exit 1; }
if [ "${1:-}" = "--print" ]; then
  exec "${repo}/.venv/bin/iceburgd" --config "${repo}/config.toml" service install --dry-run
fi
exec "${repo}/.venv/bin/iceburgd" --config "${repo}/config.toml" service install "$@"
