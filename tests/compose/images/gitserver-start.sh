#!/bin/sh
# The compose test's git server: git daemon on 9418 (public), smart HTTP with Basic auth on 8080
# (private, token), sshd on 22 for user git with a deploy key (private, SSH). /srv/git holds the
# bare repositories (a bind mount the test writes commits into); /srv/auth the password, the
# authorized key and the host key.
set -eu
install -d -o git -m 700 /home/git/.ssh
install -o git -m 600 /srv/auth/authorized_keys /home/git/.ssh/authorized_keys
install -m 600 /srv/auth/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key
install -m 644 /srv/auth/ssh_host_ed25519_key.pub /etc/ssh/ssh_host_ed25519_key.pub
cat > /etc/ssh/sshd_config.d/gitserver.conf <<'CONF'
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AcceptEnv GIT_PROTOCOL
CONF
git config --system safe.directory '*'
/usr/sbin/sshd -D -e &
python3 /usr/local/bin/gitserver.py deployer &
exec git daemon --export-all --base-path=/srv/git --reuseaddr --listen=0.0.0.0 --port=9418 \
    --informative-errors /srv/git
