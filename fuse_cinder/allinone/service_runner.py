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
"""The three Cinder services in one process, on the fake transport."""

import argparse
import os
import signal
import sys
import types
from typing import Any
from typing import NoReturn

from fuse_cinder.allinone import cinder_conf


# Seconds the services get to stop after SIGTERM/SIGINT.
STOP_TIMEOUT = 10
# SQLite connections kept open for the next session (see
# _sqlite_connection_pool): as many as sessions can be open at once, the
# API's green threads (wsgi_default_pool_size, 100) and those of the two
# RPC servers (executor_thread_pool_size, 64 each).
SQLITE_POOL_SIZE = 256

#: The options that generate cinder.conf: each is the build_config()
#: keyword of the same name (--api-port gives api_port), with its
#: argparse settings. run_services() hands them all over.
CONF_OPTIONS: dict[str, dict[str, Any]] = {
    'api_port': dict(type=int, default=8776),
    'volume_driver': dict(default=cinder_conf.DEFAULT_DRIVER),
    'volumes_home': dict(help='volumes_home of the backend (a directory '
                              'on the FUSE mount).'),
    'tgt_control_port': dict(type=int,
                             help='fuse_tgt_control_port of the backend.'),
    'target_ip': dict(default='127.0.0.1'),
    'target_port': dict(type=int, default=3260),
    'debug': dict(action='store_true'),
}
#: Every option of the command, in --help order: --state-dir, the
#: cinder.conf ones, then those about which cinder.conf to run.
OPTIONS: dict[str, dict[str, Any]] = {
    'state_dir': dict(required=True,
                      help='Directory for cinder.conf, the SQLite database, '
                           'locks, target files and the log.'),
    **CONF_OPTIONS,
    'backend_option': dict(action='append', default=[], metavar='KEY=VALUE',
                           help='Extra option of the backend section; '
                                'repeatable.'),
    'api_paste_config': dict(help='api-paste.ini to use (default: the one '
                                  'installed with Cinder).'),
    'write_config_only': dict(action='store_true',
                              help='Write cinder.conf, print its path and '
                                   'exit.'),
    'use_config': dict(metavar='FILE',
                       help='Run with this cinder.conf instead of one '
                            'generated from the options (which are then '
                            'ignored): the whole deployment\'s '
                            '--unprivileged writes it under /etc.'),
}


def _put_own_bin_on_path() -> None:
    """Find the virtualenv's commands even when it is not activated.

    privsep-helper and fuse-cinder-files live next to this Python; as root
    the driver's commands run without rootwrap, found through PATH.
    """
    bindir = os.path.dirname(sys.executable)
    path = os.environ.get('PATH', os.defpath)
    if bindir not in path.split(os.pathsep):
        os.environ['PATH'] = os.pathsep.join([bindir, path])


def _privsep_root_helper() -> list[str]:
    """Root helper for oslo.privsep daemons.

    As root no sudo/rootwrap is needed (and often not installed); the
    helper must only find privsep-helper on PATH.
    """
    from cinder import utils
    import shlex

    if os.geteuid() != 0:
        return shlex.split(utils.get_root_helper())
    return ['env', 'PATH=%s' % os.environ['PATH']]


def _serialise_fake_transport() -> None:
    """Make the in-process transport send JSON, as real transports do.

    oslo.messaging's fake driver checks that a message could be encoded
    but hands the Python objects themselves over, replies included: the
    API then got the scheduler's ReadOnlyDicts (``get-pools --detail``
    failed with HTTP 500) and every side could change the other's data.
    A round trip through jsonutils gives each side its own copy of
    exactly what a broker would have carried.
    """
    from oslo_messaging._drivers import impl_fake
    from oslo_serialization import jsonutils

    # oslo.messaging's messages and contexts: JSON-able, untyped.
    def over_the_wire(value: Any) -> Any:
        return None if value is None else jsonutils.loads(
            jsonutils.dumps(value))

    send = impl_fake.FakeDriver._send
    reply = impl_fake.FakeIncomingMessage.reply

    def _send(self: Any, target: Any, ctxt: Any, message: Any, *args: Any,
              **kwargs: Any) -> Any:
        return send(self, target, over_the_wire(ctxt),
                    over_the_wire(message), *args, **kwargs)

    def _reply(self: Any, reply_value: Any = None,
               failure: Any = None) -> Any:
        return reply(self, over_the_wire(reply_value), failure)

    impl_fake.FakeDriver._send = _send
    impl_fake.FakeIncomingMessage.reply = _reply


def _service_class(service: Any) -> type[Any]:
    """cinder.service.Service fit for sharing a process with others.

    Cinder keeps the id of its services-table row in a class attribute,
    which the last service created overwrites; report_state() then sends
    every heartbeat to that one row and the volume service looks down.
    Each instance remembers its own id (origin_service_id) already, so
    put it back before every heartbeat.
    """
    class SharedProcessService(service.Service):
        def report_state(self) -> Any:
            service.Service.service_id = self.origin_service_id
            return super().report_state()

    return SharedProcessService


def _sqlite_write_ahead_log(connection: str) -> None:
    """Commit the all-in-one's SQLite database without an fsync each.

    In SQLite's default rollback journal every commit syncs the disk
    about three times, under one database-wide write lock: a burst of
    exports queued behind each other's commits for seconds. A write-ahead
    log with ``synchronous = NORMAL`` syncs only at checkpoints and, as
    SQLite documents, never corrupts the database; a power cut can lose
    the last commits. Production Cinder uses MySQL or PostgreSQL. The
    journal mode stays with the file; ``synchronous`` is per connection,
    so it is set on each one the pool opens.
    """
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy import pool

    path = connection[len('sqlite:///'):]
    db = sqlite3.connect(path)
    try:
        db.execute('PRAGMA journal_mode = WAL')
    finally:
        db.close()

    @event.listens_for(pool.Pool, 'connect')
    def _synchronous_normal(dbapi_con: Any, _record: Any) -> None:
        if isinstance(dbapi_con, sqlite3.Connection):
            dbapi_con.execute('PRAGMA synchronous = NORMAL')


def _sqlite_connection_pool() -> None:
    """Keep the all-in-one's SQLite connections open between sessions.

    oslo.db gives SQLite file databases a NullPool, so every session
    opened a connection and set up the write-ahead log's shared memory
    on its first statement: under a burst of exports, 23% of the
    process's CPU. SQLAlchemy's own default for such a database is a
    QueuePool, put back here through oslo.db's dialect dispatcher (its
    functions registered for "sqlite" run in order, so this one runs
    after oslo.db's). Overflow is unbounded, so a session never waits
    for a connection; connections beyond the pool's size are closed
    when given back, and the one given back last is used next. With 10
    kept, a burst of 100 exports still spent a tenth of the process's
    time opening and closing the overflow, hence a pool as large as the
    number of sessions the services can hold at once.
    """
    from oslo_db.sqlalchemy import engines
    from sqlalchemy import pool

    @engines._init_connection_args.dispatch_for('sqlite')
    def _pooled(url: Any, engine_args: dict[str, Any],
                _kw: dict[str, Any]) -> None:
        if engine_args.get('poolclass') is pool.NullPool:
            engine_args.update(poolclass=pool.QueuePool, pool_use_lifo=True,
                               pool_size=SQLITE_POOL_SIZE, max_overflow=-1)


def run(config_args: list[str]) -> int:
    """Start the three services and block until signalled."""
    # Cinder needs eventlet's monkey patching before anything else loads.
    from cinder import monkey_patch
    monkey_patch.patch()

    import logging as python_logging

    from oslo_config import cfg
    from oslo_log import log as logging
    from oslo_privsep import priv_context
    from oslo_service import service as oslo_service

    from cinder.common import config
    from cinder.common import constants
    from cinder import coordination
    from cinder.db import migration
    from cinder import i18n
    from cinder import objects
    from cinder import rpc
    from cinder import service
    from cinder import version

    i18n.enable_lazy()
    objects.register_all()
    conf = cfg.CONF
    conf(config_args, project='cinder', version=version.version_string())
    refusal = cinder_conf.auth_refusal(conf)
    if refusal:         # before the log, the database or any service
        sys.stderr.write('fuse-cinder-allinone: %s\n' % refusal)
        return 2
    config.set_middleware_defaults()
    logging.setup(conf, 'cinder')
    python_logging.captureWarnings(True)
    log = logging.getLogger(__name__)
    _put_own_bin_on_path()
    priv_context.init(root_helper=_privsep_root_helper())
    _serialise_fake_transport()
    if conf.database.connection.startswith('sqlite:///'):
        _sqlite_write_ahead_log(conf.database.connection)
        _sqlite_connection_pool()

    migration.db_sync()
    coordination.COORDINATOR.start()
    rpc.init(conf)

    launcher = oslo_service.ServiceLauncher(conf, restart_method='mutate')
    service_cls = _service_class(service)
    # Volume services first: their service rows carry the RPC version
    # that the API and the scheduler pin their clients to.
    started = 0
    for backend in filter(None, conf.enabled_backends or []):
        host = '%s@%s' % (conf.host, backend)
        try:
            server = service_cls.create(
                host=host, service_name=backend,
                binary=constants.VOLUME_BINARY, coordination=True)
        except Exception:
            log.exception('Volume service %s failed to start.', host)
            continue
        launcher.launch_service(server)
        started += 1
    if not started:
        log.error('No volume service started; stopping.')
        return 1
    launcher.launch_service(
        service_cls.create(binary=constants.SCHEDULER_BINARY))
    launcher.launch_service(service.WSGIService('osapi_volume'))
    log.info('All-in-one Cinder listening on http://%(host)s:%(port)s/v3',
             {'host': conf.osapi_volume_listen,
              'port': conf.osapi_volume_listen_port})
    return _wait_and_stop(launcher, log)


def _wait_and_stop(launcher: Any, log: Any,
                   stop_timeout: float = STOP_TIMEOUT) -> NoReturn:
    """Block until SIGTERM/SIGINT, then stop everything in bounded time.

    oslo.service's own wait() stops the services from inside its signal
    handler, and with the in-process fake transport the RPC servers can
    wait forever for each other there; so the signal only sets a flag
    here and the stop runs, under a timeout, in the main green thread.
    The process then exits at once: leftover helper threads (privsep,
    thread pools) must not keep a test or a terminal waiting.
    """
    import eventlet

    caught: list[int] = []

    def _handler(signo: int, frame: types.FrameType | None) -> None:
        caught.append(signo)

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    while not caught:
        eventlet.sleep(0.2)
    log.info('Caught signal %d, stopping the services.', caught[0])
    code = 0
    timer = eventlet.Timeout(stop_timeout)
    try:
        launcher.stop()
    except eventlet.Timeout:
        log.warning('Services did not stop within %d seconds; exiting '
                    'anyway.', stop_timeout)
        code = 1
    finally:
        timer.cancel()
    log.info('All-in-one Cinder stopped.')
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog='fuse-cinder-allinone',
        description='Run Cinder API, scheduler and one fuse_cinder '
                    'volume backend in one process (fake transport, '
                    'SQLite, noauth). Unrecognised arguments, such as '
                    '--config-file, are handed to Cinder.')
    for name, settings in OPTIONS.items():
        parser.add_argument('--' + name.replace('_', '-'), **settings)
    args, rest = parser.parse_known_args(argv)
    extra: dict[str, str] = {}
    for item in args.backend_option:
        key, sep, value = item.partition('=')
        if not sep or not key:
            parser.error('--backend-option needs KEY=VALUE, got %r' % item)
        extra[key.strip()] = value.strip()
    args.backend_options = extra
    return args, rest


def run_services(argv: list[str]) -> int:
    """Only the Cinder services, in this process (``--state-dir``)."""
    args, rest = parse_args(argv)
    if args.use_config:
        return run(['--config-file', args.use_config] + rest)
    paste = args.api_paste_config or cinder_conf.find_api_paste()
    if not paste:
        sys.stderr.write('Cannot find the api-paste.ini of the installed '
                         'Cinder; pass --api-paste-config.\n')
        return 2
    state_dir = os.path.abspath(args.state_dir)
    conf = cinder_conf.build_config(
        state_dir, backend_options=args.backend_options, api_paste=paste,
        **{name: getattr(args, name) for name in CONF_OPTIONS})
    path = cinder_conf.write_config(conf, state_dir)
    if args.write_config_only:
        print(path)
        return 0
    return run(['--config-file', path] + rest)
