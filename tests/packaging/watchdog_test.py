#!/usr/bin/env python3
"""The daemons' sd_notify traffic as systemd sees it under the packaged units: the real
spark-controller and spark-agent run with NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID set as
systemd sets them (Type=notify, WatchdogSec=); the test receives their datagrams and checks
READY=1 (controller: once serving) and WATCHDOG=1 more often than every WATCHDOG_USEC/2, all from
the main process (NotifyAccess=main), and STOPPING=1 with a clean exit on SIGTERM.

    watchdog_test.py BUILD_DIR
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

WATCHDOG_S = 2.0  # short, so the test sees several periods; the units use 30 s
OBSERVE_S = 5.0


def observe(argv, env_extra):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.settimeout(0.1)
        env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC=str(int(WATCHDOG_S * 1e6)))
        env.update(env_extra)
        # WATCHDOG_PID must be the daemon's own pid, as systemd sets it: exec from a shell.
        proc = subprocess.Popen(["sh", "-c", 'WATCHDOG_PID=$$ exec "$0" "$@"'] + argv,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                cwd=tmp)
        start = time.monotonic()
        messages = []  # (seconds since start, sender pid, text)
        while time.monotonic() - start < OBSERVE_S:
            try:
                data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except socket.timeout:
                if proc.poll() is not None:
                    break
                continue
            pid = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = int.from_bytes(payload[0:4], sys.byteorder)
            messages.append((time.monotonic() - start, pid, data.decode()))
        alive = proc.poll() is None
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        messages_after = []
        try:
            while True:
                data = sock.recv(4096)
                messages_after.append(data.decode())
        except (socket.timeout, BlockingIOError):
            pass
        return proc.pid, alive, proc.returncode, err.decode(), messages, messages_after


def check(name, argv, env_extra, want_ready):
    pid, alive, rc, err, messages, after = observe(argv, env_extra)
    problems = []
    if not alive:
        problems.append(f"{name} exited early ({rc}): {err[-2000:]}")
    senders = {m[1] for m in messages}
    if senders - {pid}:
        problems.append(f"{name}: notifications from pids {senders - {pid}}, main pid {pid}")
    pings = [t for t, _, text in messages if "WATCHDOG=1" in text.split("\n")]
    if len(pings) < 3:
        problems.append(f"{name}: {len(pings)} WATCHDOG=1 in {OBSERVE_S} s: {messages}")
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    # Below half the watchdog period, as systemd advises (the agent aims at a third, the
    # controller pings every 0.5 s).
    limit = WATCHDOG_S / 2
    if gaps and max(gaps) > limit:
        problems.append(f"{name}: watchdog gap {max(gaps):.2f} s > {limit:.2f} s")
    ready = any("READY=1" in text.split("\n") for _, _, text in messages)
    if want_ready and not ready:
        problems.append(f"{name}: no READY=1: {messages}")
    if not any("STOPPING=1" in text.split("\n") for text in after):
        problems.append(f"{name}: no STOPPING=1 on SIGTERM")
    if rc != 0:
        problems.append(f"{name}: exit status {rc} after SIGTERM: {err[-2000:]}")
    print(f"{name}: {len(pings)} pings, largest gap {max(gaps) if gaps else 0:.2f} s "
          f"(WatchdogSec {WATCHDOG_S} s), READY={ready}")
    return problems


def main():
    build = os.path.abspath(sys.argv[1])
    controller = os.path.join(build, "controller", "spark-controller")
    agent = os.path.join(build, "agent", "spark-agent")
    for binary in (controller, agent):
        if not os.access(binary, os.X_OK):
            print(f"SKIPPED: {binary} is not built")
            return 77
    with tempfile.TemporaryDirectory() as state:
        problems = check("spark-controller",
                         [controller, "--insecure", "--db", os.path.join(state, "c.db"),
                          "--http-listen", "127.0.0.1:0", "--agent-listen", "tcp://127.0.0.1:0",
                          "--log-sink", "stderr"], {}, want_ready=True)
        # No controller to register with: the agent is not READY, but its loop still pings.
        problems += check("spark-agent",
                          [agent, "--insecure", "--controller", "tcp://127.0.0.1:9",
                           "--state-dir", os.path.join(state, "agent"), "--node-name", "wd",
                           "--backend", "cpu", "--log-sink", "stderr"], {}, want_ready=False)
    for p in problems:
        print("FAILED:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
