#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.
"""Private MariaDB and RabbitMQ servers from the Debian packages.

Each one gets its own data directory, loopback ports and credentials, runs
in its own session and is stopped - SIGKILL as a last resort - by
``stop()``; the system's own servers (if any) are never touched.  Several
test runs share the machine, so ports are taken from small ranges and a
server that lost its port to another run is retried on the next one.

Ports on 127.0.0.1: MariaDB 13306-13309; RabbitMQ 15672-15677 in two slots
of three (AMQP, Erlang distribution, a private epmd).
"""

import os
import secrets
import signal
import subprocess

from fuse_cinder.allinone import sandbox

MARIADB_PORTS = range(13306, 13310)
RABBIT_SLOTS = ((15672, 15673, 15674), (15675, 15676, 15677))
# Debian's /usr/sbin/rabbitmq-server switches to the rabbitmq user and
# its home; the script behind it runs as whoever starts it.
RABBIT_SERVER = '/usr/lib/rabbitmq/bin/rabbitmq-server'


def missing():
    """What is not installed, as a skip reason, or None."""
    lack = sandbox.missing_programs('mariadbd', 'mariadb-install-db',
                                    'mariadb', 'epmd')
    if not os.access(RABBIT_SERVER, os.X_OK):
        lack.append(RABBIT_SERVER)
    return ('not installed: %s (bindep.txt, profile test)' % ', '.join(lack)
            if lack else None)


def _stop(proc, sig=signal.SIGTERM, timeout=60):
    """Signal, wait, then kill the whole session of ``proc``."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    sandbox.kill_session(proc.pid)
    proc.wait(timeout=30)


class MariaDB(object):
    """mariadbd on a fresh data directory; a ``cinder`` database and user."""

    def __init__(self, base):
        self.base = str(base)
        self.datadir = os.path.join(self.base, 'data')
        self.socket = os.path.join(self.base, 'mysqld.sock')
        self.log = os.path.join(self.base, 'mysqld.err')
        self.password = secrets.token_hex(12)
        self.port = None
        self.proc = None

    @property
    def url(self):
        return 'mysql+pymysql://cinder:%s@127.0.0.1:%d/cinder' % (
            self.password, self.port)

    def sql(self, statement):
        return subprocess.run(
            ['mariadb', '--no-defaults', '--socket', self.socket, '-u',
             'root', '-e', statement], capture_output=True, text=True,
            timeout=60)

    def start(self, timeout=120):
        os.makedirs(self.base, exist_ok=True)
        res = subprocess.run(
            ['mariadb-install-db', '--no-defaults', '--user=root',
             '--datadir=%s' % self.datadir, '--skip-test-db',
             '--auth-root-authentication-method=socket'],
            capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError('mariadb-install-db failed:\n%s%s'
                               % (res.stdout, res.stderr))
        for port in MARIADB_PORTS:
            if sandbox.tcp_port_free(port) and self._try(port, timeout):
                break
        else:
            raise RuntimeError('MariaDB could not start on any of ports '
                               '%d-%d (see %s)' % (MARIADB_PORTS[0],
                                                   MARIADB_PORTS[-1],
                                                   self.log))
        res = self.sql(
            "CREATE DATABASE cinder CHARACTER SET utf8mb4; "
            "CREATE USER 'cinder'@'127.0.0.1' IDENTIFIED BY '%s'; "
            "GRANT ALL PRIVILEGES ON cinder.* TO 'cinder'@'127.0.0.1';"
            % self.password)
        if res.returncode != 0:
            raise RuntimeError('cannot create the cinder database: %s'
                               % res.stderr)
        return self

    def _try(self, port, timeout):
        self.port = port
        with open(os.path.join(self.base, 'mysqld.out'), 'ab') as out:
            self.proc = subprocess.Popen(
                ['mariadbd', '--no-defaults', '--user=root',
                 '--datadir=%s' % self.datadir, '--socket=%s' % self.socket,
                 '--pid-file=%s' % os.path.join(self.base, 'mysqld.pid'),
                 '--log-error=%s' % self.log, '--port=%d' % port,
                 '--bind-address=127.0.0.1', '--skip-name-resolve',
                 '--skip-log-bin', '--innodb-buffer-pool-size=64M',
                 '--innodb-flush-log-at-trx-commit=2',
                 '--max-connections=1000'],
                stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        # A port taken meanwhile makes mariadbd exit: try the next one.
        up = sandbox.wait_for(
            lambda: (self.proc.poll() is not None or
                     self.sql('SELECT 1').returncode == 0), timeout,
            interval=0.3)
        if up and self.proc.poll() is None:
            return True
        _stop(self.proc)
        self.proc = None
        return False

    def stop(self):
        _stop(self.proc)
        self.proc = None


class RabbitMQ(object):
    """A RabbitMQ node with its own epmd, configuration and user."""

    def __init__(self, base):
        self.base = str(base)
        self.password = secrets.token_hex(12)
        self.node = 'fusecinder%d@localhost' % os.getpid()
        self.port = None
        self.proc = None
        self.epmd = None

    @property
    def url(self):
        return 'rabbit://cinder:%s@127.0.0.1:%d/' % (
            self.password, self.port)

    @property
    def log(self):
        return os.path.join(self.base, 'log', '%s.log' % self.node)

    def _env(self, dist, epmd):
        b = self.base
        return dict(
            os.environ,
            HOME=os.path.join(b, 'home'),       # the Erlang cookie
            RABBITMQ_CONF_ENV_FILE=os.path.join(b, 'rabbitmq-env.conf'),
            RABBITMQ_CONFIG_FILE=os.path.join(b, 'rabbitmq.conf'),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(b, 'enabled_plugins'),
            RABBITMQ_MNESIA_BASE=os.path.join(b, 'mnesia'),
            RABBITMQ_LOG_BASE=os.path.join(b, 'log'),
            RABBITMQ_PID_FILE=os.path.join(b, 'rabbitmq.pid'),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS='127.0.0.1',
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(dist),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                '-kernel inet_dist_use_interface {127,0,0,1}'),
            ERL_EPMD_PORT=str(epmd),
            ERL_EPMD_ADDRESS='127.0.0.1')

    def _write_config(self):
        for sub in ('home', 'mnesia', 'log'):
            os.makedirs(os.path.join(self.base, sub), exist_ok=True)
        with open(os.path.join(self.base, 'rabbitmq-env.conf'), 'w'):
            pass        # instead of /etc/rabbitmq/rabbitmq-env.conf
        with open(os.path.join(self.base, 'enabled_plugins'), 'w') as f:
            f.write('[].\n')    # no management plugin, no extra ports
        with open(os.path.join(self.base, 'rabbitmq.conf'), 'w') as f:
            f.write('listeners.tcp.1 = 127.0.0.1:%d\n'
                    'default_user = cinder\n'
                    'default_pass = %s\n' % (self.port, self.password))

    def amqp_answers(self):
        import amqp

        conn = amqp.Connection('127.0.0.1:%d' % self.port, userid='cinder',
                               password=self.password, connect_timeout=3)
        try:
            conn.connect()
        except Exception:
            return False
        conn.close()
        return True

    def start(self, timeout=180):
        for slot in RABBIT_SLOTS:
            if all(sandbox.tcp_port_free(p) for p in slot) and self._try(
                    slot, timeout):
                return self
        raise RuntimeError('RabbitMQ could not start on ports %s (see %s)'
                           % (RABBIT_SLOTS, self.base))

    def _try(self, slot, timeout):
        self.port, dist, epmd = slot
        self._write_config()
        env = self._env(dist, epmd)
        out = open(os.path.join(self.base, 'server.out'), 'ab')
        try:
            self.epmd = subprocess.Popen(
                ['epmd', '-port', str(epmd), '-address', '127.0.0.1'],
                stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, env=env)
            if not sandbox.wait_for(lambda: (
                    self.epmd.poll() is not None or
                    not sandbox.tcp_port_free(epmd)), 10) or \
                    self.epmd.poll() is not None:
                self.stop()
                return False
            self.proc = subprocess.Popen(
                [RABBIT_SERVER], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                cwd=self.base, env=env)
        finally:
            out.close()
        up = sandbox.wait_for(
            lambda: self.proc.poll() is not None or self.amqp_answers(),
            timeout, interval=1)
        if up and self.proc.poll() is None:
            return True
        self.stop()
        return False

    def stop(self):
        # The start script turns SIGTERM into an orderly broker stop.
        _stop(self.proc)
        self.proc = None
        _stop(self.epmd, timeout=10)
        self.epmd = None
