#!/usr/bin/env bash
# Install, upgrade or remove the agent as a systemd service. Run as root from a checkout:
#
#   sudo systemd/install.sh                 # install, or upgrade what is installed
#   sudo systemd/install.sh --uninstall     # remove service and program; keep config and state
#   sudo systemd/install.sh --uninstall --purge   # ... and delete config, secrets and state
#
# Install: a system user `edge-agent`, a virtualenv in /opt/edge-agent/venv with the extras the
# config needs (a sound-card source → [audio], on-site commissioning → [train]), the config from
# config.example.toml when none exists, an empty 0600 secrets file for EDGE_API_KEY & co, the
# hardened unit and its optional drop-ins, enabled. Upgrade (re-run from a newer checkout): the
# new version is installed, `check-config` must pass on the existing config with it, then a
# running service is restarted; if the check fails the service is not restarted and the
# script exits 78 (the running agent keeps the version it started with until its next restart).
# A sound-card source also gets PortAudio (apt-get install libportaudio2) when it is missing.
# Overridable (tests): PREFIX, ETC, UNIT_DIR, STATE_DIR, SYSTEMCTL, PIP_INSTALL, CREATE_USER, PYTHON,
# LDCONFIG, APT_GET.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
prefix="${PREFIX:-/opt/edge-agent}"
etc="${ETC:-/etc/edge-agent}"
unit_dir="${UNIT_DIR:-/etc/systemd/system}"
state="${STATE_DIR:-/var/lib/edge-agent}"
systemctl="${SYSTEMCTL:-systemctl}"
python="${PYTHON:-python3}"
create_user="${CREATE_USER:-1}"
unit=edge-agent.service

say() { echo "edge-agent install: $*"; }

uninstall() {
  local purge="$1"
  $systemctl disable --now "$unit" 2>/dev/null || true
  rm -f "$unit_dir/$unit"
  $systemctl daemon-reload || true
  rm -rf "$prefix"
  if [ "$purge" = 1 ]; then
    rm -rf "$etc" "$state"
    if [ "$create_user" = 1 ] && id edge-agent >/dev/null 2>&1; then userdel edge-agent; fi
    say "removed the service, the program, its config, secrets and state"
  else
    say "removed the service and the program; kept $etc and the state in $state"
  fi
}

# The extras the config needs: a soundcard driver needs [audio], commissioning needs [train].
extras_for() {
  local cfg="$1" extras=()
  [ -f "$cfg" ] || { echo ""; return; }
  if grep -Eq '^[[:space:]]*kind[[:space:]]*=[[:space:]]*"soundcard"' "$cfg"; then extras+=(audio); fi
  if grep -Eq '^[[:space:]]*\[pipelines\.commissioning\]' "$cfg" \
     && grep -Eq '^[[:space:]]*enabled[[:space:]]*=[[:space:]]*true' "$cfg"; then extras+=(train); fi
  (IFS=,; echo "${extras[*]:-}")
}

# A sound-card source also needs PortAudio itself (Debian: libportaudio2), which pip cannot
# install: installed with apt-get when missing, otherwise named.
ensure_portaudio() {
  if "${LDCONFIG:-/sbin/ldconfig}" -p 2>/dev/null | grep -q 'libportaudio\.so\.2'; then return; fi
  local apt="${APT_GET:-apt-get}"
  if command -v "$apt" >/dev/null 2>&1; then
    say "installing libportaudio2 (PortAudio, for the sound-card source)"
    DEBIAN_FRONTEND=noninteractive "$apt" install -y -q libportaudio2
  else
    say "the sound-card source needs PortAudio: install libportaudio2 (or your system's package)"
  fi
}

install_program() {
  local extras="$1"
  "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 required")'
  install -d -m 0755 "$prefix"
  [ -x "$prefix/venv/bin/python" ] || "$python" -m venv ${VENV_ARGS:-} "$prefix/venv"
  local spec="$src${extras:+[$extras]}"
  if [ -n "${PIP_INSTALL:-}" ]; then
    $PIP_INSTALL "$spec"
  else
    "$prefix/venv/bin/python" -m pip install -q --upgrade pip
    "$prefix/venv/bin/python" -m pip install -q --upgrade "$spec"
  fi
  install -m 0644 "$src/README.md" "$prefix/README.md"
  say "installed $("$prefix/venv/bin/edge-agent" --version) ${extras:+with extras [$extras]}"
}

install_config() {
  install -d -m 0750 "$etc"
  if [ ! -f "$etc/config.toml" ]; then
    sed 's#^state_dir = .*#state_dir = "/var/lib/edge-agent"#' "$src/config.example.toml" \
      > "$etc/config.toml"
    chmod 0640 "$etc/config.toml"
    say "wrote $etc/config.toml from config.example.toml: edit it, then check it with"
    say "  $prefix/venv/bin/edge-agent check-config -c $etc/config.toml"
  fi
  if [ ! -f "$etc/secrets.env" ]; then
    (umask 077; printf '# EDGE_API_KEY=...\n# MQTT_PASSWORD=...\n# MLFLOW_PASSWORD=...\n' \
      > "$etc/secrets.env")
    say "wrote $etc/secrets.env (mode 0600): put EDGE_API_KEY=... there"
  fi
  chmod 0600 "$etc/secrets.env"
  if [ "$create_user" = 1 ]; then chgrp edge-agent "$etc" "$etc/config.toml"; fi
}

main() {
  if [ "${1:-}" = --uninstall ]; then
    uninstall "$([ "${2:-}" = --purge ] && echo 1 || echo 0)"
    return
  fi
  local upgrading=0 cfg="$etc/config.toml"
  [ -x "$prefix/venv/bin/edge-agent" ] && upgrading=1
  if [ "$create_user" = 1 ] && ! id edge-agent >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/edge-agent --shell /usr/sbin/nologin edge-agent
  fi
  local extras
  extras="$(extras_for "$cfg")"
  install_program "$extras"
  case ",$extras," in *,audio,*) ensure_portaudio ;; esac
  install_config
  install -d -m 0755 "$unit_dir" "$unit_dir/$unit.d"
  install -m 0644 "$src/systemd/edge-agent.service" "$unit_dir/$unit"
  install -d -m 0755 "$prefix/dropins"
  install -m 0644 "$src"/systemd/dropins/*.conf "$prefix/dropins/"
  $systemctl daemon-reload
  $systemctl enable "$unit"
  if ! "$prefix/venv/bin/edge-agent" check-config -c "$cfg"; then
    if [ "$upgrading" = 1 ]; then
      say "check-config failed on $cfg with the new version: service NOT restarted"
      exit 78
    fi
    say "installed, but $cfg is not valid yet (see above): edit it, then systemctl start edge-agent"
    return
  fi
  if [ "$upgrading" = 1 ] && $systemctl is-active --quiet "$unit"; then
    $systemctl restart "$unit"
    say "upgraded and restarted $unit"
  else
    say "installed; start with: systemctl start edge-agent && journalctl -fu edge-agent"
  fi
  say "optional drop-ins (sound card, serial ports) are in $prefix/dropins/"
}

main "$@"
