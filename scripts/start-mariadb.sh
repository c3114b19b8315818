#!/usr/bin/env bash
# MariaDB for the tests, on a fresh Debian or an already set-up machine, idempotently:
# install the server package when missing, start it on 127.0.0.1:3306 when it is not running, and create the
# test account `streamml` (password `streamml`, for 'localhost' and '127.0.0.1') allowed to create and drop the
# databases `streamml_*` the tests make. Root is used only through the unix socket, as Debian sets it up.
# Prints the SQLAlchemy server URL the tests use (STREAMML_TEST_MYSQL) on its last line.
set -euo pipefail
USER_NAME=${STREAMML_TEST_MYSQL_USER:-streamml}
PASSWORD=${STREAMML_TEST_MYSQL_PASSWORD:-streamml}
SOCKET=/run/mysqld/mysqld.sock
t0=$(date +%s)

if [ ! -x /usr/sbin/mariadbd ]; then
  echo "installing mariadb-server (apt-get)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null
fi

as_root() { mariadb --protocol=socket -S "$SOCKET" -u root "$@"; }
running() { as_root -e 'SELECT 1' >/dev/null 2>&1; }

if ! running; then
  if [ ! -d /var/lib/mysql/mysql ]; then mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null; fi
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  # bind to loopback only; the package's config supplies the rest (socket, datadir)
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- \
    --user=mysql --bind-address=127.0.0.1 --port=3306 --socket="$SOCKET"
  for _ in $(seq 1 240); do running && break; sleep 0.25; done
  running || { echo "MariaDB did not start (see journal or /var/log/mysql)" >&2; exit 1; }
fi

as_root <<SQL
CREATE USER IF NOT EXISTS '$USER_NAME'@'localhost' IDENTIFIED BY '$PASSWORD';
CREATE USER IF NOT EXISTS '$USER_NAME'@'127.0.0.1' IDENTIFIED BY '$PASSWORD';
ALTER USER '$USER_NAME'@'localhost' IDENTIFIED BY '$PASSWORD';
ALTER USER '$USER_NAME'@'127.0.0.1' IDENTIFIED BY '$PASSWORD';
GRANT ALL PRIVILEGES ON \`streamml\\_%\`.* TO '$USER_NAME'@'localhost';
GRANT ALL PRIVILEGES ON \`streamml\\_%\`.* TO '$USER_NAME'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL

# the account really works over TCP (what the tests use)
mariadb --protocol=tcp -h 127.0.0.1 -P 3306 -u "$USER_NAME" -p"$PASSWORD" -e 'SELECT 1' >/dev/null
echo "MariaDB ready on 127.0.0.1:3306 as $USER_NAME ($(( $(date +%s) - t0 )) s)" >&2
echo "mysql+pymysql://$USER_NAME:$PASSWORD@127.0.0.1:3306"
