#!/usr/bin/env bash
# `systemd-analyze verify` of the units as the packages install them: both components are
# installed into a scratch root (with the host's own systemd units beside them, which the
# verifier needs for targets such as network-online.target) and verified there; any output is a
# failure. Exits 77 (skipped) when systemd-analyze is not installed.
#
#   unit_verify_test.sh BUILD_DIR
set -euo pipefail

build_dir=$(realpath "$1")
command -v systemd-analyze >/dev/null ||
	{ echo "SKIPPED: systemd-analyze is not installed (apt-get install systemd)"; exit 77; }
units=
for dir in /lib/systemd/system /usr/lib/systemd/system; do
	if [ -e "$dir/multi-user.target" ]; then units=$dir; break; fi
done
[ -n "$units" ] || { echo "SKIPPED: no systemd units on this machine to verify against"; exit 77; }

root=$(mktemp -d /tmp/spark-unit-verify.XXXXXX)
trap 'rm -rf "$root"' EXIT
for component in agent controller; do
	DESTDIR=$root cmake --install "$build_dir" --component "$component" --prefix /usr >/dev/null
done
mkdir -p "$root/lib/systemd/system"
for unit in "$units"/*; do
	case $(basename "$unit") in spark-*) continue ;; esac
	cp -a "$unit" "$root/lib/systemd/system/"
done
for unit in spark-agent.service spark-controller.service; do
	[ -f "$root/lib/systemd/system/$unit" ] || { echo "FAILED: $unit is not installed"; exit 1; }
done
out=$(systemd-analyze verify --man=no --root="$root" /lib/systemd/system/spark-agent.service \
	/lib/systemd/system/spark-controller.service 2>&1) || { echo "FAILED: $out"; exit 1; }
if [ -n "$out" ]; then
	echo "FAILED: systemd-analyze verify reported:"
	echo "$out"
	exit 1
fi
echo "PASSED: systemd-analyze verify of spark-agent.service and spark-controller.service is clean"
