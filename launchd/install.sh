#!/usr/bin/env bash
# Install iceburgd as a per-user launchd agent (macOS). `--print` only renders the plist to stdout.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
label="com.iceburg.iceburgd"
# ExitTimeOut comes from the config (stop_grace_seconds + a margin): launchd must not SIGKILL an orderly stop
exit_timeout="$("${repo}/.venv/bin/python" -c "import sys; from iceburg_daemon.config import load_config;
print(load_config(sys.argv[1]).shutdown_seconds)" "${repo}/config.toml" 2>/dev/null || echo 90)"
render() { sed -e "s|__REPO__|${repo}|g" -e "s|__HOME__|${HOME}|g" -e "s|__EXIT_TIMEOUT__|${exit_timeout}|g" \
  "${repo}/launchd/${label}.plist"; }
if [ "${1:-}" = "--print" ]; then render; exit 0; fi
[ -x "${repo}/.venv/bin/iceburgd" ] || { echo "run 'make install' first" >&2; exit 1; }
"${repo}/.venv/bin/iceburgd" --config "${repo}/config.toml" config check
target="${HOME}/Library/LaunchAgents/${label}.plist"
mkdir -p "$(dirname "$target")" "${HOME}/Library/Logs"
render > "$target"
launchctl bootout "gui/$(id -u)/${label}" 2>/dev/null || true
launchctl bootstrap "gui/$(id -u)" "$target"
echo "installed ${target}; status: ${repo}/.venv/bin/iceburgd --config ${repo}/config.toml status"
