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
"""The all-in-one's cinder.conf, and the settings it refuses."""

from collections.abc import Iterable
import configparser
import os
import sys
from typing import Any


DEFAULT_DRIVER = 'fuse_cinder.driver.FuseISCSIDriver'
BACKEND = 'fuse'

# Where Cinder's wheel and distribution packages put api-paste.ini.
_PASTE_DIRS = (
    os.path.join(sys.prefix, 'etc', 'cinder'),
    '/etc/cinder',
    '/usr/local/etc/cinder',
    '/usr/share/cinder',
)


def _find_etc_file(name: str, near: str | None = None) -> str | None:
    """Find one of the files Cinder installs in its etc directory."""
    bases = ([os.path.dirname(near)] if near else []) + list(_PASTE_DIRS)
    for base in bases:
        path = os.path.join(base, name)
        if os.path.isfile(path):
            return path
    return None


def find_api_paste() -> str | None:
    """Return the api-paste.ini shipped with the installed Cinder."""
    return _find_etc_file('api-paste.ini')


#: The only auth_strategy served here: the readiness probe, --self-check
#: and the CLI environment the launcher prints speak noauth, and there is
#: no Keystone to ask for tokens.
AUTH_STRATEGY = 'noauth'


def _config_file_args(args: Iterable[str]) -> list[str]:
    """The --config-file and --config-dir arguments of ``args``, in order.

    Both spellings, ``--config-file F`` and ``--config-file=F``; the other
    arguments are Cinder's and do not matter for the check.
    """
    picked = []
    words = iter(args)
    for arg in words:
        name, eq, value = arg.partition('=')
        if name in ('--config-file', '--config-dir'):
            given = value if eq else next(words, None)
            if given is not None:
                picked += [name, given]
    return picked


def auth_refusal(conf: Any) -> str | None:
    """Why Cinder cannot serve here with the parsed ``conf``, or None.

    With keystone the services would start and never be reported ready:
    the readiness probe's noauth token is refused. ``conf`` is an
    oslo.config ConfigOpts (untyped).
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


def config_refusal(config_args: Iterable[str]) -> str | None:
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


def build_config(state_dir: str, api_port: int = 8776,
                 volume_driver: str = DEFAULT_DRIVER,
                 volumes_home: str | None = None,
                 tgt_control_port: int | None = None,
                 target_ip: str = '127.0.0.1', target_port: int = 3260,
                 backend_options: dict[str, str] | None = None,
                 api_paste: str | None = None,
                 debug: bool = False) -> configparser.ConfigParser:
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


def make_state_dirs(state_dir: str) -> None:
    """The state directory and the subdirectories cinder.conf names."""
    for sub in ('', 'locks', 'coordination', 'targets'):
        os.makedirs(os.path.join(state_dir, sub), exist_ok=True)


def write_config(conf: configparser.ConfigParser, state_dir: str) -> str:
    """Write cinder.conf into the state directory and return its path."""
    make_state_dirs(state_dir)
    path = os.path.join(state_dir, 'cinder.conf')
    with open(path, 'w') as f:
        conf.write(f)
    return path
