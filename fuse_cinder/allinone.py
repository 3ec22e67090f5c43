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
"""Cinder API, scheduler and volume service in a single process.

For trying the driver and for functional tests: no message broker
(``transport_url = fake:/``, which only works inside one process), a
SQLite database, ``noauth`` (an extra config file that sets another
``auth_strategy`` is refused before anything starts: the readiness
probe speaks noauth) and one backend.  It is not a production
deployment: README.rst "Multi-process deployment" runs the three services
separately, on RabbitMQ and MariaDB.

Two ways to run it:

``fuse-cinder-allinone [--work-dir DIR] [--volumes-home DIR] [--self-check]
[--unprivileged]``
    The whole deployment on this machine, as root: applies the export
    patches to the Cinder this Python imports (if not applied yet),
    starts a private tgtd on a loopback portal, mounts bindfs over a
    local directory unless ``--volumes-home`` names a directory of an
    existing FUSE mount, runs the Cinder services in a child process,
    prints the ``cinder`` CLI environment and waits.  SIGINT (Ctrl-C) or
    SIGTERM stops everything: no target, mount or process is left.
    ``--unprivileged`` runs that child as a throw-away user whose only
    root power is ``sudo cinder-rootwrap`` with the package's filters
    (README install step 4); the user is removed at the end.

``fuse-cinder-allinone --state-dir DIR --api-port 8776 --volumes-home ...``
    Only the Cinder services, in this process; tgtd and the mount are the
    caller's.  This is what the whole deployment runs as its child.
    A ``cinder.conf`` is generated in the state directory from the
    options; ``--config-file`` files given after it override any of its
    values.  The database schema is created or upgraded at every start.
    SIGTERM or SIGINT stops all three services.
"""

import argparse
import configparser
import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

from fuse_cinder import sandbox

DEFAULT_DRIVER = 'fuse_cinder.driver.FuseISCSIDriver'
BACKEND = 'fuse'
# Seconds the services get to stop after SIGTERM/SIGINT.
STOP_TIMEOUT = 10

# Where Cinder's wheel and distribution packages put api-paste.ini.
_PASTE_DIRS = (
    os.path.join(sys.prefix, 'etc', 'cinder'),
    '/etc/cinder',
    '/usr/local/etc/cinder',
    '/usr/share/cinder',
)


def _find_etc_file(name, near=None):
    """Find one of the files Cinder installs in its etc directory."""
    bases = ([os.path.dirname(near)] if near else []) + list(_PASTE_DIRS)
    for base in bases:
        path = os.path.join(base, name)
        if os.path.isfile(path):
            return path
    return None


def find_api_paste():
    """Return the api-paste.ini shipped with the installed Cinder."""
    return _find_etc_file('api-paste.ini')


#: The only auth_strategy served here: the readiness probe, --self-check
#: and the CLI environment the launcher prints speak noauth, and there is
#: no Keystone to ask for tokens.
AUTH_STRATEGY = 'noauth'


def _config_file_args(args):
    """The --config-file and --config-dir arguments of ``args``, in order.

    Both spellings, ``--config-file F`` and ``--config-file=F``; the other
    arguments are Cinder's and do not matter for the check.
    """
    picked = []
    args = iter(args)
    for arg in args:
        name, eq, value = arg.partition('=')
        if name in ('--config-file', '--config-dir'):
            value = value if eq else next(args, None)
            if value is not None:
                picked += [name, value]
    return picked


def auth_refusal(conf):
    """Why Cinder cannot serve here with the parsed ``conf``, or None.

    With keystone the services would start and never be reported ready:
    the readiness probe's noauth token is refused.
    """
    if conf.auth_strategy == AUTH_STRATEGY:
        return None
    where = conf.get_location('auth_strategy').detail
    return ('[DEFAULT] auth_strategy = %(value)s%(where)s is not supported: '
            'the all-in-one runs Cinder with auth_strategy = %(ours)s (its '
            'readiness check, --self-check and the CLI environment it '
            'prints use noauth; there is no Keystone). Remove the option, '
            'or deploy Cinder with Keystone as README.rst "Multi-process '
            'deployment" describes.'
            % {'value': conf.auth_strategy, 'ours': AUTH_STRATEGY,
               'where': ' (set in %s)' % where if where else ''})


def config_refusal(config_args):
    """auth_refusal() of extra config files, before anything is started.

    The launcher's own process: the files are read as Cinder will read
    them, by oslo.config (later files win, --config-dir included), after
    the services' generated cinder.conf, which sets noauth. Files that
    cannot be read are left to Cinder, whose parse names them.
    """
    from oslo_config import cfg

    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.StrOpt('auth_strategy', default=AUTH_STRATEGY))
    try:
        conf(_config_file_args(config_args), project='cinder',
             default_config_files=[])
    except (cfg.Error, OSError):
        return None         # Cinder's own parse reports it, its own way
    return auth_refusal(conf)


def build_config(state_dir, api_port=8776, volume_driver=DEFAULT_DRIVER,
                 volumes_home=None, tgt_control_port=None,
                 target_ip='127.0.0.1', target_port=3260,
                 backend_options=None, api_paste=None, debug=False):
    """Return the generated cinder.conf as a ConfigParser."""
    state_dir = os.path.abspath(state_dir)
    conf = configparser.ConfigParser(interpolation=None)
    conf['DEFAULT'] = {
        'host': 'allinone',
        'state_path': state_dir,
        'transport_url': 'fake:/',
        'auth_strategy': 'noauth',
        'api_paste_config': api_paste or find_api_paste() or 'api-paste.ini',
        'resource_query_filters_file': _find_etc_file(
            'resource_filters.json', api_paste) or '',
        'osapi_volume_listen': '127.0.0.1',
        'osapi_volume_listen_port': str(api_port),
        'osapi_volume_workers': '1',
        'enabled_backends': BACKEND,
        'default_volume_type': '__DEFAULT__',
        'log_file': os.path.join(state_dir, 'cinder.log'),
        'debug': str(bool(debug)),
        'report_interval': '5',
        'periodic_interval': '10',
        'periodic_fuzzy_delay': '0',
    }
    conf['database'] = {
        'connection': 'sqlite:///%s' % os.path.join(state_dir,
                                                    'cinder.sqlite'),
    }
    conf['oslo_messaging_notifications'] = {'driver': 'noop'}
    conf['oslo_concurrency'] = {'lock_path': os.path.join(state_dir,
                                                          'locks')}
    conf['coordination'] = {
        'backend_url': 'file://%s' % os.path.join(state_dir, 'coordination'),
    }
    backend = {
        'volume_driver': volume_driver,
        'volume_backend_name': BACKEND,
        'target_ip_address': target_ip,
        'target_port': str(target_port),
        'volumes_dir': os.path.join(state_dir, 'targets'),
    }
    if volumes_home:
        backend['volumes_home'] = volumes_home
    if tgt_control_port is not None:
        backend['fuse_tgt_control_port'] = str(tgt_control_port)
    backend.update(backend_options or {})
    conf[BACKEND] = backend
    return conf


def make_state_dirs(state_dir):
    """The state directory and the subdirectories cinder.conf names."""
    for sub in ('', 'locks', 'coordination', 'targets'):
        os.makedirs(os.path.join(state_dir, sub), exist_ok=True)


def write_config(conf, state_dir):
    """Write cinder.conf into the state directory and return its path."""
    make_state_dirs(state_dir)
    path = os.path.join(state_dir, 'cinder.conf')
    with open(path, 'w') as f:
        conf.write(f)
    return path


def _put_own_bin_on_path():
    """Find the virtualenv's commands even when it is not activated.

    privsep-helper and fuse-cinder-files live next to this Python; as root
    the driver's commands run without rootwrap, found through PATH.
    """
    bindir = os.path.dirname(sys.executable)
    path = os.environ.get('PATH', os.defpath)
    if bindir not in path.split(os.pathsep):
        os.environ['PATH'] = os.pathsep.join([bindir, path])


def _privsep_root_helper():
    """Root helper for oslo.privsep daemons.

    As root no sudo/rootwrap is needed (and often not installed); the
    helper must only find privsep-helper on PATH.
    """
    from cinder import utils
    import shlex

    if os.geteuid() != 0:
        return shlex.split(utils.get_root_helper())
    return ['env', 'PATH=%s' % os.environ['PATH']]


def _serialise_fake_transport():
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

    def over_the_wire(value):
        return None if value is None else jsonutils.loads(
            jsonutils.dumps(value))

    send = impl_fake.FakeDriver._send
    reply = impl_fake.FakeIncomingMessage.reply

    def _send(self, target, ctxt, message, *args, **kwargs):
        return send(self, target, over_the_wire(ctxt),
                    over_the_wire(message), *args, **kwargs)

    def _reply(self, reply_value=None, failure=None):
        return reply(self, over_the_wire(reply_value), failure)

    impl_fake.FakeDriver._send = _send
    impl_fake.FakeIncomingMessage.reply = _reply


def _service_class(service):
    """cinder.service.Service fit for sharing a process with others.

    Cinder keeps the id of its services-table row in a class attribute,
    which the last service created overwrites; report_state() then sends
    every heartbeat to that one row and the volume service looks down.
    Each instance remembers its own id (origin_service_id) already, so
    put it back before every heartbeat.
    """
    class SharedProcessService(service.Service):
        def report_state(self):
            service.Service.service_id = self.origin_service_id
            return super().report_state()

    return SharedProcessService


def _sqlite_write_ahead_log(connection):
    """Commit the all-in-one's SQLite database without an fsync each.

    In SQLite's default rollback journal every commit syncs the disk
    about three times, under one database-wide write lock: a burst of
    exports queued behind each other's commits for seconds. A write-ahead
    log with ``synchronous = NORMAL`` syncs only at checkpoints and, as
    SQLite documents, never corrupts the database; a power cut can lose
    the last commits. Production Cinder uses MySQL or PostgreSQL. The
    journal mode stays with the file; ``synchronous`` is per connection,
    and oslo.db opens one per session (NullPool).
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
    def _synchronous_normal(dbapi_con, _record):
        if isinstance(dbapi_con, sqlite3.Connection):
            dbapi_con.execute('PRAGMA synchronous = NORMAL')


def run(config_args):
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
    refusal = auth_refusal(conf)
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


def _wait_and_stop(launcher, log, stop_timeout=STOP_TIMEOUT):
    """Block until SIGTERM/SIGINT, then stop everything in bounded time.

    oslo.service's own wait() stops the services from inside its signal
    handler, and with the in-process fake transport the RPC servers can
    wait forever for each other there; so the signal only sets a flag
    here and the stop runs, under a timeout, in the main green thread.
    The process then exits at once: leftover helper threads (privsep,
    thread pools) must not keep a test or a terminal waiting.
    """
    import eventlet

    caught = []

    def _handler(signo, frame):
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


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='fuse-cinder-allinone',
        description='Run Cinder API, scheduler and one fuse_cinder '
                    'volume backend in one process (fake transport, '
                    'SQLite, noauth). Unrecognised arguments, such as '
                    '--config-file, are handed to Cinder.')
    parser.add_argument('--state-dir', required=True,
                        help='Directory for cinder.conf, the SQLite '
                             'database, locks, target files and the log.')
    parser.add_argument('--api-port', type=int, default=8776)
    parser.add_argument('--volume-driver', default=DEFAULT_DRIVER)
    parser.add_argument('--volumes-home',
                        help='volumes_home of the backend (a directory on '
                             'the FUSE mount).')
    parser.add_argument('--tgt-control-port', type=int,
                        help='fuse_tgt_control_port of the backend.')
    parser.add_argument('--target-ip', default='127.0.0.1')
    parser.add_argument('--target-port', type=int, default=3260)
    parser.add_argument('--backend-option', action='append', default=[],
                        metavar='KEY=VALUE',
                        help='Extra option of the backend section; '
                             'repeatable.')
    parser.add_argument('--api-paste-config',
                        help='api-paste.ini to use (default: the one '
                             'installed with Cinder).')
    parser.add_argument('--debug', action='store_true')
    parser.add_argument('--write-config-only', action='store_true',
                        help='Write cinder.conf, print its path and exit.')
    parser.add_argument('--use-config', metavar='FILE',
                        help='Run with this cinder.conf instead of one '
                             'generated from the options (which are then '
                             'ignored): the whole deployment\'s '
                             '--unprivileged writes it under /etc.')
    args, rest = parser.parse_known_args(argv)
    extra = {}
    for item in args.backend_option:
        key, sep, value = item.partition('=')
        if not sep or not key:
            parser.error('--backend-option needs KEY=VALUE, got %r' % item)
        extra[key.strip()] = value.strip()
    args.backend_options = extra
    return args, rest


def run_services(argv):
    """Only the Cinder services, in this process (``--state-dir``)."""
    args, rest = parse_args(argv)
    if args.use_config:
        return run(['--config-file', args.use_config] + rest)
    paste = args.api_paste_config or find_api_paste()
    if not paste:
        sys.stderr.write('Cannot find the api-paste.ini of the installed '
                         'Cinder; pass --api-paste-config.\n')
        return 2
    state_dir = os.path.abspath(args.state_dir)
    conf = build_config(
        state_dir, api_port=args.api_port, volume_driver=args.volume_driver,
        volumes_home=args.volumes_home,
        tgt_control_port=args.tgt_control_port, target_ip=args.target_ip,
        target_port=args.target_port, backend_options=args.backend_options,
        api_paste=paste, debug=args.debug)
    path = write_config(conf, state_dir)
    if args.write_config_only:
        print(path)
        return 0
    return run(['--config-file', path] + rest)


# -- the whole deployment: tgtd, FUSE mount, services, clean stop ----------

#: API ports the whole deployment picks from unless --api-port is given.
API_PORTS = range(18780, 18790)
#: Seconds the services get to come up (schema creation included).
READY_TIMEOUT = 300
#: Seconds the service process gets to stop before it is killed.
SERVICES_STOP_TIMEOUT = 30
#: The root helper of --unprivileged, next to this Python.
ROOTWRAP = os.path.join(os.path.dirname(sys.executable), 'cinder-rootwrap')
MiB = 1 << 20


class Stop(Exception):
    """SIGINT or SIGTERM arrived: unwind and clean up."""


class LaunchError(Exception):
    """A step of the deployment failed; the message says which."""


class Api(object):
    """Minimal client of the noauth Cinder API, for readiness and checks.

    The launcher must not import Cinder or cinderclient: it may have
    just patched Cinder, and the check must see the API as users do.
    """

    def __init__(self, url, user='admin', project='admin'):
        self.url = url
        self.token = '%s:%s' % (user, project)

    def call(self, method, path, body=None, microversion='3.0',
             timeout=120):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={'X-Auth-Token': self.token,
                     'Content-Type': 'application/json',
                     'Accept': 'application/json',
                     'OpenStack-API-Version': 'volume %s' % microversion})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw)
            except ValueError:
                return err.code, raw.decode(errors='replace')

    def services_up(self):
        """Whether the scheduler and a volume backend report up.

        backend_state (3.49) comes from the capabilities a volume service
        publishes at the end of init_host, so unlike its heartbeat it
        cannot be left over from an earlier run with the same database.
        """
        try:
            status, body = self.call('GET', '/os-services',
                                     microversion='3.49', timeout=10)
        except OSError:
            return False
        if status != 200:
            return False
        up = {(s['binary'], s.get('backend_state', 'up'))
              for s in body['services'] if s['state'] == 'up'}
        return (('cinder-volume', 'up') in up and
                any(b == 'cinder-scheduler' for b, _s in up))

    def volume_status(self, vol_id, kind='volume'):
        """Status of a volume (or ``kind='snapshot'``); None once gone."""
        status, body = self.call('GET', '/%ss/%s' % (kind, vol_id))
        if status == 404:
            return None
        if status != 200:
            raise LaunchError('GET %s %s: HTTP %s %s'
                              % (kind, vol_id, status, body))
        return body[kind]['status']

    def wait_status(self, vol_id, wanted, timeout=120, kind='volume'):
        seen = []

        def reached():
            seen[:] = [self.volume_status(vol_id, kind)]
            if seen[0] != wanted and seen[0] and seen[0].startswith(
                    'error'):
                raise LaunchError('%s %s went %s' % (kind, vol_id, seen[0]))
            return seen[0] == wanted

        if not sandbox.wait_for(reached, timeout, interval=0.2):
            raise LaunchError('%s %s is still %s after %d s, not %s'
                              % (kind, vol_id, seen[0] if seen else '?',
                                 timeout, wanted))

    def action(self, vol_id, body):
        return self.call('POST', '/volumes/%s/action' % vol_id, body)


def _expect(what, status, body, codes=(200, 202)):
    if status not in codes:
        raise LaunchError('%s: HTTP %s %s' % (what, status, body))
    return body


def qemu_io_url(data):
    """libiscsi URL of an exported LUN, with its CHAP login."""
    return 'iscsi://%s%%%s@%s/%s/%s' % (
        data['auth_username'], data['auth_password'], data['target_portal'],
        data['target_iqn'], data['target_lun'])


def self_check(api, volumes_home, out):
    """Create, export, write and read over iSCSI, unexport, delete.

    The data written through the target must appear in the volume's file
    on the FUSE mount: that proves the whole path, API to tgtd to FUSE.
    """
    name = 'self-check-%s' % uuid.uuid4().hex[:8]
    pattern = 0x5a
    body = _expect('create', *api.call(
        'POST', '/volumes', {'volume': {'size': 1, 'name': name}}))
    vol_id = body['volume']['id']
    exported = False
    try:
        api.wait_status(vol_id, 'available')
        out('self-check: created 1 GiB volume %s' % vol_id)
        body = _expect('os-export', *api.action(vol_id, {'os-export': {}}))
        exported = True
        data = body['connection_info']['data']
        out('self-check: exported as %s on %s (CHAP user %s)'
            % (data['target_iqn'], data['target_portal'],
               data['auth_username']))
        res = subprocess.run(
            ['qemu-io', '-f', 'raw', '-c', 'write -P %d 1M 1M' % pattern,
             '-c', 'read -P %d 1M 1M' % pattern, qemu_io_url(data)],
            capture_output=True, text=True, timeout=300)
        if res.returncode != 0 or 'verification failed' in res.stdout:
            raise LaunchError('iSCSI write/read failed: %s%s'
                              % (res.stdout, res.stderr))
        with open(os.path.join(volumes_home, 'volume-%s' % vol_id),
                  'rb') as f:
            f.seek(MiB)
            if f.read(MiB) != bytes([pattern]) * MiB:
                raise LaunchError('the data written over iSCSI is not in '
                                  'the volume file on the FUSE mount')
        out('self-check: wrote and read back 1 MiB over iSCSI; the data '
            'is in the file on the FUSE mount')
        _expect('os-delete-export',
                *api.action(vol_id, {'os-delete-export': {}}))
        exported = False
        api.wait_status(vol_id, 'available')
        out('self-check: export removed')
        snapshot_and_clone(api, volumes_home, vol_id, name, pattern, out)
    finally:
        if exported:
            api.action(vol_id, {'os-delete-export': {}})
            sandbox.wait_for(
                lambda: api.volume_status(vol_id) != 'deleting_export',
                60, interval=0.5)
        api.call('DELETE', '/volumes/%s' % vol_id)
    if not sandbox.wait_for(lambda: api.volume_status(vol_id) is None,
                            120, interval=0.5):
        raise LaunchError('volume %s was not deleted' % vol_id)
    out('self-check: volume deleted')


def snapshot_and_clone(api, volumes_home, vol_id, name, pattern, out):
    """Snapshot the volume and clone it; say how long each took.

    Both are copies of the volume's file by the driver; the data written
    over iSCSI must be in each. Both are deleted again.
    """
    made = []
    try:
        start = time.monotonic()
        body = _expect('snapshot', *api.call(
            'POST', '/snapshots', {'snapshot': {'volume_id': vol_id,
                                                'name': name}}))
        snap_id = body['snapshot']['id']
        made.append(('snapshot', snap_id))
        api.wait_status(snap_id, 'available', kind='snapshot', timeout=600)
        out('self-check: snapshot %s took %.1f s'
            % (snap_id, time.monotonic() - start))
        start = time.monotonic()
        body = _expect('clone', *api.call(
            'POST', '/volumes', {'volume': {'size': 1, 'name': name + '-clone',
                                            'source_volid': vol_id}}))
        clone_id = body['volume']['id']
        made.append(('volume', clone_id))
        api.wait_status(clone_id, 'available', timeout=600)
        out('self-check: clone %s took %.1f s'
            % (clone_id, time.monotonic() - start))
        for kind, obj_id in made:
            with open(os.path.join(volumes_home, '%s-%s' % (kind, obj_id)),
                      'rb') as f:
                f.seek(MiB)
                if f.read(MiB) != bytes([pattern]) * MiB:
                    raise LaunchError('the %s of the volume lacks the data '
                                      'written over iSCSI' % kind)
        out('self-check: the snapshot and the clone hold the data')
    finally:
        for kind, obj_id in reversed(made):
            api.call('DELETE', '/%ss/%s' % (kind, obj_id))
            if not sandbox.wait_for(
                    lambda: api.volume_status(obj_id, kind) is None, 120,
                    interval=0.5):
                raise LaunchError('%s %s was not deleted' % (kind, obj_id))


def client_extension_dir():
    """Directory the cinder CLI needs on PYTHONPATH, or None.

    python-cinderclient finds ``*cinderclient_ext`` modules with pkgutil,
    which sees plain directories on sys.path only, not the import hook of
    an editable (PEP 660) install such as tox's: there ``cinder export``
    is missing unless the checkout is on PYTHONPATH.
    """
    spec = importlib.util.find_spec('fuse_cinderclient_ext')
    if spec is None or not spec.origin:
        return None
    where = os.path.dirname(os.path.abspath(spec.origin))
    plain = set(site.getsitepackages()) | {site.getusersitepackages()}
    return None if where in {os.path.abspath(p) for p in plain} else where


def cli_environment(url, ext_dir=None):
    """Shell line that points the cinder CLI at the deployment."""
    words = ['export',
             'PATH=%s:$PATH' % shlex.quote(
                 os.path.dirname(os.path.abspath(sys.executable)))]
    if ext_dir:
        words.append('PYTHONPATH=%s${PYTHONPATH:+:$PYTHONPATH}'
                     % shlex.quote(ext_dir))
    words += ['OS_AUTH_TYPE=noauth', 'CINDER_ENDPOINT=%s' % url,
              'OS_USER_ID=admin', 'OS_PROJECT_ID=admin',
              'OS_VOLUME_API_VERSION=3.71']
    return ' '.join(words)


class Deployment(object):
    """What the launcher starts, stopped in the reverse order.

    Every daemon runs in a session of its own, so a Ctrl-C reaches only
    the launcher, and cleanup can go in order: the services first (they
    may be writing), then the targets and tgtd (they hold the volume
    files open), then the mount.
    """

    def __init__(self, args, cinder_args, out):
        self.args = args
        self.cinder_args = cinder_args
        self.out = out
        self.temp_work_dir = args.work_dir is None
        self.work_dir = os.path.abspath(
            args.work_dir or tempfile.mkdtemp(prefix='fuse-cinder-aio-',
                                              dir='/var/tmp'))
        self.state_dir = os.path.join(self.work_dir, 'cinder')
        self.tgtd = None
        self.mount = None
        self.volumes_home = None
        self.services = None
        self.api = None
        # --unprivileged: the service user, its sudoers rules and /etc
        # directory, undone by stop().
        self.cleanup = contextlib.ExitStack()
        self.user = None
        self.etc_dir = None
        self.sudo_log = os.path.join(self.work_dir, 'sudo.log')

    @property
    def log(self):
        return os.path.join(self.state_dir, 'cinder.log')

    def log_tail(self, lines=40):
        text = ''
        for path in (os.path.join(self.state_dir, 'console.log'), self.log):
            try:
                with open(path, errors='replace') as f:
                    text += ''.join(f.readlines()[-lines:])
            except OSError:
                pass
        return text or '(no log)'

    def start(self):
        os.makedirs(self.state_dir, exist_ok=True)
        self._check_config()
        self._check_host()
        self._patch_cinder()
        self._start_tgtd()
        self._prepare_volumes_home()
        self._start_services()

    def _check_config(self):
        """Refuse extra config files that the services cannot run with."""
        why = config_refusal(self.cinder_args)
        if why:
            raise LaunchError(why)

    def _check_host(self):
        if os.geteuid() != 0:
            raise LaunchError('run as root: tgtd, the FUSE mount and the '
                              'volume service need it')
        needed = list(sandbox.TGT_BINARIES) + ['patch']
        if not self.args.volumes_home:
            needed.append('bindfs')
        if self.args.self_check:
            needed.append('qemu-io')
        if self.args.unprivileged:
            needed += ['sudo', 'visudo', 'useradd', 'userdel']
            if not os.access(ROOTWRAP, os.X_OK):
                raise LaunchError('no cinder-rootwrap next to %s'
                                  % sys.executable)
            if not os.path.isdir(sandbox.FILTERS_PATH):
                raise LaunchError('no rootwrap filters in %s (the package '
                                  'must run from its checkout)'
                                  % sandbox.FILTERS_PATH)
        missing = sandbox.missing_programs(*needed)
        if missing:
            raise LaunchError('not installed: %s (see bindep.txt)'
                              % ', '.join(missing))
        if self.args.volumes_home:
            home = os.path.abspath(self.args.volumes_home)
            if not sandbox.is_fuse(home):
                raise LaunchError('%s is not on a FUSE mount (%s is %s)'
                                  % ((home,) + sandbox.mount_of(home)))

    def _patch_cinder(self):
        """fuse-cinder-patch apply on the Cinder the services will import.

        Idempotent: patches already applied are skipped.  A child process
        finds Cinder on the same path as the services will.
        """
        res = subprocess.run(
            [sys.executable, '-m', 'fuse_cinder.cmd.patch_cinder', 'apply'],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=600)
        for line in (res.stdout + res.stderr).splitlines():
            self.out('patch: %s' % line)
        if res.returncode != 0:
            raise LaunchError('fuse-cinder-patch apply failed (exit %d)'
                              % res.returncode)

    def _start_tgtd(self):
        self.tgtd = sandbox.Tgtd(
            control_port=self.args.tgt_control_port,
            portal_port=self.args.target_port,
            log_path=os.path.join(self.work_dir, 'tgtd.log'))
        try:
            self.tgtd.start()
        except sandbox.SandboxError as err:
            raise LaunchError(str(err))
        self.out('tgtd: control port %d, portal %s'
                 % (self.tgtd.control_port, self.tgtd.portal))

    def _prepare_volumes_home(self):
        if self.args.volumes_home:
            self.volumes_home = os.path.abspath(self.args.volumes_home)
            os.makedirs(self.volumes_home, exist_ok=True)
            point, fs_type = sandbox.mount_of(self.volumes_home)
            self.out('volumes: %s (on %s, %s)'
                     % (self.volumes_home, point, fs_type))
            return
        self.mount = sandbox.BindfsMount(
            os.path.join(self.work_dir, 'backing'),
            os.path.join(self.work_dir, 'mnt'),
            log_path=os.path.join(self.work_dir, 'bindfs.log'))
        try:
            self.mount.start()
        except sandbox.SandboxError as err:
            raise LaunchError(str(err))
        self.volumes_home = os.path.join(self.mount.mountpoint, 'volumes')
        os.makedirs(self.volumes_home, exist_ok=True)
        self.out('volumes: %s (bindfs over %s)'
                 % (self.volumes_home, self.mount.backing))

    def _start_services(self):
        port = self.args.api_port or sandbox.free_port(API_PORTS)
        if port is None or not sandbox.tcp_port_free(port):
            raise LaunchError('API port %s is busy; pass --api-port'
                              % (port or '18780-18789'))
        url = 'http://127.0.0.1:%d/v3' % port
        cmd = [sys.executable, '-m', 'fuse_cinder.allinone',
               '--state-dir', self.state_dir]
        popen_args = {}
        if self.args.unprivileged:
            cmd += ['--use-config', self._prepare_user(port)]
            popen_args = sandbox.as_user(self.user, self.state_dir,
                                         os.environ.get('PYTHONPATH'))
        else:
            cmd += ['--api-port', str(port),
                    '--volumes-home', self.volumes_home,
                    '--tgt-control-port', str(self.tgtd.control_port),
                    '--target-ip', self.tgtd.ip,
                    '--target-port', str(self.tgtd.portal_port)]
            if self.args.debug:
                cmd.append('--debug')
        with open(os.path.join(self.state_dir, 'console.log'), 'ab') as log:
            self.services = subprocess.Popen(
                cmd + self.cinder_args, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, **popen_args)
        self.out('cinder: API, scheduler and volume service starting '
                 '(log %s)' % self.log)
        self.api = Api(url)
        ready = sandbox.wait_for(
            lambda: self.services.poll() is not None or
            self.api.services_up(), READY_TIMEOUT, interval=0.5)
        if self.services.poll() is not None:
            raise LaunchError('the Cinder services exited with %s:\n%s'
                              % (self.services.returncode, self.log_tail()))
        if not ready:
            raise LaunchError('the Cinder services were not up after %d s:'
                              '\n%s' % (READY_TIMEOUT, self.log_tail()))
        uids = sandbox.proc_uids(self.services.pid)
        if self.user is not None:
            self.out('cinder: services run as %s, uid %s; root only '
                     'through sudo cinder-rootwrap %s'
                     % (self.user.pw_name, uids and uids[1],
                        os.path.join(self.etc_dir, 'rootwrap.conf')))

    def _prepare_user(self, api_port):
        """README install step 4 for a throw-away service user.

        The user's only root power is ``sudo cinder-rootwrap CONF`` with
        the package's own filters; privsep daemons (the tgt context and
        Cinder's) start through it. The configs live in a root-owned
        directory under /etc, where the privsep-helper filter wants
        ``--config-file``; the state directory becomes the user's.
        Returns the path of the services' cinder.conf.
        """
        stack = self.cleanup
        venv_bin = os.path.dirname(sys.executable)
        try:
            self.user = sandbox.make_user(stack, 'fuse-cinder-aio-')
        except subprocess.CalledProcessError as err:
            raise LaunchError('useradd failed: %s' % err.stderr.decode(
                errors='replace').strip())
        self.etc_dir = tempfile.mkdtemp(prefix='fuse-cinder-aio-',
                                        dir='/etc')
        stack.callback(shutil.rmtree, self.etc_dir, ignore_errors=True)
        os.chmod(self.etc_dir, 0o755)
        rootwrap_conf = sandbox.write_rootwrap_conf(
            os.path.join(self.etc_dir, 'rootwrap.conf'), venv_bin)
        scratch = os.path.join(self.etc_dir, 'sudo')
        os.mkdir(scratch, 0o700)
        pythonpath = os.environ.get('PYTHONPATH')
        try:
            sandbox.allow_root_helper(stack, self.user, ROOTWRAP,
                                      rootwrap_conf, scratch, pythonpath,
                                      sudo_log=self.sudo_log)
        except sandbox.SandboxError as err:
            raise LaunchError(str(err))
        why = sandbox.user_cannot_run(
            self.user, sys.executable,
            ['cinder.volume.driver', 'fuse_cinder.driver'], pythonpath)
        if why:
            raise LaunchError(why)

        if self.temp_work_dir:
            os.chmod(self.work_dir, 0o711)
        make_state_dirs(self.state_dir)
        for top, dirs, files in os.walk(self.state_dir):
            for name in [top] + [os.path.join(top, n) for n in dirs + files]:
                os.lchown(name, self.user.pw_uid, self.user.pw_gid)
        reach = subprocess.run(
            ['test', '-w', self.state_dir, '-a', '-x', self.state_dir],
            **sandbox.as_user(self.user, '/'))
        if reach.returncode != 0:
            raise LaunchError('user %s cannot write %s: a directory above '
                              'it is closed to others'
                              % (self.user.pw_name, self.state_dir))

        conf = build_config(
            self.state_dir, api_port=api_port,
            volumes_home=self.volumes_home,
            tgt_control_port=self.tgtd.control_port,
            target_ip=self.tgtd.ip, target_port=self.tgtd.portal_port,
            debug=self.args.debug)
        conf['DEFAULT']['rootwrap_config'] = rootwrap_conf
        path = os.path.join(self.etc_dir, 'cinder.conf')
        with open(sandbox.write_new(path, ''), 'w') as f:
            conf.write(f)
        self.out('cinder: unprivileged, as user %s (rootwrap filters %s, '
                 'configs in %s)' % (self.user.pw_name, sandbox.FILTERS_PATH,
                                     self.etc_dir))
        return path

    def _remove_user(self, left):
        """Undo _prepare_user, once the user's processes are gone."""
        if self.user is None:
            return
        try:
            with open(self.sudo_log, errors='replace') as f:
                commands = [line for line in f
                            if 'COMMAND=%s ' % ROOTWRAP in line]
        except OSError:
            commands = []
        self.out('root helper: %d commands through sudo cinder-rootwrap, '
                 '%d of them privsep daemons'
                 % (len(commands), sum('privsep-helper' in line
                                       for line in commands)))
        self.out('removing user %s, its sudoers rules and %s'
                 % (self.user.pw_name, self.etc_dir))
        self.cleanup.close()
        if sandbox.user_exists(self.user.pw_name):
            left.append('the user %s' % self.user.pw_name)
        if os.path.exists(sandbox.sudoers_path(self.user)):
            left.append(sandbox.sudoers_path(self.user))
        if os.path.exists(self.etc_dir):
            left.append(self.etc_dir)

    def print_environment(self):
        env_file = os.path.join(self.work_dir, 'cinderrc')
        line = cli_environment(self.api.url, client_extension_dir())
        with open(env_file, 'w') as f:
            f.write(line + '\n')
        client = 'cinder' if sys.version_info < (3, 12) else 'fuse-cinder'
        self.out('')
        self.out('Cinder is up at %s (noauth). Use the CLI with:'
                 % self.api.url)
        self.out('')
        self.out('    %s' % line)
        self.out('')
        self.out('(also in %s), then e.g.: %s create 1 --name v1; '
                 '%s export v1' % (env_file, client, client))
        self.out('Press Ctrl-C to stop everything.')

    def wait(self):
        """Block until a signal (raises Stop) or until the services die."""
        while self.services.poll() is None:
            time.sleep(0.5)
        raise LaunchError('the Cinder services exited with %s:\n%s'
                          % (self.services.returncode, self.log_tail()))

    def stop(self):
        """Stop everything started, in order; returns what is left."""
        left = []
        if self.services is not None:
            if self.services.poll() is None:
                self.out('stopping the Cinder services')
                self.services.send_signal(signal.SIGTERM)
                try:
                    self.services.wait(timeout=SERVICES_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.out('the Cinder services did not stop in %d s; '
                             'killing them' % SERVICES_STOP_TIMEOUT)
            # Also whatever they left running (timeout, privsep daemons).
            sandbox.kill_session(self.services.pid)
            self.services.wait(timeout=30)
        self._remove_user(left)
        if self.tgtd is not None:
            targets = len(self.tgtd.targets())
            self.out('stopping tgtd (%d targets)' % targets)
            self.tgtd.stop()
            if sandbox.tgtd_answers(self.tgtd.control_port):
                left.append('a tgtd on control port %d'
                            % self.tgtd.control_port)
        if self.mount is not None:
            self.out('unmounting %s' % self.mount.mountpoint)
            self.mount.stop()
            if sandbox.is_mounted(self.mount.mountpoint):
                left.append('the mount %s' % self.mount.mountpoint)
        for pid in sandbox.descendants(os.getpid()):
            left.append('process %d' % pid)
        if self.temp_work_dir and not left and not any(
                p.startswith(self.work_dir + '/')
                for p, _t in sandbox.mounts()):
            shutil.rmtree(self.work_dir, ignore_errors=True)
        return left


def parse_deploy_args(argv):
    parser = argparse.ArgumentParser(
        prog='fuse-cinder-allinone',
        description='Run a whole fuse_cinder deployment on this machine '
                    'as root: a private tgtd, a FUSE mount and Cinder API, '
                    'scheduler and one volume backend in one process '
                    '(fake transport, SQLite, noauth, loopback). Ctrl-C '
                    'stops everything. Unrecognised arguments, such as '
                    '--config-file, are handed to Cinder.',
        epilog='With --state-dir only the Cinder services run, in this '
               'process; see "fuse-cinder-allinone --state-dir DIR --help".')
    parser.add_argument('--work-dir',
                        help='Directory for the configuration, database, '
                             'logs and, without --volumes-home, the volume '
                             'files; kept, so a later run with it finds '
                             'its volumes again (default: a new directory '
                             'in /var/tmp, removed at the end).')
    parser.add_argument('--volumes-home',
                        help='Keep the volumes in this directory of an '
                             'existing FUSE mount (default: bindfs over '
                             'WORK_DIR/backing).')
    parser.add_argument('--api-port', type=int,
                        help='API port on 127.0.0.1 (default: the first '
                             'free one of 18780-18789).')
    parser.add_argument('--tgt-control-port', type=int,
                        help='Control port of the private tgtd (default: '
                             'the first free one of 41-49).')
    parser.add_argument('--target-port', type=int,
                        help='iSCSI portal port on 127.0.0.1 (default: the '
                             'first free one of 13281-13289).')
    parser.add_argument('--self-check', action='store_true',
                        help='Create, export, write and read over iSCSI, '
                             'unexport and delete a volume, then stop.')
    parser.add_argument('--unprivileged', action='store_true',
                        help='Run the Cinder services as a throw-away '
                             'system user whose only root power is sudo '
                             'cinder-rootwrap with the package\'s filters '
                             '(README install step 4); the user, its '
                             'sudoers file and /etc/fuse-cinder-aio-* are '
                             'removed at the end.')
    parser.add_argument('--debug', action='store_true')
    return parser.parse_known_args(argv)


def _raise_stop(signo, frame):
    raise Stop(signo)


def _still_stopping(signo, frame):
    sys.stdout.write('fuse-cinder-allinone: still stopping, please wait\n')
    sys.stdout.flush()


def deploy(argv, out=None):
    """The whole deployment; returns the exit code."""
    def say(line):
        sys.stdout.write('%s\n' % line)
        sys.stdout.flush()

    out = out or say
    args, cinder_args = parse_deploy_args(argv)
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signo: signal.signal(signo, _raise_stop) for signo in signals}
    code = 1
    dep = None
    try:
        dep = Deployment(args, cinder_args, out)
        out('work dir: %s' % dep.work_dir)
        dep.start()
        dep.print_environment()
        if args.self_check:
            self_check(dep.api, dep.volumes_home, out)
            out('self-check passed')
            code = 0
        else:
            dep.wait()
    except Stop as stop:
        out('caught signal %d' % stop.args[0])
        code = 0
    except LaunchError as err:
        out('ERROR: %s' % err)
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        for signo in signals:
            signal.signal(signo, _still_stopping)
        try:
            if dep is not None:
                left = dep.stop()
                if left:
                    out('ERROR: left behind: %s' % ', '.join(left))
                    code = 1
                else:
                    out('stopped: no targets, mounts or processes left')
        finally:
            for signo, handler in previous.items():
                signal.signal(signo, handler)
    return code


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == '--state-dir' or a.startswith('--state-dir=')
           for a in argv):
        return run_services(argv)
    return deploy(argv)


if __name__ == '__main__':
    sys.exit(main())
