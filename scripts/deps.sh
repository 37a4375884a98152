#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo need, when missing.
# As root it runs apt-get; otherwise it prints the exact command and fails.
set -euo pipefail
pkgs=(qemu-utils nbdkit libnbd-dev libnbd-bin tmux)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [[ $(id -u) -eq 0 ]]; then
		echo "deps: installing ${missing[*]}" >&2
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
	else
		echo "deps: missing Debian packages: ${missing[*]}" >&2
		echo "deps: run as root: apt-get install -y ${missing[*]}" >&2
		exit 1
	fi
fi
command -v go >/dev/null || { echo "deps: Go 1.26 is required (go not found in PATH)" >&2; exit 1; }
go mod download
# The nats CLI (the README's `nats pub` / `nats sub`, and the tests of the
# contexts sendense writes for it), built from the module proxy into bin/.
natscli=github.com/nats-io/natscli/nats@v0.5.0
if ! command -v nats >/dev/null && [[ ! -x bin/nats ]]; then
	echo "deps: installing the nats CLI ($natscli) into bin/" >&2
	GOBIN="$PWD/bin" go install "$natscli"
fi
