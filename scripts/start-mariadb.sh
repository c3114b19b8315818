#!/usr/bin/env bash
# Start MariaDB on 127.0.0.1:3306 if it is not answering, and wait until it does.
set -euo pipefail
up() { mariadb-admin --protocol=tcp -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1; }
up && exit 0
if [ ! -d /var/lib/mysql/mysql ]; then mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null; fi
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
for _ in $(seq 1 120); do up && { mariadb -h 127.0.0.1 -u root -e 'CREATE DATABASE IF NOT EXISTS test' ; exit 0; }; sleep 0.5; done
echo "MariaDB did not answer on 127.0.0.1:3306" >&2; exit 1
