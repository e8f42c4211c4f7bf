#!/usr/bin/env bash
# Install test of the .deb packages in a fresh Debian 12 root (chroot): install, files, the spark
# user, conffiles, CURVE keys and trust, both daemons started from the installed configs with the
# installed keys (the agent registers), upgrade over itself keeping a modified conffile and the
# keys, remove keeping data, purge removing everything.
#
#   install_test.sh BUILD_DIR SOURCE_DIR
#
# The Debian root is made once with debootstrap (minbase, bookworm, deb.debian.org) in
# SOURCE_DIR/.cache/debroot and copied for every run; downloaded packages are kept in
# SOURCE_DIR/.cache/debroot-archives. Exits 77 (skipped) when not root, when a tool is missing or
# when the Debian mirror cannot be reached to make the root.
set -euo pipefail

build_dir=$(realpath "$1")
source_dir=$(realpath "$2")
cache_root=$source_dir/.cache/debroot
archives=$source_dir/.cache/debroot-archives

skip() {
	echo "SKIPPED: $*"
	exit 77
}
fail() {
	echo "FAILED: $*" >&2
	exit 1
}

[ "$(id -u)" -eq 0 ] || skip "the install test needs root (chroot, dpkg); run ctest as root"
for tool in chroot dpkg-deb cpack mount umount; do
	command -v "$tool" >/dev/null || skip "$tool is not installed"
done

if [ ! -x "$cache_root/usr/bin/apt-get" ]; then
	command -v debootstrap >/dev/null ||
		skip "no Debian root in $cache_root and debootstrap is not installed (apt-get install debootstrap)"
	echo "making the Debian 12 root once: debootstrap --variant=minbase bookworm $cache_root"
	rm -rf "$cache_root.tmp"
	mkdir -p "$(dirname "$cache_root")"
	if ! debootstrap --variant=minbase bookworm "$cache_root.tmp" http://deb.debian.org/debian \
		>"$source_dir/.cache/debootstrap.log" 2>&1; then
		rm -rf "$cache_root.tmp"
		skip "debootstrap could not make a Debian root (mirror unreachable?), see .cache/debootstrap.log"
	fi
	mv "$cache_root.tmp" "$cache_root"
fi

work=$(mktemp -d /tmp/spark-install-test.XXXXXX)
root=$work/root
mounts=()
cleanup() {
	local i
	for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
	if [ -n "${controller_pid:-}" ]; then kill -9 "$controller_pid" 2>/dev/null || true; fi
	if [ -n "${agent_pid:-}" ]; then kill -9 "$agent_pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

echo "== building the packages"
cpack -G DEB --config "$build_dir/CPackConfig.cmake" -B "$work/debs" >"$work/cpack.log" 2>&1 ||
	{ cat "$work/cpack.log"; fail "cpack"; }
agent_deb=$(ls "$work"/debs/spark-agent_*.deb)
controller_deb=$(ls "$work"/debs/spark-controller_*.deb)
version=$(dpkg-deb -f "$agent_deb" Version)

echo "== copying the Debian root"
cp -a "$cache_root" "$root"
mkdir -p "$archives" "$root/tmp/debs"
cp "$agent_deb" "$controller_deb" "$root/tmp/debs/"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
mount -t proc proc "$root/proc" && mounts+=("$root/proc")
mount --bind "$archives" "$root/var/cache/apt/archives" && mounts+=("$root/var/cache/apt/archives")
[ ! -d "$root/run/systemd/system" ] || fail "the root claims a running systemd"

echo "== installing spark-controller and spark-agent $version"
if ! in_root apt-get install -y -q --no-install-recommends /tmp/debs/"$(basename "$controller_deb")" \
	/tmp/debs/"$(basename "$agent_deb")" >"$work/apt.log" 2>&1; then
	if grep -q "Could not resolve\|Failed to fetch\|Unable to fetch" "$work/apt.log"; then
		skip "apt-get cannot download the dependencies (mirror unreachable)"
	fi
	cat "$work/apt.log"
	fail "apt-get install of the packages"
fi
grep -E "spark-(agent|controller):" "$work/apt.log" || true

echo "== files, user, conffiles"
for f in /usr/bin/spark-agent /usr/bin/spark-shard /usr/bin/spark-model /usr/bin/spark-controller \
	/usr/bin/sparkctl /lib/systemd/system/spark-agent.service \
	/lib/systemd/system/spark-controller.service /etc/spark/agent.toml /etc/spark/controller.toml \
	/usr/share/man/man1/spark-agent.1.gz /usr/share/man/man1/sparkctl.1.gz \
	/usr/share/doc/spark-agent/copyright /usr/share/doc/spark-controller/changelog.gz; do
	[ -e "$root$f" ] || fail "$f is not installed"
done
in_root spark-agent --version | grep -qx "spark-agent $version" || fail "spark-agent --version"
passwd=$(in_root getent passwd spark) || fail "no spark user"
IFS=: read -r _ _ uid _ _ home shell <<<"$passwd"
[ "$uid" -lt 1000 ] || fail "spark is not a system user (uid $uid)"
[ "$home" = /var/lib/spark ] || fail "spark's home is $home"
[ "$shell" = /usr/sbin/nologin ] || fail "spark's shell is $shell"
in_root dpkg-query -W -f='${Conffiles}\n' spark-agent | grep -q "/etc/spark/agent.toml" ||
	fail "agent.toml is not a conffile"
in_root dpkg-query -W -f='${Conffiles}\n' spark-controller | grep -q "/etc/spark/controller.toml" ||
	fail "controller.toml is not a conffile"
[ -L "$root/etc/systemd/system/multi-user.target.wants/spark-agent.service" ] ||
	fail "spark-agent.service is not enabled"
[ -L "$root/etc/systemd/system/multi-user.target.wants/spark-controller.service" ] ||
	fail "spark-controller.service is not enabled"
state_mode=$(in_root stat -c %U:%G:%a /var/lib/spark)
[ "$state_mode" = spark:spark:750 ] || fail "/var/lib/spark is $state_mode, expected spark:spark:750"

echo "== keys"
keys=$root/etc/spark/keys
for f in agent.key agent.pub controller.key controller.pub; do
	[ -s "$keys/$f" ] || fail "$f was not generated"
done
for f in agent.key controller.key; do
	mode=$(in_root stat -c %U:%a "/etc/spark/keys/$f")
	[ "$mode" = spark:600 ] || fail "$f is $mode, expected spark:600"
done
mode=$(in_root stat -c %U:%G:%a /etc/spark/keys)
[ "$mode" = root:spark:750 ] || fail "the keys directory is $mode, expected root:spark:750"
trusted=$(ls "$keys/trusted")
[ "$trusted" = "$(uname -n).pub" ] || fail "trusted/ holds '$trusted', expected this node's key"
cmp -s "$keys/agent.pub" "$keys/trusted/$trusted" || fail "the trusted key is not agent.pub"
in_root sparkctl keys list | tee "$work/keys.txt"
controller_key=$(sed -n 's/^public-key = "\(.*\)"$/\1/p' "$keys/controller.pub")
[ ${#controller_key} -eq 40 ] || fail "controller.pub holds no 40-character key"
grep -qF "controller public key: $controller_key" "$work/keys.txt" || fail "sparkctl keys list: controller key"
grep -q "(trusted as $(uname -n))" "$work/keys.txt" || fail "sparkctl keys list: this node's agent is not trusted"

echo "== daemons from the installed configs and keys, as the spark user"
# Owners are the chroot's users: ask its own stat (above) and tools, never the host's.
# The unit's command lines with free ports (the test must not take 8080/7440 of the host).
chroot --userspec=spark:spark "$root" /usr/bin/spark-controller --config /etc/spark/controller.toml \
	--http-listen 127.0.0.1:0 --agent-listen tcp://127.0.0.1:0 --port-file /var/lib/spark/ports.json \
	--log-sink stderr >"$work/controller.log" 2>&1 &
controller_pid=$!
for _ in $(seq 100); do [ -s "$root/var/lib/spark/ports.json" ] && break; sleep 0.1; done
[ -s "$root/var/lib/spark/ports.json" ] || { cat "$work/controller.log"; fail "the controller did not start"; }
agent_endpoint=$(sed -n 's/.*"agent_endpoint":"\([^"]*\)".*/\1/p' "$root/var/lib/spark/ports.json")
http_port=$(sed -n 's/.*"http_port":\([0-9]*\).*/\1/p' "$root/var/lib/spark/ports.json")
chroot --userspec=spark:spark "$root" /usr/bin/spark-agent --config /etc/spark/agent.toml \
	--controller "$agent_endpoint" --node-name install-test --log-sink stderr \
	>"$work/agent.log" 2>&1 &
agent_pid=$!
registered=0
for _ in $(seq 100); do
	if in_root sparkctl --controller "http://127.0.0.1:$http_port" nodes 2>/dev/null |
		grep -q install-test; then
		registered=1
		break
	fi
	sleep 0.1
done
[ $registered = 1 ] || { cat "$work/controller.log" "$work/agent.log"; fail "the agent did not register"; }
[ -d "$root/var/lib/spark/agent" ] || fail "the agent's state directory"
kill "$agent_pid" "$controller_pid"
wait "$agent_pid" || fail "spark-agent did not exit cleanly on SIGTERM"
wait "$controller_pid" || fail "spark-controller did not exit cleanly on SIGTERM"
agent_pid="" controller_pid=""
[ -s "$root/var/lib/spark/controller.db" ] || fail "no controller database"
echo "agent registered with the controller over CURVE with the generated keys"

echo "== upgrade over itself keeps a modified conffile and the keys"
echo "# local change" >>"$root/etc/spark/agent.toml"
cp "$keys/agent.pub" "$work/agent.pub.before"
cp "$keys/controller.pub" "$work/controller.pub.before"
in_root dpkg -i /tmp/debs/"$(basename "$controller_deb")" /tmp/debs/"$(basename "$agent_deb")" \
	>"$work/upgrade.log" 2>&1 || { cat "$work/upgrade.log"; fail "dpkg -i over the installed packages"; }
tail -1 "$root/etc/spark/agent.toml" | grep -qx "# local change" || fail "the modified agent.toml was replaced"
[ ! -e "$root/etc/spark/agent.toml.dpkg-new" ] || fail "agent.toml.dpkg-new left behind"
cmp -s "$keys/agent.pub" "$work/agent.pub.before" || fail "the upgrade replaced the agent key"
cmp -s "$keys/controller.pub" "$work/controller.pub.before" || fail "the upgrade replaced the controller key"
[ "$(ls "$keys/trusted")" = "$(uname -n).pub" ] || fail "the upgrade changed trusted/"

echo "== remove keeps data, configs and keys"
in_root dpkg -r spark-agent spark-controller >"$work/remove.log" 2>&1 ||
	{ cat "$work/remove.log"; fail "dpkg -r"; }
for f in /usr/bin/spark-agent /usr/bin/sparkctl /lib/systemd/system/spark-agent.service; do
	[ ! -e "$root$f" ] || fail "$f is still there after remove"
done
for f in /etc/spark/agent.toml /etc/spark/keys/agent.key /etc/spark/keys/controller.key \
	/var/lib/spark/controller.db; do
	[ -e "$root$f" ] || fail "remove deleted $f"
done
in_root getent passwd spark >/dev/null || fail "remove deleted the spark user"

echo "== purge removes everything"
in_root dpkg -P spark-agent spark-controller >"$work/purge.log" 2>&1 ||
	{ cat "$work/purge.log"; fail "dpkg -P"; }
for f in /etc/spark /var/lib/spark /etc/systemd/system/multi-user.target.wants/spark-agent.service; do
	[ ! -e "$root$f" ] || fail "$f is still there after purge"
done
! in_root getent passwd spark >/dev/null || fail "purge left the spark user"
! in_root getent group spark >/dev/null || fail "purge left the spark group"
echo "PASSED: install, run, upgrade, remove and purge of spark $version"
