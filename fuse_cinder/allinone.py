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
SQLite database, ``noauth`` and one backend.  It is not a production
deployment: run the three services separately, with a real broker and
database, for that.

Usage::

    fuse-cinder-allinone --state-dir /var/lib/fuse-cinder-aio \\
        --api-port 8776 --volumes-home /mnt/fuse/volumes \\
        [--config-file extra.conf ...] [--write-config-only]

A ``cinder.conf`` is generated in the state directory from the options;
``--config-file`` files given after it override any of its values.  The
database schema is created or upgraded at every start.  SIGTERM or SIGINT
stops all three services.
"""

import argparse
import configparser
import os
import signal
import sys

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
        # The fake transport delivers in-process: no need to wait long.
        'rpc_response_timeout': '120',
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


def write_config(conf, state_dir):
    """Write cinder.conf into the state directory and return its path."""
    for sub in ('', 'locks', 'coordination', 'targets'):
        os.makedirs(os.path.join(state_dir, sub), exist_ok=True)
    path = os.path.join(state_dir, 'cinder.conf')
    with open(path, 'w') as f:
        conf.write(f)
    return path


def _privsep_root_helper():
    """Root helper for oslo.privsep daemons.

    As root no sudo/rootwrap is needed (and often not installed); the
    helper must only find privsep-helper, which lives next to the Python
    of the virtualenv rather than on PATH.
    """
    from cinder import utils
    import shlex

    if os.geteuid() != 0:
        return shlex.split(utils.get_root_helper())
    path = os.pathsep.join([os.path.dirname(sys.executable),
                            os.environ.get('PATH', os.defpath)])
    return ['env', 'PATH=%s' % path]


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
    config.set_middleware_defaults()
    logging.setup(conf, 'cinder')
    python_logging.captureWarnings(True)
    log = logging.getLogger(__name__)
    priv_context.init(root_helper=_privsep_root_helper())

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
    args, rest = parser.parse_known_args(argv)
    extra = {}
    for item in args.backend_option:
        key, sep, value = item.partition('=')
        if not sep or not key:
            parser.error('--backend-option needs KEY=VALUE, got %r' % item)
        extra[key.strip()] = value.strip()
    args.backend_options = extra
    return args, rest


def main(argv=None):
    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
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


if __name__ == '__main__':
    sys.exit(main())
