#!/usr/bin/env bash
# Install the agent as a systemd service (run as root from a checkout):
#   sudo systemd/install.sh            # venv in /opt/edge-agent/venv, config in /etc/edge-agent
# Re-running upgrades the package and keeps the existing config and state.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/opt/edge-agent
etc=/etc/edge-agent
python="${PYTHON:-python3}"

"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 required")'
id edge-agent >/dev/null 2>&1 || useradd --system --home-dir /var/lib/edge-agent \
  --shell /usr/sbin/nologin edge-agent
install -d -m 0755 "$prefix"
[ -x "$prefix/venv/bin/python" ] || "$python" -m venv "$prefix/venv"
"$prefix/venv/bin/python" -m pip install -q --upgrade pip
"$prefix/venv/bin/python" -m pip install -q "$src${EXTRAS:+[$EXTRAS]}"
install -m 0644 "$src/README.md" "$prefix/README.md"
install -d -m 0750 -o root -g edge-agent "$etc"
if [ ! -f "$etc/config.toml" ]; then
  sed 's#^state_dir = .*#state_dir = "/var/lib/edge-agent"#' "$src/config.example.toml" \
    > "$etc/config.toml"
  chgrp edge-agent "$etc/config.toml"; chmod 0640 "$etc/config.toml"
  echo "wrote $etc/config.toml from config.example.toml: edit it, then check it with"
  echo "  $prefix/venv/bin/edge-agent check-config -c $etc/config.toml"
fi
install -m 0644 "$src/systemd/edge-agent.service" /etc/systemd/system/edge-agent.service
systemctl daemon-reload
systemctl enable edge-agent.service
echo "installed; start with: systemctl start edge-agent && journalctl -fu edge-agent"
