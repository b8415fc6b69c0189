#!/usr/bin/env bash
# Installs what the Ansible deployment test (tests/tests/ansible_deploy.rs) needs, when it is
# missing: openssh-server and iproute2 from Debian's packages (the test hosts run sshd in network
# namespaces), and ansible-core + ansible-lint from PyPI in a virtualenv at target/ansible-venv.
# Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh >/dev/null || need_apt+=(openssh-client)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v objcopy >/dev/null || need_apt+=(binutils)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "ansible-deps: ${need_apt[*]} missing and not root; install them, or run as root" >&2
    exit 1
  fi
  echo "ansible-deps: installing ${need_apt[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
venv=target/ansible-venv
stamp="$venv/.requirements"
if ! cmp -s ansible/requirements.txt "$stamp" 2>/dev/null; then
  echo "ansible-deps: creating $venv (ansible-core, ansible-lint from PyPI)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r ansible/requirements.txt
  cp ansible/requirements.txt "$stamp"
fi
