#!/usr/bin/env bash
# Test hosts for the Ansible deployment test, on this machine: each host is a network namespace
# (veth to a bridge on 10.77.0.0/24) with its own mount namespace in which /opt/ringkv,
# /var/lib/ringkv and /var/log/ringkv are the host's own directories, running its own sshd that
# accepts root with the test's key. Needs root, iproute2 and openssh-server
# (scripts/ansible-deps.sh installs them).
#
#   hosts.sh up WORKDIR N     creates hosts 1..N (10.77.0.11 …), key in WORKDIR/id_ed25519
#   hosts.sh down WORKDIR N   kills everything in them and removes them
set -euo pipefail
action=${1:?usage: hosts.sh up|down WORKDIR N}
work=${2:?usage: hosts.sh up|down WORKDIR N}
count=${3:?usage: hosts.sh up|down WORKDIR N}
bridge=rkvtest0
net=10.77.0

host_down() {
  local ns=rkvtest-h$1
  if ip netns list | grep -qw "$ns"; then
    for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns"
  fi
  ip link del "rkvtest-h$1" 2>/dev/null || true
}

host_up() {
  local i=$1 ns=rkvtest-h$1 dir=$work/h$1 addr=$net.$((10 + $1))
  host_down "$i"
  mkdir -p "$dir/opt" "$dir/lib" "$dir/log" "$dir/ssh"
  ip netns add "$ns"
  ip link add "rkvtest-h$i" type veth peer name eth0 netns "$ns"
  ip link set "rkvtest-h$i" master "$bridge" up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  [ -f "$dir/ssh/host_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh/host_key"
  cat >"$dir/ssh/sshd_config" <<CONF
ListenAddress $addr:22
HostKey $dir/ssh/host_key
PidFile $dir/ssh/sshd.pid
AuthorizedKeysFile $work/id_ed25519.pub
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 100
MaxSessions 100
Subsystem sftp internal-sftp
CONF
  # The host's own install, data and log directories, seen only inside its mount namespace
  # (and by everything its sshd starts). This machine's own ~/.bashrc (a login over ssh runs
  # it) is hidden too: a host is a plain Debian host, and a heavy rc file (pyenv's rehash
  # under a lock shared by every host) slows each of Ansible's commands to a crawl.
  : >"$dir/ssh/empty_rc"
  ip netns exec "$ns" unshare --mount --propagation private sh -c "
    mount --bind '$dir/opt' /opt/ringkv &&
    mount --bind '$dir/lib' /var/lib/ringkv &&
    mount --bind '$dir/log' /var/log/ringkv &&
    if [ -f \"\$HOME/.bashrc\" ]; then mount --bind '$dir/ssh/empty_rc' \"\$HOME/.bashrc\"; fi &&
    exec /usr/sbin/sshd -f '$dir/ssh/sshd_config' -E '$dir/ssh/sshd.log'"
}

case $action in
  up)
    mkdir -p "$work" /opt/ringkv /var/lib/ringkv /var/log/ringkv /run/sshd
    [ -f "$work/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$work/id_ed25519"
    ip link show "$bridge" >/dev/null 2>&1 || ip link add "$bridge" type bridge
    ip addr replace "$net.1/24" dev "$bridge"
    ip link set "$bridge" up
    for i in $(seq 1 "$count"); do host_up "$i"; done
    ;;
  down)
    for i in $(seq 1 "$count"); do host_down "$i"; done
    ip link del "$bridge" 2>/dev/null || true
    ;;
  *)
    echo "unknown action $action (up or down)" >&2
    exit 2
    ;;
esac
