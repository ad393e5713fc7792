#!/usr/bin/env bash
# Install Debian's prometheus server when it is missing; the HPA integration test runs it.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
  prometheus --version 2>&1 | head -1
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# The package's post-install starts a service where an init system runs; the tests start
# their own instance on a free port, so only the binary matters here.
$SUDO apt-get install -y -q --no-install-recommends prometheus
prometheus --version 2>&1 | head -1
