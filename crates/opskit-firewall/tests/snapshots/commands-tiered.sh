#!/bin/sh
# Spec §3: iptables for the three Docker containers (opskit firewall render --format commands).
# Reading: tiered (R1: the LAN range reaches every port, everyone reaches the published ones). LAN range: 192.168.1.1-192.168.1.30.
#
# What the rules rely on: each container on a fixed address, on a Docker network whose bridge
# has a fixed name, publishing its ports on IPv4 only (0.0.0.0):
#   Docker_A   172.30.1.10     bridge br-ab  docker run --network <network with bridge br-ab> --ip 172.30.1.10 -p 0.0.0.0:8080:8080
#   Docker_B   172.30.1.11     bridge br-ab  docker run --network <network with bridge br-ab> --ip 172.30.1.11 -p 0.0.0.0:3316:3316
#   Docker_C   172.30.2.10     bridge br-c   docker run --network <network with bridge br-c> --ip 172.30.2.10 -p 0.0.0.0:80:80
#   (docker network create -o com.docker.network.bridge.name=<bridge> --subnet <subnet> <network>)
#
# These commands change the rules one at a time, so for a moment only part of the policy is in
# place. `opskit firewall apply` loads the same rules in one atomic iptables-restore.
set -e

# Start from an empty OPSKIT-INBOUND (opskit's own chain): create it, or empty it.
iptables -w -N OPSKIT-INBOUND 2>/dev/null || iptables -w -F OPSKIT-INBOUND
# Start from an empty DOCKER-USER (Docker creates it and never touches its rules).
iptables -w -N DOCKER-USER 2>/dev/null || iptables -w -F DOCKER-USER

# §3 (all) replies of connections already allowed, both ways; Docker's rules decide the rest
iptables -w -A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN

# §3 (all) packets conntrack cannot place never reach a container
iptables -w -A DOCKER-USER -m conntrack --ctstate INVALID -j DROP

# §3.1 Docker_A, Docker_B may not reach Docker_C: directly, through a published host port or a gateway address (both DNAT'd before this chain)
iptables -w -A DOCKER-USER -i br-ab -o br-c -j DROP

# §3.1 Docker_C may not reach Docker_A, Docker_B: directly, through a published host port or a gateway address (both DNAT'd before this chain)
iptables -w -A DOCKER-USER -i br-c -o br-ab -j DROP

# §3.1 Docker_A, Docker_B talk to each other on br-ab (seen here only with br_netfilter on)
iptables -w -A DOCKER-USER -i br-ab -o br-ab -j RETURN

# §3.1 traffic inside br-c (Docker_C alone) is left to Docker
iptables -w -A DOCKER-USER -i br-c -o br-c -j RETURN

# §3.2 anything else entering br-ab comes from outside the containers: OPSKIT-INBOUND judges it
iptables -w -A DOCKER-USER -o br-ab -j OPSKIT-INBOUND

# §3.2 anything else entering br-c comes from outside the containers: OPSKIT-INBOUND judges it
iptables -w -A DOCKER-USER -o br-c -j OPSKIT-INBOUND

# §3.2 the LAN 192.168.1.1-192.168.1.30 reaches every container (Docker still drops unpublished ports)
iptables -w -A OPSKIT-INBOUND -m iprange --src-range 192.168.1.1-192.168.1.30 -j RETURN

# §3.3 Docker_A:8080 is served to the outside world on host port 8080
iptables -w -A OPSKIT-INBOUND -d 172.30.1.10/32 -p tcp -m tcp --dport 8080 -m conntrack --ctorigdstport 8080 -j RETURN

# §3.3 Docker_C:80 is served to the outside world on host port 80
iptables -w -A OPSKIT-INBOUND -d 172.30.2.10/32 -p tcp -m tcp --dport 80 -m conntrack --ctorigdstport 80 -j RETURN

# §3.3 nothing else: Docker_B:3316 is not served to the outside world
iptables -w -A OPSKIT-INBOUND -j DROP

# §3.4 Persistent: keep the policy in a file and load it with iptables-restore --noflush before
# Docker starts, at every boot and with every start or restart of docker.service. Not
# iptables-services: its restore flushes Docker's chains. (`opskit firewall persist` does the
# same and adds a verify timer.)
install -d -m 0755 /etc/opskit /etc/systemd/system
cat > /etc/opskit/firewall.rules <<'EOF'
# opskit firewall policy (spec §3, reading: tiered). Load with
#   iptables-restore -w 10 --noflush <this file>
# Only DOCKER-USER and OPSKIT-INBOUND are replaced; Docker's own chains and rules stay as they are.
*filter
:DOCKER-USER - [0:0]
:OPSKIT-INBOUND - [0:0]
# §3 (all) replies of connections already allowed, both ways; Docker's rules decide the rest
-A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
# §3 (all) packets conntrack cannot place never reach a container
-A DOCKER-USER -m conntrack --ctstate INVALID -j DROP
# §3.1 Docker_A, Docker_B may not reach Docker_C: directly, through a published host port or a gateway address (both DNAT'd before this chain)
-A DOCKER-USER -i br-ab -o br-c -j DROP
# §3.1 Docker_C may not reach Docker_A, Docker_B: directly, through a published host port or a gateway address (both DNAT'd before this chain)
-A DOCKER-USER -i br-c -o br-ab -j DROP
# §3.1 Docker_A, Docker_B talk to each other on br-ab (seen here only with br_netfilter on)
-A DOCKER-USER -i br-ab -o br-ab -j RETURN
# §3.1 traffic inside br-c (Docker_C alone) is left to Docker
-A DOCKER-USER -i br-c -o br-c -j RETURN
# §3.2 anything else entering br-ab comes from outside the containers: OPSKIT-INBOUND judges it
-A DOCKER-USER -o br-ab -j OPSKIT-INBOUND
# §3.2 anything else entering br-c comes from outside the containers: OPSKIT-INBOUND judges it
-A DOCKER-USER -o br-c -j OPSKIT-INBOUND
# §3.2 the LAN 192.168.1.1-192.168.1.30 reaches every container (Docker still drops unpublished ports)
-A OPSKIT-INBOUND -m iprange --src-range 192.168.1.1-192.168.1.30 -j RETURN
# §3.3 Docker_A:8080 is served to the outside world on host port 8080
-A OPSKIT-INBOUND -d 172.30.1.10/32 -p tcp -m tcp --dport 8080 -m conntrack --ctorigdstport 8080 -j RETURN
# §3.3 Docker_C:80 is served to the outside world on host port 80
-A OPSKIT-INBOUND -d 172.30.2.10/32 -p tcp -m tcp --dport 80 -m conntrack --ctorigdstport 80 -j RETURN
# §3.3 nothing else: Docker_B:3316 is not served to the outside world
-A OPSKIT-INBOUND -j DROP
COMMIT
EOF
chmod 0600 /etc/opskit/firewall.rules
cat > /etc/systemd/system/opskit-firewall.service <<'EOF'
# Installed by `opskit firewall persist`: spec §3, the policy survives reboots and
# Docker restarts. Docs: docs/runbooks/firewall.md
[Unit]
Description=opskit Docker firewall policy (DOCKER-USER, OPSKIT-INBOUND)
# Before dockerd: its restart-policy containers are never reachable unfiltered.
# Docker keeps an existing DOCKER-USER and puts its FORWARD jump first.
Before=docker.service
After=network-pre.target
Wants=network-pre.target
# Stopped and started again with every stop, start and restart of Docker.
PartOf=docker.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStartPre=/usr/sbin/iptables-restore -w 10 --test --noflush /etc/opskit/firewall.rules
ExecStart=/usr/sbin/iptables-restore -w 10 --noflush /etc/opskit/firewall.rules

[Install]
WantedBy=multi-user.target docker.service
EOF
systemctl daemon-reload
systemctl enable opskit-firewall.service
# restart, not start: an active oneshot would not load a changed file
systemctl restart opskit-firewall.service
